"""data stage: load real images, split them deterministically, pin the calibration set.

Outputs `dataset.npz` (uint8 images in [0, 255], labels, sample ids, split indices, class names)
and `calibration.json` (sample ids + content hashes, stratified by class). The calibration file
under `calibration/` is the versioned copy: created on first use, verified on every later build.
"""

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fsutil import atomic_write_bytes, atomic_write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MODEL_SUFFIXES = {".tflite", ".onnx", ".keras", ".h5", ".pb", ".pt", ".pth"}
SPLITS = ("train", "val", "test")
CALIBRATION_SCHEMA = 1
CALIBRATION_FIX = ("If the data changed on purpose, point data.calibration_file at a new path (for example "
                   "calibration/<name>-v2.json) to create a new version; otherwise restore the data.")


def source_kind(source, key="data.source"):
    """'digits', 'npz' or 'folder'; anything else is refused with the fix (exit 3)."""
    if source == "digits":
        return "digits"
    if not source:
        raise InputError(f"{key} must be 'digits', an image folder or an .npz file; received an empty string. "
                         "Set it to your data.")
    path = Path(source)
    if path.suffix == ".npz":
        return "npz"
    if path.is_file():
        hint = " A model file goes to train.recipe, not the data." if path.suffix in MODEL_SUFFIXES else ""
        raise InputError(
            f"{key} must be 'digits', an image folder (one sub-folder per class) or an .npz file; {source} is a "
            f"'{path.suffix or 'extension-less'}' file, which is none of them.{hint} Point {key} at your images."
        )
    return "folder"


def source_fingerprint(source, key="data.source"):
    """A content hash of the data source, so the stage cache notices changed data."""
    kind = source_kind(source, key)
    h = hashlib.sha256(kind.encode())
    if kind == "digits":
        import sklearn

        h.update(f"sklearn-digits-{sklearn.__version__}".encode())
        return h.hexdigest()
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"{key} must be 'digits', an image folder or an .npz file; {source} does not exist."
        )
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _resize(img, size, channels):
    from PIL import Image

    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def _load_digits(source, cfg):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for img in digits.images:  # 8x8, values 0..16
        pil = Image.fromarray(np.round(img * 255.0 / 16.0).astype(np.uint8), mode="L")
        images.append(_resize(pil, cfg.image_size, cfg.channels))
    ids = [f"digits/{i}" for i in range(len(images))]
    names = [str(i) for i in range(10)]
    return np.stack(images), digits.target.astype(np.int64), ids, names, None


def _load_folder(source, cfg):
    from PIL import Image, UnidentifiedImageError

    root = Path(source)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise InputError(
            f"an image folder needs one sub-folder per class, at least 2; received {len(classes)} "
            f"in {root}. Put each class's images in {root}/<class name>/."
        )
    images, labels, ids, bad, other_size = [], [], [], [], []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise InputError(
                f"every class needs at least one image; class folder {root / name} is empty. "
                "Add images or remove the folder."
            )
        for p in files:
            rel = p.relative_to(root).as_posix()
            try:
                with Image.open(p) as img:
                    img.load()
                    mode_ok = img.mode in ("L", "RGB", "RGBA", "P", "LA", "I;16", "CMYK", "YCbCr")
                    if img.size != (cfg.image_size, cfg.image_size) or not mode_ok:
                        other_size.append(f"{rel} ({img.size[0]}x{img.size[1]} {img.mode})")
                    arr = _resize(img, cfg.image_size, cfg.channels)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                bad.append(rel)
                continue
            images.append(arr)
            labels.append(label)
            ids.append(rel)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise InputError(
            f"every file in an image folder must be a readable image; {len(bad)} are not: {shown}. "
            "Remove or replace them."
        )
    if other_size and cfg.mixed_sizes == "refuse":
        shown = ", ".join(other_size[:3]) + (f" and {len(other_size) - 3} more" if len(other_size) > 3 else "")
        raise InputError(
            f"data.mixed_sizes = 'refuse' needs every image to be {cfg.image_size}x{cfg.image_size}; "
            f"received {shown}. Set data.mixed_sizes = 'resize' or fix the images."
        )
    return np.stack(images), np.asarray(labels, np.int64), ids, classes, None


