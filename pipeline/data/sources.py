"""Where data comes from: scikit-learn's digits, an image folder (one sub-folder per class) or an
`.npz` (x, y, optional split, class_names and group), read into uint8 images of one size or, for
features (the tensor form), into x as it is; and a content fingerprint of a source for cache keys."""

import hashlib
import os
from collections import Counter, namedtuple
from pathlib import Path

import numpy as np

from pipeline.engine.errors import InputError
from pipeline.engine.text import first_few

SPLITS = ("train", "val", "test")

# One source, read: x (uint8 images, or features), y, ids, class names, the split array (or None) and
# the group of each sample (or None: every sample its own group).
Loaded = namedtuple("Loaded", "x y ids class_names split groups")

ANOMALY_CLASSES = ["normal", "anomaly"]


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


MODEL_SUFFIXES = {".tflite", ".onnx", ".keras", ".h5", ".pb", ".pt", ".pth"}


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


DIGITS_FILE = "sklearn/datasets/data/digits.csv.gz"  # in scikit-learn's distribution: what load_digits reads


def _digits_fingerprint():
    """The version of scikit-learn and the hash of the digits file it ships, from its installed files
    (importing scikit-learn would add 0.6 s to every build's key computation)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("scikit-learn")
        data = Path(dist.locate_file(DIGITS_FILE)).read_bytes()
    except (metadata.PackageNotFoundError, OSError):
        raise InputError(
            "data.source = 'digits' reads the digits data set scikit-learn ships; it is not installed here "
            f"(no {DIGITS_FILE}). Install edgebuild's dependencies (make install), or point data.source at "
            "an image folder or .npz file."
        ) from None
    return f"sklearn-digits-{dist.version}-{hashlib.sha256(data).hexdigest()}"


def files_under(root):
    """Every file under `root`, sorted, following symlinked folders as the loader reads them (a folder
    linked twice is read twice; only a link back to a folder it is inside is not followed, so a loop
    ends): the fingerprint and the loader see the same files, in the same order, on every machine."""
    found = []

    def walk(folder, inside):
        real = os.path.realpath(folder)
        if real in inside:
            return
        for entry in sorted(os.listdir(folder)):
            path = Path(folder) / entry
            if path.is_dir():
                walk(path, inside | {real})
            elif path.is_file():
                found.append(path)

    walk(Path(root), frozenset())
    return found


def source_fingerprint(source, key="data.source"):
    """A content hash of the data source, so the stage cache notices changed data."""
    kind = source_kind(source, key)
    h = hashlib.sha256(kind.encode())
    if kind == "digits":
        h.update(_digits_fingerprint().encode())
        return h.hexdigest()
    path = Path(source)
    if not path.exists():
        raise InputError(
            f"{key} must be 'digits', an image folder or an .npz file; {source} does not exist."
        )
    files = [path] if path.is_file() else files_under(path)
    for p in files:
        h.update(str(p.relative_to(path) if p != path else p.name).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _to_8bit(img):
    """16-bit grayscale (PNG mode 'I;16', or 'I' holding 16-bit values) keeps its top 8 bits: Pillow's
    convert('L') clips every value above 255 to white instead."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"mode {img.mode} with values outside 0..65535")
        return Image.fromarray((a >> 8).astype(np.uint8), "L")
    if img.mode == "F":
        raise ValueError("32-bit float pixels (mode F) have no fixed range")
    return img


def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    return tf


