"""data stage: load real images (or features) and split them deterministically (or by the user's fixed
test set), keeping each group (clip) whole.

Outputs `dataset.npz` (uint8 images in [0, 255] or the features as given, labels, sample ids, split
indices, class names, and the groups when the data has them).
"""

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sources import source_fingerprint
from pipeline.data.splits import load_splits, test_set_record
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.engine.text import first_few


def external(config):
    return {
        "source": source_fingerprint(config.data.source),
        "test_source": source_fingerprint(config.data.test_source, "data.test_source") if config.data.test_source else None,
    }


STAGE = Stage(
    "data", __name__, outputs=("dataset.npz",), toolchain=("numpy", "pillow", "scikit-learn", "tensorflow", "tensorflow-cpu"), external=external,
    config=("build.seed", "data.source", "data.test_source", "data.allow_overlap", "data.image_size", "data.channels",
            "data.mixed_sizes", "data.resize", "data.val_fraction", "data.test_fraction", "data.max_samples",
            "preprocess", "task.kind"),
)


def publish(records, config, build_dir):
    """The manifest's data fields: the classes, the input shape, the split sizes, the test set and dataset.npz."""
    from pipeline.release.manifest import dataset_fields

    return dataset_fields(records["data"], build_dir)


def run(cfg, inputs, out_dir, ctx):
    """Load and split."""
    seed, data_cfg, task = cfg.build.seed, cfg.data, cfg.task.kind
    images, labels, ids, class_names, splits, test_info, groups = load_splits(data_cfg, seed, cfg.preprocess.form, task)
    train_idx, val_idx, test_idx = splits
    tensor = preprocess.is_tensor(images, cfg.preprocess)
    if tensor and not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"a build trains a float model, so it needs float features; x is {images.dtype}. Save x as "
                         "float32 (integer features in a model's input dtype are for validating that model: "
                         "edgebuild validate MODEL --data X.npz).")
    preprocess.check_form(cfg.preprocess, tensor, data_cfg.source)
    if tensor and cfg.preprocess.form == "auto":
        print(f"{data_cfg.source}: x read as features ({images.dtype}, {list(images.shape[1:])} per sample: "
              "preprocess.form = 'auto'; set preprocess.form = 'pixels' to read it as images)")
    num_classes = len(class_names)
    needs = (("test", test_idx, range(num_classes)), ("train", train_idx, range(1 if task == "anomaly" else num_classes)))
    for split_name, idx, wanted in needs:
        absent = sorted(set(wanted) - set(labels[idx].tolist()))
        if absent and task == "anomaly":
            raise InputError(
                f"an anomaly build needs normal (0) windows to train on and both normal and anomalous (1) windows "
                f"in the test split (or its ROC AUC is undefined); the {split_name} split has no "
                f"{first_few([class_names[a] for a in absent])} windows. Add them."
            )
        if absent:
            raise InputError(
                f"the {split_name} split must contain every class; class(es) "
                f"{first_few([class_names[a] for a in absent])} have no samples in it. Add data for them."
            )
    test_set = test_set_record(images, labels, ids, class_names, splits, test_info, data_cfg.allow_overlap, groups)

    extra = {} if groups is None else {"groups": groups}
    atomic_save_npz(out_dir / "dataset.npz", x=images, y=labels, ids=np.asarray(ids), train=train_idx, val=val_idx,
                    test=test_idx, class_names=np.asarray(class_names), **extra)
    counts = {name: int(len(idx)) for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    return {
        "class_names": class_names,
        "input_shape": list(images.shape[1:]),
        "splits": counts,
        "test_set": test_set,
    }