def _load_npz(source, cfg):
    path = Path(source)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise InputError(
                    f"an .npz data source needs arrays 'x' and 'y'; {path} has {sorted(f.files)}. "
                    "Save it with np.savez(path, x=images, y=labels)."
                )
            x, y = f["x"], f["y"]
            names = [str(n) for n in f["class_names"]] if "class_names" in f.files else None
            split = f["split"] if "split" in f.files else None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable .npz file ({exc}). Re-save it with np.savez.") from None
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(y) or y.ndim != 1:
        raise InputError(
            f"an .npz needs x of shape (N, H, W[, 1|3]) and y of shape (N,); received x {x.shape}, "
            f"y {y.shape}. Reshape the arrays."
        )
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise InputError(f"x in {path} contains NaN or inf at {int((~np.isfinite(x)).sum())} values. Clean the data.")
        if x.min() < 0 or x.max() > 255:
            raise InputError(
                f"x in {path} must be pixels in [0, 1] or [0, 255]; received range "
                f"[{x.min():.3g}, {x.max():.3g}]. Rescale the data."
            )
        x = x * 255.0 if x.max() <= 1.0 else x
        x = np.round(x).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise InputError(f"x in {path} must be uint8 or float; received {x.dtype}. Convert it.")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise InputError(f"y in {path} contains NaN or inf. Labels must be integers 0..K-1.")
        if not np.all(y == np.round(y)):
            raise InputError(f"y in {path} must hold integer class ids; received fractional values. Fix the labels.")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y in {path} must hold integer class ids; received dtype {y.dtype}.")
    y = y.astype(np.int64)
    num_classes = len(names) if names else int(y.max()) + 1
    if y.min() < 0 or y.max() >= num_classes:
        raise InputError(
            f"labels in {path} must be in 0..{num_classes - 1}; received range [{y.min()}, {y.max()}]. "
            "Fix the labels or the class_names array."
        )
    names = names or [str(i) for i in range(num_classes)]
    from PIL import Image

    out = []
    for img in x:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out.append(_resize(pil, cfg.image_size, cfg.channels))
    ids = [f"{path.name}/{i}" for i in range(len(out))]
    if split is not None:
        values = split.tolist() if split.ndim == 1 else None
        values = values and [v.decode() if isinstance(v, bytes) else v for v in values]
        if values is None or len(values) != len(y) or not all(isinstance(v, str) and v in SPLITS for v in values):
            shown = sorted({repr(v) for v in (values or [])} - {repr(v) for v in SPLITS})[:5]
            raise InputError(
                f"the 'split' array of {path} must hold one of 'train', 'val', 'test' per sample ({len(y)} values); "
                f"received shape {split.shape}{', values ' + ', '.join(shown) if shown else ''}. Fix it, or drop "
                "it to let edgebuild split the data."
            )
        split = np.asarray(values)
    return np.stack(out), y, ids, names, split


def load_source(source, cfg, key="data.source"):
    """(images uint8 (N, H, W, C), labels, ids, class names, split array or None) of one source."""
    kind = source_kind(source, key)
    if kind != "digits" and not Path(source).exists():
        raise InputError(
            f"{key} must be 'digits', an image folder or an .npz file; {source} does not exist."
        )
    return {"digits": _load_digits, "folder": _load_folder, "npz": _load_npz}[kind](source, cfg)


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