def keras_resize(arr, size):
    """(H, W, C) uint8 -> (size, size, C) uint8 with tf.image.resize (bilinear, no antialiasing), as
    keras.utils.image_dataset_from_directory resizes; its float result rounded to uint8."""
    tf = _tensorflow()
    out = tf.image.resize(arr, (size, size), method="bilinear").numpy()
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def keras_load(path, size, channels):
    """An image file decoded and resized the way keras.utils.image_dataset_from_directory does
    (tf.io.decode_image, then tf.image.resize bilinear), rounded to uint8."""
    tf = _tensorflow()
    try:
        img = tf.io.decode_image(tf.io.read_file(str(path)), channels=channels, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        raise ValueError(f"TensorFlow cannot decode it: {' '.join(exc.message.split())[:60]}") from None
    return keras_resize(img.numpy(), size)


def _resize(img, size, channels, method="pillow"):
    from PIL import Image

    img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    if method == "keras":
        arr = np.asarray(img, dtype=np.uint8).reshape(img.size[1], img.size[0], channels)
        return keras_resize(arr, size)
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
        images.append(_resize(pil, cfg.image_size, cfg.channels, cfg.resize))
    ids = [f"digits/{i}" for i in range(len(images))]
    names = [str(i) for i in range(10)]
    return Loaded(np.stack(images), digits.target.astype(np.int64), ids, names, None, None)


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
        files = [p for p in files_under(root / name) if not p.name.startswith(".")]
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
                    arr = (keras_load(p, cfg.image_size, cfg.channels) if cfg.resize == "keras" else
                           _resize(img, cfg.image_size, cfg.channels))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                bad.append(f"{rel} ({str(exc)[:80] or type(exc).__name__})")
                continue
            images.append(arr)
            labels.append(label)
            ids.append(rel)
    if bad:
        shown = first_few(bad)
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
    return Loaded(np.stack(images), np.asarray(labels, np.int64), ids, classes, None, None)


def _require_finite(a, name, path, fix):
    bad = ~np.isfinite(a)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{name} in {path} contains NaN or inf at {int(bad.sum())} values (the first at index "
                         f"{first[0] if len(first) == 1 else first}). {fix}")


def looks_like_pixels(x):
    """Whether an .npz's x reads as images under preprocess.form = 'auto': uint8, or floats of shape
    (N, H, W[, 1|3]) within 0..255. Integer features and floats of any other rank, channel count or
    range are features (the tensor form)."""
    if x.dtype == np.uint8:
        return True
    if not np.issubdtype(x.dtype, np.floating) or x.ndim not in (3, 4) or x.ndim == 4 and x.shape[-1] not in (1, 3):
        return False
    finite = np.isfinite(x)
    return bool(finite.all() and (not x.size or (x.min() >= 0 and x.max() <= 255)))


def _read_npz(path):
    """{name: array} of an .npz, refused in one line when it is none."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InputError(f"an .npz data source is a zip of named arrays (np.savez); {path} holds a single "
                             f"{type(loaded).__name__} (an .npy file renamed?). Save it with "
                             "np.savez(path, x=images, y=labels).")
        with loaded as f:
            if "x" not in f.files or "y" not in f.files:
                raise InputError(
                    f"an .npz data source needs arrays 'x' and 'y'; {path} has {sorted(f.files)}. "
                    "Save it with np.savez(path, x=images, y=labels)."
                )
            return {k: f[k] for k in ("x", "y", "class_names", "split", "group") if k in f.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a readable .npz file ({exc}). Re-save it with np.savez.") from None


def _features(x, y, path):
    """x of the tensor form: (N, ...) features, float (as float32) or integer (kept as it is)."""
    if x.ndim < 2 or len(x) != len(y) or y.ndim != 1:
        raise InputError(f"an .npz of features needs x of shape (N, ...) and y of shape (N,); received x {x.shape}, "
                         f"y {y.shape}. Reshape the arrays.")
    if len(y) == 0 or 0 in x.shape:
        raise InputError(f"{path} holds no samples (x {x.shape}, y {y.shape}). Point data.source at your data.")
    if np.issubdtype(x.dtype, np.floating):
        _require_finite(x, "x", path, "Clean the features (NaN or inf cannot be fed to a model).")
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        return x
    raise InputError(f"x in {path} must hold numbers (float features, or integer features in the model's input "
                     f"dtype); received dtype {x.dtype}. Convert it.")


def _groups(raw, y, path):
    """The 'group' array as strings, one per sample; every group's samples carry one label."""
    if raw is None:
        return None
    if raw.ndim != 1 or len(raw) != len(y) or raw.dtype.kind not in "iuUSO":
        raise InputError(f"the 'group' array of {path} must hold one group id (an integer or a string) per sample "
                         f"({len(y)} values); received shape {raw.shape}, dtype {raw.dtype}. Fix it, or drop it.")
    groups = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw.tolist()])
    first = {}
    for g, label in zip(groups.tolist(), y.tolist()):
        if first.setdefault(g, label) != label:
            raise InputError(f"every window of a group (one clip) must carry one label; group {g!r} in {path} has "
                             f"labels {first[g]} and {label}. Fix the labels, or split the clip into two groups.")
    return groups


