"""data stage: real sources, deterministic stratified split, a pinned calibration set."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from conftest import SIGNS
from pipeline.config import DataConfig
from pipeline.errors import InputError
from pipeline.stages import data


def test_digits_split_is_deterministic_stratified_and_disjoint(tmp_path):
    cfg = DataConfig(image_size=16, calibration_samples=50)
    rec = data.run(cfg, 7, tmp_path / "calib.json", tmp_path)
    ds = data.load_dataset(tmp_path / "dataset.npz")
    assert ds["x"].dtype == np.uint8 and ds["x"].shape[1:] == (16, 16, 1)
    splits = [set(ds[s].tolist()) for s in ("train", "val", "test")]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert sum(map(len, splits)) == len(ds["y"]) == 1797
    for s in ("train", "test"):
        assert set(ds["y"][ds[s]].tolist()) == set(range(10))
    again = data.stratified_split(ds["y"], 7, cfg.val_fraction, cfg.test_fraction)
    assert all((a == ds[s]).all() for a, s in zip(again, ("train", "val", "test")))
    other = data.stratified_split(ds["y"], 8, cfg.val_fraction, cfg.test_fraction)
    assert not (other[2] == ds["test"]).all()
    calib = json.loads((tmp_path / "calib.json").read_text())
    assert rec["calibration"]["created"] and len(calib["samples"]) == 50
    assert {s["label"] for s in calib["samples"]} == set(range(10))
    # The second build verifies, rather than rewrites, the pinned set.
    assert data.run(cfg, 7, tmp_path / "calib.json", tmp_path)["calibration"]["created"] is False


def test_calibration_set_that_no_longer_matches_is_refused(tmp_path):
    cfg = DataConfig(image_size=16, calibration_samples=50)
    data.run(cfg, 0, tmp_path / "calib.json", tmp_path)
    calib = json.loads((tmp_path / "calib.json").read_text())
    calib["samples"][0]["sha256"] = "0" * 64
    (tmp_path / "calib.json").write_text(json.dumps(calib))
    with pytest.raises(InputError, match="different content") as err:
        data.run(cfg, 0, tmp_path / "calib.json", tmp_path)
    assert "point data.calibration_file at a new path" in str(err.value)  # the fix for changed data comes first
    with pytest.raises(InputError, match="not in this build's train split"):
        data.run(cfg, 1, tmp_path / "calib.json", tmp_path)  # another seed, another split


def _sign_subset(tmp_path, per_class=12, classes=("0", "1", "7")):
    root = tmp_path / "signs"
    for c in classes:
        (root / c).mkdir(parents=True)
        for p in sorted((SIGNS / c).iterdir())[:per_class]:
            shutil.copy(p, root / c / p.name)
    return root


@pytest.mark.skipif(not SIGNS.is_dir(), reason="shared/datasets/sign-language-digits is not beside the repo")
def test_image_folder_of_real_photos(tmp_path):
    root = _sign_subset(tmp_path)
    big = SIGNS / "7" / "IMG_5874.JPG"
    if big.exists():  # one of the three 3024x3024 photos: resized like the rest
        shutil.copy(big, root / "7" / big.name)
    cfg = DataConfig(source=str(root), image_size=24, channels=3, calibration_samples=10)
    rec = data.run(cfg, 0, tmp_path / "calib.json", tmp_path)
    ds = data.load_dataset(tmp_path / "dataset.npz")
    assert rec["class_names"] == ["0", "1", "7"] and ds["x"].shape[1:] == (24, 24, 3)
    assert ds["ids"][0].startswith("0/")
    refuse = replace(cfg, mixed_sizes="refuse", image_size=100)
    if big.exists():
        with pytest.raises(InputError, match="IMG_5874"):
            data.run(refuse, 0, tmp_path / "c2.json", tmp_path)


@pytest.mark.skipif(not SIGNS.is_dir(), reason="shared/datasets/sign-language-digits is not beside the repo")
def test_image_folder_errors_name_the_problem(tmp_path):
    root = _sign_subset(tmp_path, per_class=4)
    (root / "1" / "notes.jpg").write_text("not an image")
    cfg = DataConfig(source=str(root), image_size=16, calibration_samples=10)
    with pytest.raises(InputError, match="notes.jpg"):
        data.run(cfg, 0, tmp_path / "c.json", tmp_path)
    (root / "1" / "notes.jpg").unlink()
    (root / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        data.run(cfg, 0, tmp_path / "c.json", tmp_path)


@pytest.mark.parametrize("y, message", [
    (np.array([0, 1, 2, 5] * 10), None),
    (np.array([0, 1, -1, 2] * 10), "must be in"),
    (np.array([0, 1, np.nan, 2] * 10), "NaN"),
    (np.array([0.5, 1, 2, 0] * 10), "integer"),
])
def test_npz_labels(tmp_path, y, message):
    x = np.random.RandomState(0).randint(0, 255, (40, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cfg = DataConfig(source=str(tmp_path / "d.npz"), image_size=8, calibration_samples=10)
    if message is None:
        with pytest.raises(InputError, match="split must contain every class"):
            data.run(cfg, 0, tmp_path / "c.json", tmp_path)  # classes 3 and 4 have no samples
    else:
        with pytest.raises(InputError, match=message):
            data.run(cfg, 0, tmp_path / "c.json", tmp_path)