def content_hash(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def pick_calibration(images, labels, ids, train_idx, n, seed):
    """Stratified calibration sample from the train split: equal share per class."""
    rng = np.random.RandomState(seed + 1)
    classes = np.unique(labels)
    chosen = []
    per_class = {c: list(train_idx[labels[train_idx] == c]) for c in classes}
    for c in classes:
        rng.shuffle(per_class[c])
    while len(chosen) < n and any(per_class.values()):
        for c in classes:
            if per_class[c] and len(chosen) < n:
                chosen.append(per_class[c].pop())
    chosen.sort()
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
    if len(samples) < cfg.calibration_samples:
        raise InputError(
            f"calibration needs at least {cfg.calibration_samples} samples (data.calibration_samples); "
            f"received {len(samples)} from {origin}. Lower data.calibration_samples, or point "
            "data.calibration_file at a new path to create a larger set."
        )
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
    missing = sorted(set(np.unique(labels).tolist()) - {s["label"] for s in samples})
    if missing:
        raise InputError(
            f"the calibration set must cover every class; {origin} has no samples of class(es) "
            f"{missing}. Point data.calibration_file at a new path to create a new, stratified set."
        )


def _split_from_array(split):
    return tuple(np.flatnonzero(split == name).astype(np.int64) for name in SPLITS)


def _ids_shown(ids, n=5):
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


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
        t_images, t_labels, t_ids, t_names, t_split = load_source(cfg.test_source, cfg, "data.test_source")
        if t_split is not None:  # an .npz with a split: its 'test' rows are the test set
            keep = np.flatnonzero(t_split == "test")
            t_images, t_labels, t_ids = t_images[keep], t_labels[keep], [t_ids[i] for i in keep]
        if t_names != class_names:
            raise InputError(
                f"data.test_source must have the classes of data.source, in the same order; test set has "
                f"{t_names[:12]}, data.source has {class_names[:12]}. Use the same class folder names (or "
                "class_names arrays)."
            )
        if len(t_labels) == 0:
            raise InputError(f"data.test_source {cfg.test_source} holds no test samples. Point it at your test set.")
        if split is not None:
            train_idx, val_idx, _ = _split_from_array(split)
        else:
            train_idx, val_idx, _ = stratified_split(labels, seed, cfg.val_fraction, 0.0, cfg.max_samples)
        n = len(labels)
        test_idx = np.arange(n, n + len(t_labels), dtype=np.int64)
        images = np.concatenate([images, t_images])
        labels = np.concatenate([labels, t_labels])
        ids = list(ids) + [f"test:{i}" for i in t_ids]
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
            f"train/val split ({_ids_shown(overlap)}). Remove them from one side, or set data.allow_overlap = true "
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


def run(cfg, seed, calibration_path, out_dir):
    """Load, split and pin calibration. `calibration_path` is the versioned file (may not exist)."""
    images, labels, ids, class_names, splits, test_info = load_splits(cfg, seed)
    train_idx, val_idx, test_idx = splits
    num_classes = len(class_names)
    for split_name, idx in (("test", test_idx), ("train", train_idx)):
        absent = sorted(set(range(num_classes)) - set(labels[idx].tolist()))
        if absent:
            raise InputError(
                f"the {split_name} split must contain every class; class(es) "
                f"{[class_names[a] for a in absent][:12]} have no samples in it. Add data for them."
            )
    test_set = test_set_record(images, labels, ids, class_names, splits, test_info, cfg.allow_overlap)
    calibration_path = Path(calibration_path)
    if calibration_path.exists():
        try:
            calib = json.loads(calibration_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{calibration_path} is not valid JSON ({exc}). Restore it from version control, or "
                             "point data.calibration_file at a new path to create a new version.") from None
        check_calibration(calib, ids, images, labels, train_idx, cfg, calibration_path)
        created = False
    else:
        if len(train_idx) < cfg.calibration_samples:
            raise InputError(
                f"calibration needs {cfg.calibration_samples} samples (data.calibration_samples); the "
                f"train split has only {len(train_idx)}. Lower data.calibration_samples or add data."
            )
        calib = {
            "schema_version": CALIBRATION_SCHEMA,
            "source": cfg.source if source_kind(cfg.source) == "digits" else os.path.basename(os.path.normpath(cfg.source)),
            "image_size": cfg.image_size,
            "channels": cfg.channels,
            "seed": seed,
            "class_names": class_names,
            "samples": pick_calibration(images, labels, ids, train_idx, cfg.calibration_samples, seed),
        }
        calibration_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(calibration_path, json.dumps(calib, indent=1) + "\n")
        created = True

    buf = io.BytesIO()
    np.savez(
        buf,
        x=images,
        y=labels,
        ids=np.asarray(ids),
        train=train_idx,
        val=val_idx,
        test=test_idx,
        class_names=np.asarray(class_names),
    )
    atomic_write_bytes(out_dir / "dataset.npz", buf.getvalue())
    atomic_write_text(out_dir / "calibration.json", json.dumps(calib, indent=1) + "\n")
    counts = {name: int(len(idx)) for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))}
    return {
        "class_names": class_names,
        "input_shape": list(images.shape[1:]),
        "splits": counts,
        "test_set": test_set,
        "calibration": {
            "file": str(calibration_path),
            "samples": len(calib["samples"]),
            "created": created,
            "sha256": hashlib.sha256((json.dumps(calib, indent=1) + "\n").encode()).hexdigest(),
        },
    }


def load_dataset(path):
    """Read a `dataset.npz` written by this stage into a dict of arrays."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def calibration_indices(dataset, calib):
    position = {sid: i for i, sid in enumerate(dataset["ids"].tolist())}
    return np.asarray([position[s["id"]] for s in calib["samples"]], np.int64)


def run_stage(config, inputs, out_dir, progress):
    return run(config.data, config.build.seed, config.data.calibration_file, out_dir)
