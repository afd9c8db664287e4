"""Feature tensors (the tensor form of [preprocess]): an .npz of any rank is read as it is, split by
group, fed through the affine formula or unchanged as integers, and refused in one line when bad."""

import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import preprocess
from pipeline.data.sources import load_source
from pipeline.data.splits import load_splits
from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.stages import data as data_stage
from pipeline.stages.host import check_fits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import featuredata  # noqa: E402


def _config(*sets):
    return config_mod.load(None, list(sets))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _mfcc_like(n=60, classes=3, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % classes
    x = (rng.normal(-20.0, 8.0, (n, 49, 10)) + y[:, None, None]).astype(np.float32)
    return x, y


def test_features_are_read_as_they_are_and_images_still_as_pixels(tmp_path):
    x, y = _mfcc_like()
    loaded = load_source(_npz(tmp_path / "f.npz", x=x, y=y), _config().data)
    assert loaded.x.shape == (60, 49, 10) and loaded.x.dtype == np.float32
    assert np.array_equal(loaded.x, x)  # no resize, no pixel conversion
    pixels = np.random.RandomState(1).rand(20, 8, 8).astype(np.float32)  # floats in 0..1: images, as before
    images = load_source(_npz(tmp_path / "i.npz", x=pixels, y=np.arange(20) % 2), _config().data)
    assert images.x.dtype == np.uint8 and images.x.shape == (20, 32, 32, 1)
    forced = load_source(str(tmp_path / "i.npz"), _config().data, form="tensor")
    assert forced.x.shape == (20, 8, 8) and forced.x.dtype == np.float32


def test_the_tensor_form_is_an_affine_map_per_channel_and_integers_pass_unchanged():
    pp = _config("preprocess.scale=[0.5, 2.0]", "preprocess.offset=[1.0]").preprocess
    x = np.asarray([[[2.0, 3.0]]], np.float32)
    assert preprocess.to_float(x, pp).tolist() == [[[2.0, 7.0]]]
    q = preprocess.to_input(x, pp, {"dtype": "int8", "scale": 0.5, "zero_point": -1})
    assert q.dtype == np.int8 and q.tolist() == [[[3, 13]]]
    raw = np.asarray([[[-7, 100]]], np.int8)
    assert preprocess.to_input(raw, pp, {"dtype": "int8", "scale": 0.1, "zero_point": 0}) is raw
    with pytest.raises(InputError, match="integer features must be in the model's input dtype.*x is int8.*uint8"):
        preprocess.to_input(raw, pp, {"dtype": "uint8", "scale": 0.1, "zero_point": 0})
    with pytest.raises(InputError, match="preprocess.scale' needs one value or one per channel.*3"):
        preprocess.to_float(np.zeros((1, 3), np.float32), pp)
    lo, hi = preprocess.float_range(_config().preprocess, 10, np.asarray([[3.0, 5.0]], np.float32))
    assert (lo, hi) == (0.0, 5.0)  # the features' own range, holding 0


def test_bad_features_are_refused_in_one_line(tmp_path):
    cfg = _config().data
    x, y = _mfcc_like()
    x[4, 2, 3] = np.nan
    x[9, 0, 0] = np.inf
    with pytest.raises(InputError, match=r"NaN or inf at 2 values \(the first at index \(4, 2, 3\)\)"):
        load_source(_npz(tmp_path / "nan.npz", x=x, y=y), cfg)
    x, y = _mfcc_like()
    with pytest.raises(InputError, match="labels are 0 \\(normal\\) and 1 \\(anomaly\\).*also holds 2"):
        load_source(_npz(tmp_path / "a.npz", x=x, y=y), cfg, task="anomaly")
    group = np.asarray([f"clip{i // 2}" for i in range(60)])
    with pytest.raises(InputError, match="one label; group 'clip0' .* has labels 0 and 1"):
        load_source(_npz(tmp_path / "g.npz", x=x, y=y, group=group), cfg)
    with pytest.raises(InputError, match="reads features from an .npz; data.source is the digits images"):
        load_source("digits", cfg, form="tensor")


def test_a_build_refuses_integer_features_and_an_anomaly_split_without_anomalies(tmp_path):
    x, y = _mfcc_like()
    source = _npz(tmp_path / "int.npz", x=np.round(x).astype(np.int8), y=y)
    cfg = _config(f"data.source={source!r}")
    with pytest.raises(InputError, match="needs float features; x is int8"):
        data_stage.run(cfg, {}, tmp_path, None)
    normal = _npz(tmp_path / "normal.npz", x=x, y=np.zeros(60, np.int64))
    cfg = _config(f"data.source={normal!r}", "task.kind='anomaly'", "train.recipe='autoencoder'")
    with pytest.raises(InputError, match="the test split has no anomaly windows"):
        data_stage.run(cfg, {}, tmp_path, None)


def test_splits_keep_each_group_whole_and_the_test_set_fingerprint_covers_groups(tmp_path):
    x, y = _mfcc_like(n=120)
    group = np.asarray([f"utt{i % 40}" for i in range(120)])  # 3 windows per group, one label each (i % 40 % 3)
    y = np.asarray([int(g[3:]) % 3 for g in group])
    source = _npz(tmp_path / "g.npz", x=x, y=y, group=group)
    cfg = _config(f"data.source={source!r}")
    *_, splits, info, groups = load_splits(cfg.data, 0)
    seen = [set(groups[idx].tolist()) for idx in splits]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1:]), "a group on two sides"
    assert sum(map(len, splits)) == 120 and "whole groups" in info["source"]
    first = data_stage.run(cfg, {}, tmp_path, None)["test_set"]
    np.savez(tmp_path / "g.npz", x=x, y=y, group=np.asarray([f"other{g}" for g in group]))
    assert data_stage.run(cfg, {}, tmp_path, None)["test_set"]["fingerprint"] != first["fingerprint"]


