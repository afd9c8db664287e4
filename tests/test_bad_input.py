"""Bad input, table-driven: every case exits 3 with one line (rule, what was received, the fix), no
traceback, and writes no artifact."""

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, edgebuild


def _folder(tmp, classes=("a", "b", "c"), per_class=12, size=12):
    root = tmp / "imgs"
    rng = np.random.RandomState(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _npz(tmp, x=None, y=None, **extra):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 255, (60, 8, 8), dtype=np.uint8) if x is None else x
    y = np.arange(60) % 3 if y is None else y
    arrays = {"x": x, "y": y, **extra}
    np.savez(tmp / "d.npz", **{k: v for k, v in arrays.items() if v is not False})
    return tmp / "d.npz"


def _write(path, text):
    path.write_text(text)
    return path


def _data(source, *more):
    return ["--set", f'data.source="{source}"', "--set", "data.image_size=8", "--set", "data.calibration_samples=10", *more]


def empty_class(tmp):
    root = _folder(tmp)
    (root / "d").mkdir()
    return _data(root)


def corrupt_image(tmp):
    root = _folder(tmp)
    (root / "b" / "broken.png").write_bytes((root / "b" / "0.png").read_bytes()[:40])
    return _data(root)


def text_file_in_folder(tmp):
    root = _folder(tmp)
    (root / "a" / "README.txt").write_text("not an image")
    return _data(root)


def mixed_sizes_refused(tmp):
    root = _folder(tmp, size=8)
    Image.new("RGB", (20, 20)).save(root / "c" / "big.png")
    return _data(root, "--set", 'data.mixed_sizes="refuse"')


def single_class_folder(tmp):
    return _data(_folder(tmp, classes=("only",)))


def write_calib(tmp, samples):
    path = tmp / "calib.json"
    path.write_text(json.dumps({"schema_version": 1, "samples": samples}))
    return path


def small_calibration(tmp):
    calib = write_calib(tmp, [])
    return ["--set", f'data.calibration_file="{calib}"']


def calibration_missing_classes(tmp):
    # a real calibration set of a build, then only class-0 samples kept
    proc = edgebuild("--quiet", "build", "--config", str(TINY), "--until", "calibration",
                     "--set", f'build.out_dir="{tmp}/pre"', "--set", f'data.calibration_file="{tmp}/full.json"')
    assert proc.returncode == 0, proc.stderr
    full = json.loads((tmp / "full.json").read_text())
    full["samples"] = [s for s in full["samples"] if s["label"] == 0] * 20
    (tmp / "calib.json").write_text(json.dumps(full))
    shutil.rmtree(tmp / "pre")
    return ["--set", f'data.calibration_file="{tmp}/calib.json"', "--set", "data.calibration_samples=10"]


def shared_test_images(tmp):
    source = _npz(tmp)
    leak = np.load(source)
    np.savez(tmp / "test.npz", x=leak["x"][:12], y=leak["y"][:12])
    return _data(source, "--set", f'data.test_source="{tmp}/test.npz"')


def _float_image_folder(tmp):
    """A folder whose class 'a' holds a 32-bit float TIFF (mode F: no fixed pixel range)."""
    root = _folder(tmp, classes=("a", "b", "c"))
    Image.fromarray(np.random.RandomState(0).rand(12, 12).astype(np.float32)).save(root / "a" / "float.tif")
    return root


