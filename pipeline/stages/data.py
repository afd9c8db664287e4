"""data stage: load real images and split them deterministically (or by the user's fixed test set).

Outputs `dataset.npz` (uint8 images in [0, 255], labels, sample ids, split indices, class names).
"""

import numpy as np

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
            "data.mixed_sizes", "data.resize", "data.val_fraction", "data.test_fraction", "data.max_samples"),
)


def publish(records, config, build_dir):
    """The manifest's data fields: the classes, the input shape, the split sizes, the test set and dataset.npz."""
    from pipeline.release.manifest import dataset_fields

    return dataset_fields(records["data"], build_dir)


def run(cfg, inputs, out_dir, ctx):
    """Load and split."""
    seed, data_cfg = cfg.build.seed, cfg.data
    images, labels, ids, class_names, splits, test_info = load_splits(data_cfg, seed)
    train_idx, val_idx, test_idx = splits
    num_classes = len(class_names)
    for split_name, idx in (("test", test_idx), ("train", train_idx)):
        absent = sorted(set(range(num_classes)) - set(labels[idx].tolist()))
        if absent:
            raise InputError(
                f"the {split_name} split must contain every class; class(es) "
                f"{first_few([class_names[a] for a in absent])} have no samples in it. Add data for them."
            )
    test_set = test_set_record(images, labels, ids, class_names, splits, test_info, data_cfg.allow_overlap)

    atomic_save_npz(out_dir / "dataset.npz", x=images, y=labels, ids=np.asarray(ids), train=train_idx, val=val_idx,
                    test=test_idx, class_names=np.asarray(class_names))
    counts = {name: int(len(idx)) for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    return {
        "class_names": class_names,
        "input_shape": list(images.shape[1:]),
        "splits": counts,
        "test_set": test_set,
    }
