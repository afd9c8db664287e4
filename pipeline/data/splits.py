"""Train/val/test splits (deterministic and stratified, or fixed by the user's test set), the
`dataset.npz` the data stage writes, and stratified samples of it."""

import hashlib
import json

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sources import SPLITS, content_hash, load_source
from pipeline.engine.errors import InputError
from pipeline.engine.text import first_few


def stratified_split(labels, seed, val_fraction, test_fraction, max_samples=0, groups=None):
    """Per-class shuffled split; every class lands in every non-empty split. With `groups` (one id per
    sample) whole groups are split, stratified by their label, so no clip is on both sides."""
    if groups is not None:
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        kept = int(np.ceil(len(first) * max_samples / len(labels))) if max_samples else 0
        parts = stratified_split(labels[first], seed, val_fraction, test_fraction, kept)
        return tuple(np.flatnonzero(np.isin(inverse, part)).astype(np.int64) for part in parts)
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


def load_test_source(cfg, form="auto", task="classification"):
    """The fixed test set of `data.test_source`, whole and in its order (an .npz with a split array:
    its 'test' rows): images (or features), labels, ids ('test:<id>'), class names, groups (or None)."""
    t_images, t_labels, t_ids, t_names, t_split, t_groups = load_source(cfg.test_source, cfg, "data.test_source",
                                                                        form, task)
    if t_split is not None:
        keep = np.flatnonzero(t_split == "test")
        t_images, t_labels, t_ids = t_images[keep], t_labels[keep], [t_ids[i] for i in keep]
        t_groups = None if t_groups is None else t_groups[keep]
    if len(t_labels) == 0:
        raise InputError(f"data.test_source {cfg.test_source} holds no test samples. Point it at your test set.")
    return t_images, t_labels, [f"test:{i}" for i in t_ids], t_names, t_groups


def load_splits(cfg, seed, form="auto", task="classification"):
    """Images (or features), labels, ids, class names and (train, val, test) indices, plus what the test
    set is, and the samples' groups (None when the data has none).

    With `data.test_source` the test set is that source, whole and in its order, and `data.source`
    feeds train/val (and calibration) only; an .npz `split` array fixes the split; otherwise a
    stratified split by `seed` (of whole groups, when the data has them)."""
    images, labels, ids, class_names, split, groups = load_source(cfg.source, cfg, form=form, task=task)
    fixed = split is not None and bool((split == "test").any())
    if cfg.test_source:
        if fixed:
            raise InputError(
                f"the test set comes from data.test_source or from the 'test' rows of data.source's split array, "
                f"not both; {cfg.source} marks {int((split == 'test').sum())} rows 'test'. Drop data.test_source "
                "or those rows."
            )
        t_images, t_labels, t_ids, t_names, t_groups = load_test_source(cfg, form, task)
        if (t_groups is None) != (groups is None):
            have, lack = ("data.test_source", "data.source") if groups is None else ("data.source", "data.test_source")
            raise InputError(f"groups (clips) must be given for both data sets or neither; {have} has a 'group' array "
                             f"and {lack} has none. Add one to {lack}, or drop both.")
        if t_names != class_names:
            raise InputError(
                f"data.test_source must have the classes of data.source, in the same order; test set has "
                f"{first_few(t_names, 12)}, data.source has {first_few(class_names, 12)}. Use the same class folder names (or "
                "class_names arrays)."
            )
        if split is not None:
            train_idx, val_idx, _ = _split_from_array(split)
        else:
            train_idx, val_idx, _ = stratified_split(labels, seed, cfg.val_fraction, 0.0, cfg.max_samples, groups)
        n = len(labels)
        test_idx = np.arange(n, n + len(t_labels), dtype=np.int64)
        if images.shape[1:] != t_images.shape[1:] or images.dtype != t_images.dtype:
            raise InputError(f"data.test_source must hold samples like data.source's; its x is {t_images.dtype} "
                             f"{list(t_images.shape[1:])} per sample, data.source's {images.dtype} "
                             f"{list(images.shape[1:])}. Make the two alike.")
        if groups is not None:  # one name space: a clip named in both sources is the same clip (refused below)
            groups = np.concatenate([groups, t_groups])
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
    elif task == "anomaly":  # an autoencoder trains on normal windows only: every anomalous one is tested
        normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
        parts = stratified_split(labels[normal], seed, cfg.val_fraction, cfg.test_fraction, cfg.max_samples,
                                 None if groups is None else groups[normal])
        train_idx, val_idx = normal[parts[0]], normal[parts[1]]
        test_idx = np.sort(np.concatenate([normal[parts[2]], anomalous])).astype(np.int64)
        origin = (f"{cfg.source} (normal {'clips' if groups is not None else 'windows'} split by seed {seed}; every "
                  "anomalous one in the test set)")
    else:
        train_idx, val_idx, test_idx = stratified_split(
            labels, seed, cfg.val_fraction, cfg.test_fraction, cfg.max_samples, groups
        )
        origin = f"{cfg.source} (a stratified split{' of whole groups' if groups is not None else ''}, seed {seed})"
    return (images, labels, ids, class_names, (train_idx, val_idx, test_idx), {"source": origin, "fixed": fixed},
            groups)