def decompression_bomb(tmp):
    """A PNG whose header claims 30000 x 30000 pixels (900 MP, past Pillow's bomb limit), a few bytes long."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = _folder(tmp, classes=("a", "b", "c"))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    (root / "a" / "bomb.png").write_bytes(png + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return _data(root)


def other_test_classes(tmp):
    root = _folder(tmp, classes=("a", "b", "c"))
    other = tmp / "other"
    _folder(other, classes=("a", "b", "x"), per_class=3)
    return _data(root, "--set", f'data.test_source="{other}/imgs"')


CASES = [
    # id, make(tmp) -> extra CLI args, expected text
    ("unknown key", lambda t: ["--set", "train.epoch=3"], "Did you mean 'epochs'?"),
    ("unknown section", lambda t: ["--set", "trian.epochs=3"], "Did you mean 'train'?"),
    ("wrong type", lambda t: ["--set", 'train.epochs="ten"'], "must be of type int"),
    ("below range", lambda t: ["--set", "train.batch_size=0"], "must be between 1 and 1000000; received 0"),
    ("untrained model", lambda t: ["--set", "train.epochs=0"], "train.epochs = 0 keeps the model untrained"),
    ("above range", lambda t: ["--set", "data.val_fraction=0.9"], "must be between 0.0 and 0.5"),
    ("not a choice", lambda t: ["--set", "data.channels=2"], "must be one of 1, 3"),
    ("bad --set syntax", lambda t: ["--set", "train.epochs"], "--set takes section.key=value"),
    ("config file missing", lambda t: ["--config", str(t / "nope.toml")], "does not exist"),
    ("config not TOML", lambda t: ["--config", str(_write(t / "c.toml", "[train\nepochs="))], "not valid TOML"),
    ("unknown target", lambda t: ["--set", 'validate.targets=["rpi9"]'], "there is no"),
    ("data source missing", lambda t: _data(t / "nowhere"), "does not exist"),
    ("empty class folder", empty_class, "is empty"),
    ("corrupt image", corrupt_image, "broken.png"),
    ("non-image file", text_file_in_folder, "README.txt"),
    ("mixed sizes refused", mixed_sizes_refused, "big.png"),
    ("one class only", single_class_folder, "at least 2"),
    ("npz labels out of range", lambda t: _data(_npz(t, y=np.arange(60) % 3 - 1)), "must be class ids 0.."),
    ("npz NaN labels", lambda t: _data(_npz(t, y=np.where(np.arange(60) == 5, np.nan, np.arange(60) % 3))), "NaN"),
    ("npz NaN pixels", lambda t: _data(_npz(t, x=np.where(np.arange(60 * 64).reshape(60, 8, 8) == 7, np.nan, 0.5))), "NaN or inf"),
    ("npz missing y", lambda t: _data(_npz(t, y=False)), "needs arrays 'x' and 'y'"),
    ("npz wrong shape", lambda t: _data(_npz(t, x=np.zeros((60, 64), np.uint8))), "needs x of shape"),
    ("npz not an npz", lambda t: _data(_write(t / "d.npz", "hello")), "not a readable .npz"),
    ("class absent from test split", lambda t: _data(_npz(t, y=np.where(np.arange(60) == 0, 3, np.arange(60) % 3))), "must contain every class"),
    ("calibration too small", small_calibration, "calibration needs at least"),
    ("calibration missing classes", calibration_missing_classes, "must cover every class"),
    ("calibration not JSON", lambda t: ["--set", f'data.calibration_file="{_write(t / "calib.json", "{")}"'], "not valid JSON"),
    ("more calibration than train", lambda t: _data(_npz(t), "--set", "data.calibration_samples=500"), "has only"),
    ("a model file as data", lambda t: _data(_write(t / "model.tflite", "TFL3")), "A model file goes to train.recipe"),
    ("unsupported data file", lambda t: _data(_write(t / "d.csv", "1,2")), "'.csv' file, which is none of them"),
    ("empty data source", lambda t: ["--set", 'data.source=""'], "received an empty string"),
    ("weights not a weights file", lambda t: ["--set", f'train.weights="{_write(t / "w.bin", "x")}"'],
     "train.weights must be a local .weights.h5 or .keras file"),
    ("weights missing", lambda t: ["--set", 'train.weights="nope.weights.h5"'], "does not exist here"),
    ("recipe is a weights file", lambda t: ["--set", 'train.recipe="b.weights.h5"'], "holds weights only"),
    ("test set shares images", shared_test_images, "12 of 12 test images"),
    ("test set other classes", other_test_classes, "must have the classes of data.source"),
    ("npz bad split array", lambda t: _data(_npz(t, split=np.array(["train", "dev"] * 30))), "'dev'"),
    ("npz split without test rows", lambda t: _data(_npz(t, split=np.array(["train", "val"] * 30))), "marks no sample 'test'"),
    ("pixel range reversed", lambda t: ["--set", "preprocess.pixel_range=[1, 0]"], "lo < hi"),
    ("mean per channel", lambda t: ["--set", "preprocess.mean=[0.1, 0.2]"], "one value or one per channel"),
    ("std not positive", lambda t: ["--set", "preprocess.std=[0]"], "must be positive"),
    ("build name is a path", lambda t: ["--set", 'build.name="../../escaped"'], "build.name must be a name"),
    ("build name absolute", lambda t: ["--set", f'build.name="{t}/abs"'], "never a path"),
    ("build name empty", lambda t: ["--set", 'build.name=""'], "build.name must be a name"),
    ("build name with a quote", lambda t: ["--name", 'a"b'], """received 'a"b'"""),
    ("target name is a path", lambda t: ["--set", 'validate.targets=["../targets/rpi5-litert"]'], "must be a name"),
    ("allowed ops not strings", lambda t: ["--set", "export.allowed_float_ops=[1, 2]"], "must be a list of str"),
    ("labels up to 2,000,000", lambda t: _data(_npz(t, y=np.where(np.arange(60) == 5, 2_000_000, np.arange(60) % 3))),
     "must be class ids 0..99999"),
    ("build name too long", lambda t: ["--set", f'build.name="{"x" * 65}"'], "1 to 64 letters"),
    ("target name with a slash", lambda t: ["--set", 'validate.targets=["rpi5/litert"]'], "must be a name"),
    ("targets not a list of names", lambda t: ["--set", "validate.targets=[5]"], "must be a list of str"),
    ("allowed ops not a list", lambda t: ["--set", 'export.allowed_float_ops="LOGISTIC"'], "must be of type list"),
    ("npz labels 2-D", lambda t: _data(_npz(t, y=np.zeros((60, 2), np.int64))), "y of shape (N,)"),
    ("npz x of another length", lambda t: _data(_npz(t, y=np.arange(59) % 3)), "needs x of shape"),
    ("32-bit float image", lambda t: _data(_float_image_folder(t)), "mode F"),
    ("empty npz", lambda t: _data(_npz(t, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))), "holds no images"),
    ("decompression bomb", decompression_bomb, "bomb.png (Image size"),
    ("calibration file is a directory", lambda t: ["--set", f'data.calibration_file="{t}"'], "must name a file"),
    ("cache is a file", lambda t: ["--set", f'cache.dir="{_write(t / "cachefile", "x")}"'], "the cache must be a directory"),
    ("application recipe with other input", lambda t: ["--set", 'train.recipe="mobilenet_v3_small"', "--set",
                                                       "preprocess.pixel_range=[0, 255]"], "needs the default preprocessing"),
]


def _files(out):
    """Everything a build left in `out`, except logs and the lock file (not artifacts)."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file() and "logs" not in p.parts and p.name != ".lock")