def _load_npz(source, cfg, form="auto", task="classification"):
    path = Path(source)
    arrays = _read_npz(path)
    x, y = arrays["x"], arrays["y"]
    if form == "pixels" or form == "auto" and looks_like_pixels(x):
        if form == "auto" and np.issubdtype(x.dtype, np.floating) and x.shape[1] != x.shape[2]:
            print(f"{path}: x {x.dtype} {list(x.shape[1:])} per sample is read as images (floats within 0..255, "
                  f"preprocess.form = 'auto') and resized to {cfg.image_size}x{cfg.image_size}; if these are "
                  "features, set preprocess.form = 'tensor'")
        return _load_npz_images(path, arrays, cfg, task)
    x = _features(x, y, path)
    y, names = _labels(y, arrays.get("class_names"), path, task)
    return Loaded(x, y, [f"{path.name}/{i}" for i in range(len(y))], names, _split(arrays.get("split"), y, path),
                  _groups(arrays.get("group"), y, path))


def _load_npz_images(path, arrays, cfg, task):
    x, y = arrays["x"], arrays["y"]
    names = arrays.get("class_names")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(y) or y.ndim != 1:
        raise InputError(
            f"an .npz needs x of shape (N, H, W[, 1|3]) and y of shape (N,); received x {x.shape}, "
            f"y {y.shape}. Reshape the arrays."
        )
    if len(y) == 0 or 0 in x.shape:
        raise InputError(f"{path} holds no images (x {x.shape}, y {y.shape}). Point data.source at your data.")
    if np.issubdtype(x.dtype, np.floating):
        _require_finite(x, "x", path, "Clean the data.")
        if x.min() < 0 or x.max() > 255:
            raise InputError(
                f"x in {path} must be pixels in [0, 1] or [0, 255]; received range "
                f"[{x.min():.3g}, {x.max():.3g}]. Rescale the data."
            )
        x = x * 255.0 if x.max() <= 1.0 else x
        x = np.round(x).astype(np.uint8)
    elif x.dtype != np.uint8:
        raise InputError(f"x in {path} must be uint8 or float; received {x.dtype}. Convert it.")
    y, names = _labels(y, names, path, task)
    from PIL import Image

    out = []
    for img in x:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out.append(_resize(pil, cfg.image_size, cfg.channels, cfg.resize))
    ids = [f"{path.name}/{i}" for i in range(len(out))]
    return Loaded(np.stack(out), y, ids, names, _split(arrays.get("split"), y, path), _groups(arrays.get("group"), y, path))


