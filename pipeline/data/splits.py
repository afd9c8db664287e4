"""Train/val/test splits (deterministic and stratified, or fixed by the user's test set), the
`dataset.npz` the data stage writes, and stratified samples of it."""

import hashlib
import json

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sources import SPLITS, content_hash, load_source
from pipeline.engine.errors import InputError
from pipeline.engine.text import first_few


def stratified_split(labels, seed, val_fraction, test_fraction, max_samples=0):
    """Per-class shuffled split; every class lands in every non-empty split."""
    rng = np.random.RandomState(seed)
    train, val, test = [], [], []
    classes = np.unique(labels)
    keep_fraction = 1.0 if not max_samples else min(1.0, max_samples / len(labels))
    for c in classes:
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        idx = idx[: max(3, int(round(len(idx) * keep_fraction)))]
        n_test = max(1, int(round(len(idx) * test_fraction))) if test_fraction > 0 else 0
        n_val = int(round(len(idx) * val_fraction))
        if val_fraction > 0:
            n_val = max(1, n_val)
        test += list(idx[:n_test])
        val += list(idx[n_test : n_test + n_val])
        train += list(idx[n_test + n_val :])
    return tuple(np.sort(np.asarray(s, np.int64)) for s in (train, val, test))


def _split_from_array(split):
    return tuple(np.flatnonzero(split == name).astype(np.int64) for name in SPLITS)


def load_test_source(cfg):
    """The fixed test set of `data.test_source`, whole and in its order (an .npz with a split array:
    its 'test' rows): images, labels, ids ('test:<id>'), class names."""
    t_images, t_labels, t_ids, t_names, t_split = load_source(cfg.test_source, cfg, "data.test_source")
    if t_split is not None:
        keep = np.flatnonzero(t_split == "test")
        t_images, t_labels, t_ids = t_images[keep], t_labels[keep], [t_ids[i] for i in keep]
    if len(t_labels) == 0:
        raise InputError(f"data.test_source {cfg.test_source} holds no test samples. Point it at your test set.")
    return t_images, t_labels, [f"test:{i}" for i in t_ids], t_names


def load_splits(cfg, seed):
    """Images, labels, ids, class names and (train, val, test) indices, plus what the test set is.

    With `data.test_source` the test set is that source, whole and in its order, and `data.source`
    feeds train/val (and calibration) only; an .npz `split` array fixes the split; otherwise a
    stratified split by `seed`."""
    images, labels, ids, class_names, split = load_source(cfg.source, cfg)
    fixed = split is not None and bool((split == "test").any())
    if cfg.test_source:
        if fixed:
            raise InputError(
                f"the test set comes from data.test_source or from the 'test' rows of data.source's split array, "
                f"not both; {cfg.source} marks {int((split == 'test').sum())} rows 'test'. Drop data.test_source "
                "or those rows."
            )
        t_images, t_labels, t_ids, t_names = load_test_source(cfg)
        if t_names != class_names:
            raise InputError(
                f"data.test_source must have the classes of data.source, in the same order; test set has "
                f"{first_few(t_names, 12)}, data.source has {first_few(class_names, 12)}. Use the same class folder names (or "
                "class_names arrays)."
            )
        if split is not None:
            train_idx, val_idx, _ = _split_from_array(split)
        else:
            train_idx, val_idx, _ = stratified_split(labels, seed, cfg.val_fraction, 0.0, cfg.max_samples)
        n = len(labels)
        test_idx = np.arange(n, n + len(t_labels), dtype=np.int64)
        images = np.concatenate([images, t_images])
        labels = np.concatenate([labels, t_labels])
        ids = list(ids) + list(t_ids)
        origin = cfg.test_source
        fixed = True
    elif split is not None:
        if not fixed:
            raise InputError(
                f"the 'split' array of {cfg.source} marks no sample 'test', so there is no test set; mark your "
                "held-out samples 'test', or set data.test_source to your test set."
            )
        train_idx, val_idx, test_idx = _split_from_array(split)
        origin = f"{cfg.source} (its split array)"
        fixed = True
    else:
        train_idx, val_idx, test_idx = stratified_split(
            labels, seed, cfg.val_fraction, cfg.test_fraction, cfg.max_samples
        )
        origin = f"{cfg.source} (a stratified split, seed {seed})"
    return images, labels, ids, class_names, (train_idx, val_idx, test_idx), {"source": origin, "fixed": fixed}


def test_set_record(images, labels, ids, class_names, splits, test_info, allow_overlap):
    """What the test set is (fingerprint, size, per-class counts) and whether any of its images also
    occurs in train/val/calibration (refused for a fixed test set unless `allow_overlap`)."""
    train_idx, val_idx, test_idx = splits
    hashes = [content_hash(images[i]) for i in range(len(images))]
    fit_hashes = {hashes[i] for i in np.concatenate([train_idx, val_idx])}
    overlap = [ids[i] for i in test_idx if hashes[i] in fit_hashes]
    if overlap and test_info["fixed"] and not allow_overlap:
        raise InputError(
            f"a held-out test set must not contain images that are also trained, validated or calibrated on; "
            f"{len(overlap)} of {len(test_idx)} test images from {test_info['source']} occur in data.source's "
            f"train/val split ({first_few(overlap)}). Remove them from one side, or set data.allow_overlap = true "
            "to accept it (recorded in the manifest)."
        )
    fp = hashlib.sha256(json.dumps(class_names).encode())
    for i in test_idx:
        fp.update(bytes.fromhex(hashes[i]))
        fp.update(int(labels[i]).to_bytes(8, "little"))
    counts = np.bincount(labels[test_idx], minlength=len(class_names))
    return {
        **test_info,
        "fingerprint": fp.hexdigest(),
        "size": int(len(test_idx)),
        "per_class": {name: int(c) for name, c in zip(class_names, counts)},
        "overlap": {"count": len(overlap), "ids": overlap[:20], "allowed": bool(allow_overlap)},
    }


def load_dataset(path):
    """Read a `dataset.npz` written by this stage into a dict of arrays."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def split_arrays(dataset, name, preprocess_cfg):
    """(model input float32, labels) of one split, through the preprocessing contract."""
    idx = dataset[name]
    return preprocess.to_float(dataset["x"][idx], preprocess_cfg), dataset["y"][idx]
