"""testset stage (validation of a model file): load data.test_source whole, in its order, as the
test set (nothing is split, trained or calibrated on). Writes `dataset.npz` in the data stage's
layout with empty train/val splits, and the test set's fingerprint, so a build made with the same
data.test_source and a validation of another model file on it can gate against each other."""

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sources import source_fingerprint
from pipeline.data.splits import load_test_source, test_set_record
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage


def external(config):
    if not config.data.test_source:
        raise InputError("validating a model file needs its test set; pass --data SOURCE (an image folder with "
                         "one sub-folder per class, or an .npz with x and y), or set data.test_source.")
    return {"test_source": source_fingerprint(config.data.test_source, "the test set (--data, data.test_source)")}


STAGE = Stage(
    "testset", __name__, outputs=("dataset.npz",), toolchain=("numpy", "pillow", "scikit-learn", "tensorflow", "tensorflow-cpu"), external=external,
    config=("data.test_source", "data.image_size", "data.channels", "data.mixed_sizes", "data.resize", "preprocess",
            "task.kind"),
)


def publish(records, config, build_dir):
    """The same manifest fields as a build's data stage."""
    from pipeline.release.manifest import dataset_fields

    return dataset_fields(records["testset"], build_dir)


def run(cfg, inputs, out_dir, ctx):
    images, labels, ids, class_names, groups = load_test_source(cfg.data, cfg.preprocess.form, cfg.task.kind)
    if cfg.task.kind == "anomaly" and len(np.unique(labels)) < 2:
        raise InputError(f"an anomaly test set needs normal (0) and anomalous (1) windows, or its ROC AUC is "
                         f"undefined; {cfg.data.test_source} has only {class_names[int(labels[0])]!r} windows. Add the "
                         "other kind.")
    preprocess.check_form(cfg.preprocess, preprocess.is_tensor(images, cfg.preprocess), cfg.data.test_source)
    test = np.arange(len(labels), dtype=np.int64)
    empty = np.zeros((0,), np.int64)
    info = {"source": cfg.data.test_source, "fixed": True}
    test_set = test_set_record(images, labels, ids, class_names, (empty, empty, test), info, False, groups)
    extra = {} if groups is None else {"groups": groups}
    atomic_save_npz(out_dir / "dataset.npz", x=images, y=labels, ids=np.asarray(ids), train=empty, val=empty,
                    test=test, class_names=np.asarray(class_names), **extra)
    return {
        "class_names": class_names,
        "input_shape": list(images.shape[1:]),
        "splits": {"train": 0, "val": 0, "test": int(len(test))},
        "test_set": test_set,
    }