def _labels(y, names, path, task):
    """(y as int64 class ids, class names) of an .npz, refused in one line where they do not fit together
    or the task (anomaly: 0 normal, 1 anomaly; the data stage checks that both are there to test)."""
    if np.issubdtype(y.dtype, np.floating):
        _require_finite(y, "y", path, "Labels must be integers 0..K-1.")
        if not np.all(y == np.round(y)):
            raise InputError(f"y in {path} must hold integer class ids; received fractional values. Fix the labels.")
    elif not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y in {path} must hold integer class ids; received dtype {y.dtype}.")
    names = _class_names(names, path)
    if task == "anomaly":
        if not np.isin(y, (0, 1)).all():
            other = sorted(set(np.unique(y).tolist()) - {0, 1})
            raise InputError(f"an anomaly task's labels are 0 (normal) and 1 (anomaly); y in {path} also holds "
                             f"{first_few([_number(v) for v in other])}. Relabel the windows.")
        if names is not None and len(names) != 2:
            raise InputError(f"an anomaly task has two classes, normal (0) and anomaly (1); class_names in {path} has "
                             f"{len(names)}. Drop the class_names array, or give two names.")
        return y.astype(np.int64), names or list(ANOMALY_CLASSES)
    if y.min() < 0 or y.max() >= (len(names) if names else MAX_CLASSES):
        top = len(names) - 1 if names else MAX_CLASSES - 1
        raise InputError(
            f"labels in {path} must be class ids 0..{top}{' (one per class_names entry)' if names else ''}; "
            f"received range [{_number(y.min())}, {_number(y.max())}]. Fix the labels or the class_names array."
        )
    y = y.astype(np.int64)
    if names is None:
        present = np.unique(y)
        if len(present) != int(y.max()) + 1:
            raise InputError(
                f"labels in {path} must be the class ids 0..K-1 with samples in every class; they reach "
                f"{int(y.max())}, but {int(y.max()) + 1 - len(present)} of those {int(y.max()) + 1} ids have no samples. "
                "Renumber the labels, or give a class_names array."
            )
        names = [str(i) for i in range(int(y.max()) + 1)]
    present = len(np.unique(y))
    if present < 2:
        raise InputError(f"a classifier needs samples of at least 2 classes; {path} has samples of {present} "
                         f"({names[int(y[0])]!r}). Add the other classes' samples.")
    return y, names


def _split(split, y, path):
    """The 'split' array of an .npz as strings (None when absent)."""
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
    return split


MAX_CLASSES = 100_000  # labels of an .npz without class_names: refused beyond this, before any list is made


def _number(v):
    return f"{float(v):.3g}" if isinstance(v, (float, np.floating)) else str(int(v))


def _class_names(raw, path):
    """The class_names array of an .npz as a list of distinct strings (None when absent)."""
    if raw is None:
        return None
    if raw.ndim != 1 or raw.dtype.kind not in "USO" or not 2 <= len(raw) <= MAX_CLASSES:
        raise InputError(f"class_names in {path} must be a 1-D array of 2 to {MAX_CLASSES:,} strings, one per class id; "
                         f"received shape {raw.shape}, dtype {raw.dtype}. Save np.array(['cat', 'dog', ...]).")
    names = [str(n) for n in raw]
    repeated = sorted(n for n, count in Counter(names).items() if count > 1)
    if repeated:
        raise InputError(f"class_names in {path} must be distinct, one per class; {first_few(map(repr, repeated), 3)} "
                         "occurs more than once. Give each class its own name.")
    return names


def load_source(source, cfg, key="data.source", form="auto", task="classification"):
    """`Loaded` (images uint8 (N, H, W, C) or features, labels, ids, class names, split array or None,
    groups or None) of one source; `form` is preprocess.form, `task` task.kind."""
    kind = source_kind(source, key)
    if kind != "digits" and not Path(source).exists():
        raise InputError(
            f"{key} must be 'digits', an image folder or an .npz file; {source} does not exist."
        )
    if kind == "npz":
        return _load_npz(source, cfg, form, task)
    if form == "tensor":
        raise InputError(f"preprocess.form = 'tensor' reads features from an .npz; {key} is "
                         f"{'the digits images' if kind == 'digits' else 'an image folder'}. Point it at an .npz of "
                         "features, or set preprocess.form = 'auto'.")
    if task == "anomaly":
        raise InputError(f"an anomaly task reads windows labelled 0 (normal) / 1 (anomaly) from an .npz; {key} is "
                         f"{'the digits images' if kind == 'digits' else 'an image folder'}. Point it at an .npz.")
    return {"digits": _load_digits, "folder": _load_folder}[kind](source, cfg)


def content_hash(image):
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()
