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
CALIBRATION_SCHEMA = 1


def source_kind(source):
    if source == "digits":
        return "digits"
    path = Path(source)
    if path.suffix == ".npz":
        return "npz"
    return "folder"


def source_fingerprint(source):
    """A content hash of the data source, so the stage cache notices changed data."""
    kind = source_kind(source)
    h = hashlib.sha256(kind.encode())
    if kind == "digits":
        import sklearn

        h.update(f"sklearn-digits-{sklearn.__version__}".encode())
        return h.hexdigest()
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"data.source must be 'digits', an image folder or an .npz file; {source} does not exist."
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


def _load_digits(cfg):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = []
    for img in digits.images:  # 8x8, values 0..16
        pil = Image.fromarray(np.round(img * 255.0 / 16.0).astype(np.uint8), mode="L")
        images.append(_resize(pil, cfg.image_size, cfg.channels))
    ids = [f"digits/{i}" for i in range(len(images))]
    names = [str(i) for i in range(10)]
    return np.stack(images), digits.target.astype(np.int64), ids, names


def _load_folder(cfg):
    from PIL import Image, UnidentifiedImageError

    root = Path(cfg.source)
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
    return np.stack(images), np.asarray(labels, np.int64), ids, classes


def _load_npz(cfg):
    path = Path(cfg.source)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files or "y" not in f.files:
                raise InputError(
                    f"an .npz data source needs arrays 'x' and 'y'; {path} has {sorted(f.files)}. "
                    "Save it with np.savez(path, x=images, y=labels)."
                )
            x, y = f["x"], f["y"]
            names = [str(n) for n in f["class_names"]] if "class_names" in f.files else None
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
    return np.stack(out), y, ids, names


def load_source(cfg):
    kind = source_kind(cfg.source)
    if kind != "digits" and not Path(cfg.source).exists():
        raise InputError(
            f"data.source must be 'digits', an image folder or an .npz file; {cfg.source} does not exist."
        )
    return {"digits": _load_digits, "folder": _load_folder, "npz": _load_npz}[kind](cfg)


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
        n_test = max(1, int(round(len(idx) * test_fraction)))
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
            f"{calib.get('schema_version')!r} in {origin}. Delete it to create a new version."
        )
    samples = calib.get("samples", [])
    if len(samples) < cfg.calibration_samples:
        raise InputError(
            f"calibration needs at least {cfg.calibration_samples} samples (data.calibration_samples); "
            f"received {len(samples)} from {origin}. Lower data.calibration_samples or delete the "
            "file to create a new calibration set."
        )
    position = {sid: i for i, sid in enumerate(ids)}
    train_set = set(int(i) for i in train_idx)
    for s in samples:
        i = position.get(s["id"])
        if i is None or i not in train_set:
            raise InputError(
                f"calibration sample {s['id']} from {origin} is not in this build's train split. "
                "The data or split changed: restore it, or delete the file to create a new version."
            )
        if content_hash(images[i]) != s["sha256"]:
            raise InputError(
                f"calibration sample {s['id']} from {origin} has different content than when the "
                "set was made. Restore the data, or delete the file to create a new version."
            )
    missing = sorted(set(np.unique(labels).tolist()) - {s["label"] for s in samples})
    if missing:
        raise InputError(
            f"the calibration set must cover every class; {origin} has no samples of class(es) "
            f"{missing}. Delete it to create a new, stratified one."
        )


def run(cfg, seed, calibration_path, out_dir):
    """Load, split and pin calibration. `calibration_path` is the versioned file (may not exist)."""
    images, labels, ids, class_names = load_source(cfg)
    train_idx, val_idx, test_idx = stratified_split(
        labels, seed, cfg.val_fraction, cfg.test_fraction, cfg.max_samples
    )
    num_classes = len(class_names)
    for split_name, idx in (("test", test_idx), ("train", train_idx)):
        absent = sorted(set(range(num_classes)) - set(labels[idx].tolist()))
        if absent:
            raise InputError(
                f"the {split_name} split must contain every class; class(es) "
                f"{[class_names[a] for a in absent]} have no samples in it. Add data for them."
            )
    calibration_path = Path(calibration_path)
    if calibration_path.exists():
        try:
            calib = json.loads(calibration_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{calibration_path} is not valid JSON ({exc}). Delete it to recreate it.") from None
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