@pytest.mark.parametrize("case, make, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_3_with_one_line(case, make, expected, tmp_path):
    out = tmp_path / "out"
    args = make(tmp_path)
    if not any(a.startswith("data.calibration_file") for a in args):
        args += ["--set", f'data.calibration_file="{tmp_path}/calib-new.json"']
    if "--config" not in args:
        args = ["--config", str(TINY), *args]
    before = _files(tmp_path)
    around = _snapshot(tmp_path)
    if not any(a.startswith("validate.targets") for a in args):
        args += ["--set", "validate.targets=[]"]
    (tmp_path / "tmproot").mkdir()  # the run's TMPDIR, inside the snapshot: a temporary file left there fails
    proc = edgebuild("build", *args, "--set", f'build.out_dir="{out}"', env={"TMPDIR": str(tmp_path / "tmproot")})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    # stderr: the stage lines of the stages that finished, then the error in one line (two at most)
    lines = proc.stderr.strip().splitlines()
    err = "\n".join(line for line in lines if not re.match(r"^\s*(ran|cached)  \S+ +[0-9.]+ s$", line))
    assert "Traceback" not in err and err.startswith("error: ") and len(err.splitlines()) <= 2, err
    assert len(err) <= 800, f"an error message must stay short; this one is {len(err)} characters"
    assert expected in err, err
    assert _unvouched(tmp_path, before) == [], "the failed stage must write nothing"
    after = _snapshot(tmp_path)
    changed = {p for p in set(around) | set(after) if around.get(p) != after.get(p)}
    assert changed <= {"calib-new.json"}, f"files outside the build directory changed: {sorted(changed)}"


def _snapshot(tmp_path):
    """Every file around the build directory (outside tmp_path/out) with its content hash; the
    versioned calibration file may be pinned there by a build whose later stage failed."""
    import hashlib

    return {str(p.relative_to(tmp_path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.rglob("*")
            if p.is_file() and (tmp_path / "out") not in p.parents}


def _unvouched(tmp_path, before):
    """Files the build added that no finished stage vouches for (by its record)."""
    vouched = set()
    for record in (tmp_path / "out").rglob("records/*.json"):
        build_dir = record.parent.parent
        vouched.add(str(record.relative_to(tmp_path)))
        vouched |= {str((build_dir / name).relative_to(tmp_path)) for name in json.loads(record.read_text())["outputs"]}
    return [f for f in _files(tmp_path) if f not in before and f not in vouched]


def test_output_directory_not_writable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if (ro / "probe").exists() or _can_write(ro):
            pytest.skip("running as a user that ignores directory permissions (root)")
        proc = edgebuild("build", "--config", str(TINY), "--set", f'build.out_dir="{ro}"')
        assert proc.returncode == 3 and "must be writable" in proc.stderr
    finally:
        ro.chmod(0o700)


def test_output_directory_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = edgebuild("build", "--config", str(TINY), "--set", f'build.out_dir="{tmp_path}/file"')
    assert proc.returncode == 3 and "must be writable" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def _can_write(d):
    try:
        (d / ".w").write_text("")
        (d / ".w").unlink()
        return True
    except OSError:
        return False


def _copy_build(tiny_build, tmp_path):
    d = tmp_path / "b" / "tiny"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock", "logs"))
    return d


@pytest.mark.parametrize("content", [b"not a flatbuffer at all", None])
def test_validation_refuses_a_broken_tflite(tiny_build, tmp_path, cache_dir, content):
    """A build's model replaced or truncated after the build: refused before anything runs (a model file
    that is no flatbuffer at all is tests/test_validate_model.py's)."""
    expected = "model_int8.tflite has other content"
    d = _copy_build(tiny_build, tmp_path)
    model = d / "model_int8.tflite"
    model.write_bytes(content if content is not None else model.read_bytes()[:3000])
    manifest_before = (d / "manifest.json").read_bytes()
    proc = edgebuild("validate", str(d), "--config", str(TINY), "--target", "rpi5-litert",
                     env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert (d / "manifest.json").read_bytes() == manifest_before


@pytest.mark.parametrize("change, command, expected", [
    ("alter", "gate", "predictions.npz has other content"),
    ("remove", "report", "predictions.npz is missing"),
    ("alter", "report", "dataset.npz has other content"),
])
def test_the_files_the_gate_and_report_read_are_verified(tiny_build, tmp_path, change, command, expected):
    """Issue 35 item 12: predictions.npz (and dataset.npz) are artifacts like the models: an altered or missing
    one is exit 3 naming it, never a verdict or a report on other numbers than the manifest's."""
    d = _copy_build(tiny_build, tmp_path)
    name = expected.split()[0]
    if change == "remove":
        (d / name).unlink()
    else:
        with np.load(d / name) as f:
            arrays = {k: f[k] for k in f.files}
        key = "int8_top1" if name == "predictions.npz" else "y"
        arrays[key] = arrays[key].copy()
        arrays[key][:24] = (arrays[key][:24] + 1) % 10
        np.savez(d / name, **arrays)
    proc = edgebuild(command, str(d), *(["--config", str(TINY)] if command == "gate" else []))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("edit, sealed, expected", [
    (lambda m: m.update(schema_version=99), False, "schema_version must be 1; received 99"),
    (lambda m: m.update(class_names=["x", "y"]), True, "same classes"),
    (lambda m: m["test_split"].update(sha256="0" * 64), True, "test splits must match"),
    (lambda m: m["metrics"]["int8_host"].update(accuracy=1.0), False, "changed after edgebuild wrote it"),
])
def test_bad_baseline_is_exit_3(tiny_build, tmp_path, edit, sealed, expected):
    """Sealed: a genuine manifest of another build (written, so sealed, by edgebuild); not sealed: edited."""
    from pipeline.release import manifest as manifest_mod

    d = _copy_build(tiny_build, tmp_path)
    base = json.loads((d / "manifest.json").read_text())
    edit(base)
    if sealed:
        manifest_mod.write(tmp_path / "base.json", base)
    else:
        (tmp_path / "base.json").write_text(json.dumps(base))
    before = (d / "manifest.json").read_bytes()
    proc = edgebuild("gate", str(d), "--config", str(TINY), "--baseline", str(tmp_path / "base.json"))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert expected in proc.stderr and "Traceback" not in proc.stderr
    assert (d / "manifest.json").read_bytes() == before