def test_a_model_input_of_another_shape_is_named():
    info = {"inputs": [{"shape": [1, 49, 10]}], "outputs": [{"shape": [1, 3]}]}
    check_fits(info, np.zeros((2, 49, 10), np.float32), ["a", "b", "c"], "the model", tensor=True)
    with pytest.raises(InputError, match=r"input is \[1, 49, 10\].*features are \[490\] per sample.*\(N, 49, 10\)"):
        check_fits(info, np.zeros((2, 490), np.float32), ["a", "b", "c"], "the model", tensor=True)


def test_the_keyword_front_end_gives_49_frames_of_10_coefficients():
    t = np.arange(featuredata.RATE) / featuredata.RATE
    features = featuredata.mfcc(np.sin(2 * np.pi * 440.0 * t))
    assert features.shape == (49, 10) and np.isfinite(features).all()
    quiet = featuredata.mfcc(np.zeros(featuredata.RATE) + 1e-4 * np.sin(2 * np.pi * 440.0 * t))
    assert features[:, 0].mean() > quiet[:, 0].mean() + 10  # the energy coefficient follows the loudness


def test_top_k_counts_the_true_class_among_the_k_highest_scores_ties_included():
    from pipeline.release.metrics import top_k_accuracy

    scores = np.asarray([[3, 2, 1], [1, 2, 3], [2, 2, 2], [0, 5, 5]], np.int8)
    labels = np.asarray([0, 0, 1, 0])
    assert top_k_accuracy(scores, labels, 1) == 0.5  # sample 2: a three-way tie counts in
    assert top_k_accuracy(scores, labels, 2) == 0.5
    assert top_k_accuracy(scores, labels, 3) == 1.0
    with pytest.raises(InputError, match="top_k ranks class scores, and a task.kind = 'anomaly' model outputs none"):
        _config("task.kind='anomaly'", "train.recipe='autoencoder'", "task.top_k=5")
    with pytest.raises(InputError, match="the built-in recipe 'small_cnn' is a classifier.*Set train.recipe = 'autoencoder'"):
        _config("task.kind='anomaly'")
    with pytest.raises(InputError, match="autoencoder recipe reconstructs its input.*Set task.kind = 'anomaly'"):
        _config("train.recipe='autoencoder'")
    _config("task.kind='anomaly'", "validate.model='m.tflite'")  # a model file: no recipe is built


