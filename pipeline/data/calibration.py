"""The versioned calibration set: a stratified sample of the train split, pinned by sample id and
content hash, verified on every later build so the int8 ranges never silently change."""

import os

import numpy as np

from pipeline.data.sampling import stratified_subset
from pipeline.data.sources import content_hash, source_kind
from pipeline.engine.errors import InputError
from pipeline.engine.text import first_few

CALIBRATION_SCHEMA = 1
CALIBRATION_FIX = ("If the data changed on purpose, point data.calibration_file at a new path (for example "
                   "calibration/<name>-v2.json) to create a new version; otherwise restore the data.")


def _require_samples(have, cfg, received, fix):
    if have < cfg.calibration_samples:
        raise InputError(f"calibration needs at least {cfg.calibration_samples} samples (data.calibration_samples); "
                         f"{received}. Lower data.calibration_samples, {fix}.")


def new_calibration(images, labels, ids, train_idx, class_names, cfg, seed):
    """A new calibration set: a stratified sample of the train split, by id and content hash."""
    _require_samples(len(train_idx), cfg, f"the train split has only {len(train_idx)}", "or add data")
    source = cfg.source if source_kind(cfg.source) == "digits" else os.path.basename(os.path.normpath(cfg.source))
    return {
        "schema_version": CALIBRATION_SCHEMA, "source": source, "image_size": cfg.image_size,
        "channels": cfg.channels, "seed": seed, "class_names": class_names,
        "samples": pick_calibration(images, labels, ids, train_idx, cfg.calibration_samples, seed),
    }


def pick_calibration(images, labels, ids, train_idx, n, seed):
    """Stratified calibration sample from the train split: equal share per class."""
    chosen = train_idx[stratified_subset(labels[train_idx], n, seed + 1)]
    return [{"id": ids[i], "label": int(labels[i]), "sha256": content_hash(images[i])} for i in chosen]


def check_calibration(calib, ids, images, labels, train_idx, cfg, origin):
    """A pinned calibration set must still match the data, size and classes it was made from."""
    if calib.get("schema_version") != CALIBRATION_SCHEMA:
        raise InputError(
            f"calibration file schema_version must be {CALIBRATION_SCHEMA}; received "
            f"{calib.get('schema_version')!r} in {origin}. Point data.calibration_file at a new path to create "
            "a new version."
        )
    samples = calib.get("samples", [])
    _require_samples(len(samples), cfg, f"received {len(samples)} from {origin}",
                     "or point data.calibration_file at a new path to create a larger set")
    position = {sid: i for i, sid in enumerate(ids)}
    train_set = set(int(i) for i in train_idx)
    for s in samples:
        i = position.get(s["id"])
        if i is None or i not in train_set:
            raise InputError(
                f"calibration sample {s['id']} from {origin} is not in this build's train split, so the data "
                f"or the split changed. {CALIBRATION_FIX}"
            )
        if content_hash(images[i]) != s["sha256"]:
            raise InputError(
                f"calibration sample {s['id']} from {origin} has different content than when the "
                f"set was made. {CALIBRATION_FIX}"
            )
    missing = sorted(set(np.unique(labels[train_idx]).tolist()) - {s["label"] for s in samples})
    if missing:
        raise InputError(
            f"the calibration set must cover every class of the train split; {origin} has no samples of class(es) "
            f"{first_few(missing)}. Point data.calibration_file at a new path to create a new, stratified set."
        )


def calibration_indices(dataset, calib):
    position = {sid: i for i, sid in enumerate(dataset["ids"].tolist())}
    return np.asarray([position[s["id"]] for s in calib["samples"]], np.int64)