def test_set_record(images, labels, ids, class_names, splits, test_info, allow_overlap, groups=None):
    """What the test set is (fingerprint, size, per-class counts) and whether any of its images also
    occurs in train/val/calibration, or (with groups) any of its groups also has samples there
    (refused for a fixed test set unless `allow_overlap`)."""
    train_idx, val_idx, test_idx = splits
    hashes = [content_hash(images[i]) for i in range(len(images))]
    fit = np.concatenate([train_idx, val_idx])
    fit_hashes = {hashes[i] for i in fit}
    overlap = [ids[i] for i in test_idx if hashes[i] in fit_hashes]
    refuse = test_info["fixed"] and not allow_overlap
    if overlap and refuse:
        raise InputError(
            f"a held-out test set must not contain images that are also trained, validated or calibrated on; "
            f"{len(overlap)} of {len(test_idx)} test images from {test_info['source']} occur in data.source's "
            f"train/val split ({first_few(overlap)}). Remove them from one side, or set data.allow_overlap = true "
            "to accept it (recorded in the manifest)."
        )
    test_groups = set() if groups is None else {groups[i] for i in test_idx}
    shared = sorted(test_groups & {groups[i] for i in fit}) if groups is not None else []
    if shared and refuse:
        raise InputError(
            f"a held-out test set must not share a clip (group) with train/val: {len(shared)} of its {len(test_groups)} "
            f"groups from {test_info['source']} also have windows in data.source's train/val split "
            f"({first_few(shared)}). Move each clip to one side, or set data.allow_overlap = true to accept it "
            "(recorded in the manifest)."
        )
    fp = hashlib.sha256(json.dumps(class_names).encode())
    for i in test_idx:
        fp.update(bytes.fromhex(hashes[i]))
        fp.update(int(labels[i]).to_bytes(8, "little"))
        if groups is not None:
            fp.update(str(groups[i]).encode() + b"\0")
    counts = np.bincount(labels[test_idx], minlength=len(class_names))
    record_groups = {} if groups is None else {"groups": len(test_groups)}
    return {
        **test_info,
        **record_groups,
        "fingerprint": fp.hexdigest(),
        "size": int(len(test_idx)),
        "per_class": {name: int(c) for name, c in zip(class_names, counts)},
        "overlap": {"count": len(overlap), "ids": overlap[:20], "allowed": bool(allow_overlap),
                    **({} if groups is None else {"groups": len(shared), "group_ids": shared[:20]})},
    }


def test_split_record(ids, labels):
    """The manifest's `test_split`: the test ids in order, their sha256 (what a baseline must share) and
    the labels."""
    id_list = [str(s) for s in ids]
    return {"ids": id_list, "sha256": hashlib.sha256("\n".join(id_list).encode()).hexdigest(),
            "labels": [int(v) for v in labels]}


def load_dataset(path):
    """Read a `dataset.npz` written by this stage into a dict of arrays."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def split_arrays(dataset, name, preprocess_cfg):
    """(model input float32, labels) of one split, through the preprocessing contract."""
    idx = dataset[name]
    return preprocess.to_float(dataset["x"][idx], preprocess_cfg), dataset["y"][idx]