def test_an_anomaly_split_trains_on_normal_clips_and_tests_every_anomalous_one(tmp_path):
    x, _ = _mfcc_like(n=120)
    group = np.asarray([f"clip{i // 4}" for i in range(120)])
    y = np.asarray([int(i // 4 >= 24) for i in range(120)])  # 24 normal clips, 6 anomalous, 4 windows each
    source = _npz(tmp_path / "m.npz", x=x, y=y, group=group)
    *_, (train, val, test), info, groups = load_splits(_config(f"data.source={source!r}").data, 0, task="anomaly")
    assert set(y[train]) == set(y[val]) == {0} and (y[test] == 1).sum() == 24
    assert not set(groups[test]) & set(groups[np.concatenate([train, val])])
    assert "every anomalous one in the test set" in info["source"]


def test_the_keys_of_the_other_form_are_refused_not_ignored():
    with pytest.raises(InputError, match="pixel_range, mean and std map pixels, and x is read as features"):
        preprocess.check_form(_config("preprocess.pixel_range=[0, 255]").preprocess, tensor=True)
    with pytest.raises(InputError, match="scale and offset map features, and x is read as images"):
        preprocess.check_form(_config("preprocess.scale=[2.0]").preprocess, tensor=False)
    preprocess.check_form(_config("preprocess.scale=[2.0]").preprocess, tensor=True)


def test_a_test_source_sharing_a_clip_with_the_training_data_is_refused(tmp_path):
    x, y = _mfcc_like(n=60)
    group = np.asarray([f"clip{i // 3}" for i in range(60)])
    y = np.asarray([int(g[4:]) % 3 for g in group])
    train = _npz(tmp_path / "train.npz", x=x, y=y, group=group)
    test = _npz(tmp_path / "test.npz", x=x[:9] + 1.0, y=y[:9], group=group[:9])  # other windows of clip0..clip2
    cfg = _config(f"data.source={train!r}", f"data.test_source={test!r}")
    with pytest.raises(InputError, match="must not share a clip \\(group\\) with train/val: 3 of its 3 groups"):
        data_stage.run(cfg, {}, tmp_path, None)


def test_pre_quantized_features_are_scored_against_what_they_stand_for():
    pp = _config("preprocess.scale=[2.0]").preprocess
    tensor = {"dtype": "int8", "scale": 0.5, "zero_point": 1}
    raw = np.asarray([[3, -1]], np.int8)
    assert preprocess.float_input(raw, pp, tensor).tolist() == [[1.0, -1.0]]  # (q - zp) * scale, fed unchanged
    floats = np.asarray([[3.0, -1.0]], np.float32)
    assert preprocess.float_input(floats, pp, tensor).tolist() == [[6.0, -2.0]]  # the float formula


def test_a_changed_feature_sample_is_drawn_as_a_spectrogram_picture():
    import base64
    import io

    from PIL import Image

    from pipeline.release.report import _feature_picture, _thumbnail

    mfcc = np.zeros((49, 10), np.float32)
    mfcc[:, 0] = np.arange(49)  # the energy coefficient rises over time
    picture = _feature_picture(mfcc)
    assert picture.shape == (10, 49, 1) and picture.dtype == np.uint8  # time across, coefficients up
    assert picture[-1, 0, 0] == 0 and picture[-1, -1, 0] == 255  # coefficient 0 at the bottom, scaled to 0..255
    png = Image.open(io.BytesIO(base64.b64decode(_thumbnail(mfcc))))
    assert png.size[0] == 128 and png.mode == "L"
