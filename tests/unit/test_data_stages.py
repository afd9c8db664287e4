"""data and calibration stages, run in this process: real sources, a deterministic stratified split,
a versioned calibration set that is made once and verified after."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SIGNS
from pipeline.data.splits import load_dataset, stratified_split
from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.engine.stage import run_here
from pipeline.stages import calibration, data


def _config(tmp_path, *sets, calib="calib.json"):
    return config_mod.load(None, [f'data.calibration_file="{tmp_path / calib}"', *sets])


def _data(config, out):
    return run_here(data.STAGE, config, {}, out)


def _calibrate(config, out):
    """The calibration stage, then the engine's declared pin (copy to data.calibration_file if absent)."""
    rec = run_here(calibration.STAGE, config, {"dataset.npz": out / "dataset.npz"}, out)
    path = Path(config.data.calibration_file)
    if not path.exists():
        shutil.copy(out / "calibration.json", path)
    return rec


def test_digits_split_is_deterministic_stratified_and_disjoint(tmp_path):
    config = _config(tmp_path, "data.image_size=16", "data.calibration_samples=50", "build.seed=7")
    cfg = config.data
    _data(config, tmp_path)
    ds = load_dataset(tmp_path / "dataset.npz")
    assert ds["x"].dtype == np.uint8 and ds["x"].shape[1:] == (16, 16, 1)
    splits = [set(ds[s].tolist()) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert sum(map(len, splits)) == len(ds["y"]) == 1797
    for s in ("train", "test"):
        assert set(ds["y"][ds[s]].tolist()) == set(range(10))
    again = stratified_split(ds["y"], 7, cfg.val_fraction, cfg.test_fraction)
    assert all((a == ds[s]).all() for a, s in zip(again, ("train", "val", "test")))
    other = stratified_split(ds["y"], 8, cfg.val_fraction, cfg.test_fraction)
    assert not (other[2] == ds["test"]).all()
    before = (tmp_path / "dataset.npz").read_bytes()
    _data(config, tmp_path)
    assert (tmp_path / "dataset.npz").read_bytes() == before, "the same data must give the same bytes (cache)"
    assert _calibrate(config, tmp_path)["created"]
    calib = json.loads((tmp_path / "calib.json").read_text())
    assert len(calib["samples"]) == 50 and {s["label"] for s in calib["samples"]} == set(range(10))
    # The second build verifies, rather than rewrites, the pinned set, and outputs it unchanged.
    assert _calibrate(config, tmp_path)["created"] is False
    assert (tmp_path / "calibration.json").read_bytes() == (tmp_path / "calib.json").read_bytes()


def test_calibration_set_that_no_longer_matches_is_refused(tmp_path):
    config = _config(tmp_path, "data.image_size=16", "data.calibration_samples=50")
    _data(config, tmp_path)
    _calibrate(config, tmp_path)
    pinned = (tmp_path / "calib.json").read_text()
    calib = json.loads(pinned)
    calib["samples"][0]["sha256"] = "0" * 64
    (tmp_path / "calib.json").write_text(json.dumps(calib))
    with pytest.raises(InputError, match="different content") as err:
        _calibrate(config, tmp_path)
    assert "point data.calibration_file at a new path" in str(err.value)  # the fix for changed data comes first
    (tmp_path / "calib.json").write_text(pinned)
    other = _config(tmp_path, "data.image_size=16", "data.calibration_samples=50", "build.seed=1")
    _data(other, tmp_path)
    with pytest.raises(InputError, match="not in this build's train split"):
        _calibrate(other, tmp_path)  # another seed, another split


def test_a_calibration_file_that_is_a_directory_is_refused_before_anything_runs(tmp_path):
    config = _config(tmp_path, calib="")
    with pytest.raises(InputError, match="must name a file; .* is a directory"):
        calibration.STAGE.external(config)


def _sign_subset(tmp_path, per_class=12, classes=("0", "1", "7")):
    root = tmp_path / "signs"
    for c in classes:
        (root / c).mkdir(parents=True)
        for p in sorted((SIGNS / c).iterdir())[:per_class]:
            shutil.copy(p, root / c / p.name)
    return root


def test_image_folder_of_real_photos(tmp_path):
    root = _sign_subset(tmp_path)
    big = SIGNS / "7" / "IMG_5874.JPG"  # one of the three 3024x3024 photos: resized like the rest
    shutil.copy(big, root / "7" / big.name)
    sets = [f'data.source="{root}"', "data.channels=3", "data.calibration_samples=10"]
    rec = _data(_config(tmp_path, *sets, "data.image_size=24"), tmp_path)
    ds = load_dataset(tmp_path / "dataset.npz")
    assert rec["class_names"] == ["0", "1", "7"] and ds["x"].shape[1:] == (24, 24, 3)
    assert ds["ids"][0].startswith("0/")
    with pytest.raises(InputError, match="IMG_5874"):
        _data(_config(tmp_path, *sets, 'data.mixed_sizes="refuse"', "data.image_size=100"), tmp_path)


def test_image_folder_errors_name_the_problem(tmp_path):
    root = _sign_subset(tmp_path, per_class=4)
    (root / "1" / "notes.jpg").write_text("not an image")
    config = _config(tmp_path, f'data.source="{root}"', "data.image_size=16")
    with pytest.raises(InputError, match="notes.jpg"):
        _data(config, tmp_path)
    (root / "1" / "notes.jpg").unlink()
    (root / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        _data(config, tmp_path)


@pytest.mark.parametrize("y, message", [
    (np.array([0, 1, 2, 5] * 10), "2 of those 6 ids have no samples"),
    (np.array([0, 1, -1, 2] * 10), "must be class ids"),
    (np.array([0, 1, np.nan, 2] * 10), "NaN"),
    (np.array([0.5, 1, 2, 0] * 10), "integer"),
])
def test_npz_labels(tmp_path, y, message):
    x = np.random.RandomState(0).randint(0, 255, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    config = _config(tmp_path, f'data.source="{tmp_path / "d.npz"}"', "data.image_size=8")
    with pytest.raises(InputError, match=message):
        _data(config, tmp_path)


def test_a_16_bit_png_keeps_its_contrast(tmp_path):
    from PIL import Image

    root = tmp_path / "deep"
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024)  # 0 .. 64512 over 16 bits
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(ramp).save(root / c / f"{i}.png")  # a uint16 array: a 16-bit PNG (mode I;16)
    config = _config(tmp_path, f'data.source="{root}"', "data.image_size=8")
    _data(config, tmp_path)
    x = load_dataset(tmp_path / "dataset.npz")["x"][0, ..., 0]
    assert x.min() == 0 and x.max() == 252 and len(np.unique(x)) == 64, "16-bit pixels must be scaled, not clipped"


def test_the_digits_fingerprint_hashes_the_shipped_file_without_importing_scikit_learn(monkeypatch):
    import subprocess
    import sys

    from pipeline.data import sources

    code = ("import sys; from pipeline.data.sources import source_fingerprint; "
            "print(source_fingerprint('digits'), 'sklearn' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fingerprint, imported = proc.stdout.split()
    assert imported == "False"
    assert sources.source_fingerprint("digits") == fingerprint
    monkeypatch.setattr(sources, "DIGITS_FILE", "sklearn/datasets/data/iris.csv")  # other bytes: another fingerprint
    assert sources.source_fingerprint("digits") != fingerprint
    monkeypatch.setattr(sources, "DIGITS_FILE", "sklearn/datasets/data/no-such-file.csv.gz")
    with pytest.raises(InputError, match="scikit-learn ships"):
        sources.source_fingerprint("digits")
