"""Feature models end to end: a keyword spotter built from keywords synthesized here (espeak-ng, MFCCs),
on one target of each runtime family, and a keyword model made outside edgebuild (plain TensorFlow and its converter)
validated on float and on pre-quantized int8 features, matching TensorFlow's own interpreter."""

import json
import subprocess
import sys

import pytest

import featuredata
from conftest import REPO, _shared, edgebuild


def _validate(model, data, out, cache_dir, *args, targets=()):
    """`edgebuild validate MODEL --data DATA --out OUT` on the host and on `targets` only: `--target` adds to
    validate.targets, which the repository's edgebuild.toml (the tests' working directory) sets to every
    shipped target, so it is emptied first."""
    named = [a for t in targets for a in ("--target", t)]
    return edgebuild("--quiet", "validate", str(model), "--data", str(data), "--out", str(out),
                     "--set", "validate.targets=[]", *named, *args, env={"EDGEBUILD_CACHE": str(cache_dir)})


def _feature_file(tmp_path_factory, make, name):
    """A feature data file made once per run by `make` (tests/featuredata.py), shared by the workers."""
    out, lock = _shared(tmp_path_factory, "features")
    with lock:
        out.mkdir(exist_ok=True)
        return make(out / name)


@pytest.fixture(scope="module")
def keywords(tmp_path_factory):
    return _feature_file(tmp_path_factory, featuredata.keywords, "keywords.npz")


# The feature builds run on one target of each runtime family: LiteRT and onnxruntime under qemu, TFLM and the NPU.
# rpi4's tflite-runtime runs a .tflite as rpi5's LiteRT does; the models made outside are validated on it below.
# One emulated process a target (validate.shards = 1: tests/tiny.toml says why).
ONE_OF_EACH = ["rpi5-litert", "rpi5-onnxruntime", "cortex-m-tflm", "ethos-u55-128"]


def test_a_keyword_spotter_builds_from_synthesized_speech_and_runs_on_each_kind_of_target(keywords, tmp_path,
                                                                                        cache_dir):
    proc = edgebuild(
        "--quiet", "build", "--set", "build.name='kws'", "--set", f"build.out_dir={str(tmp_path)!r}",
        "--set", f"data.source={str(keywords)!r}", "--set", f"data.calibration_file={str(tmp_path / 'calib.json')!r}",
        "--set", "data.calibration_samples=60", "--set", "train.recipe='ds_cnn_kws'", "--set", "train.width=4",
        "--set", "train.epochs=15", "--set", "train.learning_rate=0.01", "--set", "qat.epochs=2",
        "--set", f"validate.targets={json.dumps(ONE_OF_EACH)}", "--set", "validate.shards=1", "--set",
        "gate.min_int8_accuracy=0.8", "--set", "task.top_k=2", env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "top-2 accuracy: float" in proc.stdout
    m = json.loads((tmp_path / "kws" / "manifest.json").read_text())
    assert m["input_shape"] == [49, 10] and m["preprocess"]["form"] == "tensor"
    art = m["artifacts"]["int8_tflite"]
    assert art["input"]["dtype"] == "int8" and art["input"]["shape"] == [1, 49, 10] and not art["float_ops"]
    assert "from_feature" in art["input"] and "feature * scale[c] + offset[c]" in m["preprocessing"]
    assert m["test_set"]["groups"] * 2 == m["test_set"]["size"]  # an utterance's two noisy copies stay together
    metrics = m["metrics"]
    assert metrics["int8_host"]["accuracy"] >= 0.8 and metrics["onnx_int8"]["accuracy"] >= 0.8
    assert sorted(metrics["targets"]) == sorted(ONE_OF_EACH)
    for name, t in metrics["targets"].items():
        assert not t.get("refused") and t["top1_agreement"] >= 0.99, (name, t)
    for record in (metrics["float"], metrics["int8_host"], metrics["onnx_int8"], *metrics["targets"].values()):
        assert record["top_k"]["k"] == 2 and record["accuracy"] <= record["top_k"]["accuracy"] <= 1.0
    assert m["gate"]["verdict"] == "pass"
    validated = _validate_built(tmp_path / "kws", tmp_path, cache_dir)
    assert validated["accuracy"] == metrics["int8_host"]["accuracy"]
    assert validated["top1"] == metrics["int8_host"]["top1"]


def _validate_built(build, tmp_path, cache_dir, *sets):
    """`edgebuild validate` of a build's own int8 .tflite on its test split (saved as a user would save
    it: x, y, class_names, group): the host's record (on the host only; the build ran the targets)."""
    import numpy as np

    with np.load(build / "dataset.npz") as d:
        test = d["test"]
        extra = {"group": d["groups"][test]} if "groups" in d.files else {}
        np.savez(tmp_path / "test-split.npz", x=d["x"][test], y=d["y"][test], class_names=d["class_names"], **extra)
    proc = _validate(build / "model_int8.tflite", tmp_path / "test-split.npz", tmp_path / "validated", cache_dir, *sets)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "validated" / "manifest.json").read_text())["metrics"]["host"]


def _made_outside(tmp_path_factory, name, script, data):
    """(directory, expected.json) of a tests/outside/ script run once per run on `data`, shared by the workers."""
    out, lock = _shared(tmp_path_factory, name)
    with lock:
        if not (out / "expected.json").exists():
            proc = subprocess.run([sys.executable, str(REPO / "tests" / "outside" / script), str(data), str(out)],
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "expected.json").read_text())


@pytest.fixture(scope="module")
def outside_kws(keywords, tmp_path_factory):
    return _made_outside(tmp_path_factory, "outside-kws", "make_feature_models.py", keywords)


@pytest.mark.parametrize("features", ["test.npz", "test_int8.npz"])
def test_a_keyword_model_made_outside_validates_like_tensorflows_interpreter(outside_kws, features, tmp_path, cache_dir):
    out, expected = outside_kws
    proc = _validate(out / "kws_int8.tflite", out / features, tmp_path / "v", cache_dir,
                     targets=("cortex-m-tflm", "rpi4-bookworm-tflite"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    host = m["metrics"]["host"]
    assert host["accuracy"] == round(expected["kws_int8.tflite"], 6)
    assert host["top1"] == expected["top1"]  # sample by sample, TensorFlow's interpreter's answers
    assert sorted(m["metrics"]["targets"]) == ["cortex-m-tflm", "rpi4-bookworm-tflite"]
    for name in ("cortex-m-tflm", "rpi4-bookworm-tflite"):
        assert m["metrics"]["targets"][name]["top1_agreement"] == 1.0
    if features == "test_int8.npz":
        assert "int8 features are fed unchanged" in m["preprocessing"]


def test_integer_features_of_another_dtype_than_the_model_input_are_refused(outside_kws, tmp_path, cache_dir):
    import numpy as np

    out, _ = outside_kws
    with np.load(out / "test_int8.npz") as f:
        np.savez(tmp_path / "int16.npz", x=f["x"].astype(np.int16), y=f["y"], class_names=f["class_names"])
    proc = edgebuild("--quiet", "validate", str(out / "kws_int8.tflite"), "--data", str(tmp_path / "int16.npz"),
                     "--out", str(tmp_path / "v"), env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "integer features must be in the model's input dtype" in line and "x is int16" in line, line
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def machine_sounds(tmp_path_factory):
    return _feature_file(tmp_path_factory, featuredata.machine_sounds, "machine.npz")


def test_an_anomaly_detector_builds_from_synthetic_machine_sounds_and_runs_on_each_kind_of_target(machine_sounds,
                                                                                                  tmp_path, cache_dir):
    import numpy as np

    proc = edgebuild(
        "--quiet", "build", "--set", "build.name='machine'", "--set", f"build.out_dir={str(tmp_path)!r}",
        "--set", "task.kind='anomaly'", "--set", f"data.source={str(machine_sounds)!r}",
        "--set", f"data.calibration_file={str(tmp_path / 'calib.json')!r}", "--set", "data.calibration_samples=100",
        "--set", "train.recipe='autoencoder'", "--set", "train.width=8", "--set", "train.epochs=30",
        "--set", "qat.epochs=2", "--set", f"validate.targets={json.dumps(ONE_OF_EACH)}", "--set", "validate.shards=1",
        "--set", "gate.min_auc=0.8",
        env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    build = tmp_path / "machine"
    m = json.loads((build / "manifest.json").read_text())
    assert m["config"]["task"]["kind"] == "anomaly" and m["input_shape"] == [640]
    art = m["artifacts"]["int8_tflite"]
    assert art["input"]["shape"] == art["output"]["shape"] == [1, 640] and art["output"]["dtype"] == "int8"
    metrics = m["metrics"]
    for name in ("float", "int8_host", "onnx", "onnx_int8"):
        assert metrics[name]["scored_by"] == "clip" and metrics[name]["auc"] >= 0.8, (name, metrics[name])
        assert "accuracy" not in metrics[name]
    assert metrics["int8_host"]["clips"] == m["test_set"]["groups"]
    assert sorted(metrics["targets"]) == sorted(ONE_OF_EACH)
    for name, t in metrics["targets"].items():
        assert abs(t["auc_vs_host"]) <= 0.01 and t["score_correlation"] >= 0.99, (name, t)
        assert "top1_agreement" not in t
    with np.load(build / "predictions.npz") as pred:  # the scores behind the figures, per window
        assert len(pred["int8_host_scores"]) == m["splits"]["test"] and "groups" in pred.files
    checks = {c["name"] for c in m["gate"]["checks"]}
    assert {"int8 AUC (host)", "int8 AUC drop vs float", "host/target score correlation (cortex-m-tflm)"} <= checks
    assert m["gate"]["verdict"] == "pass"
    report = (build / "report.html").read_text()
    assert 'id="roc"' in report and 'id="confusion"' not in report
    validated = _validate_built(build, tmp_path, cache_dir, "--set", "task.kind='anomaly'")
    assert (validated["auc"], validated["pauc"]) == (metrics["int8_host"]["auc"], metrics["int8_host"]["pauc"])


@pytest.fixture(scope="module")
def outside_anomaly(machine_sounds, tmp_path_factory):
    return _made_outside(tmp_path_factory, "outside-anomaly", "make_anomaly_model.py", machine_sounds)


def test_an_anomaly_model_made_outside_validates_like_tensorflows_interpreter(outside_anomaly, tmp_path, cache_dir):
    out, expected = outside_anomaly
    proc = _validate(out / "anomaly_int8.tflite", out / "test.npz", tmp_path / "v", cache_dir, "--set",
                     "task.kind='anomaly'", targets=("cortex-m-tflm", "rpi4-bookworm-tflite"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    host = m["metrics"]["host"]
    assert host["clips"] == expected["clips"]
    assert host["auc"] == round(expected["auc"], 6) and host["pauc"] == round(expected["pauc"], 6)
    assert sorted(m["metrics"]["targets"]) == ["cortex-m-tflm", "rpi4-bookworm-tflite"]
    for name in ("cortex-m-tflm", "rpi4-bookworm-tflite"):
        assert m["metrics"]["targets"][name]["score_correlation"] >= 0.99


def test_an_anomaly_baseline_of_another_task_is_refused(outside_anomaly, outside_kws, tmp_path, cache_dir):
    out, _ = outside_anomaly
    kws_out, _ = outside_kws
    first = _validate(kws_out / "kws_int8.tflite", kws_out / "test.npz", tmp_path / "kws", cache_dir,
                      targets=("cortex-m-tflm",))
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    proc = _validate(out / "anomaly_int8.tflite", out / "test.npz", tmp_path / "v", cache_dir, "--set",
                     "task.kind='anomaly'", "--baseline", str(tmp_path / "kws" / "manifest.json"),
                     targets=("cortex-m-tflm",))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "a baseline must be of the same task; the baseline was made with task.kind = 'classification'" in line, line


def _vibration(path, seed=0):
    """Sensor windows (N, 64, 3): three classes of dominant frequency on three axes, with noise; 8 windows
    per recording (the group)."""
    import numpy as np

    rng = np.random.RandomState(seed)
    t = np.arange(64) / 64.0
    x, y, group = [], [], []
    for recording in range(60):
        label = recording % 3
        freq = (3.0, 7.0, 12.0)[label] * rng.uniform(0.9, 1.1)
        for w in range(8):
            phase = rng.uniform(0, 2 * np.pi, 3)
            x.append(np.sin(2 * np.pi * freq * t[:, None] + phase) + rng.normal(0, 0.3, (64, 3)))
            y.append(label)
            group.append(f"rec{recording}")
    np.savez(path, x=np.asarray(x, np.float32), y=np.asarray(y), class_names=np.asarray(["idle", "walk", "run"]),
             group=np.asarray(group))
    return path


def test_a_conv1d_sensor_model_goes_through_qat_to_full_integer_int8(tmp_path, cache_dir):
    source = _vibration(tmp_path / "vibration.npz")
    proc = edgebuild(
        "--quiet", "build", "--set", "build.name='vib'", "--set", f"build.out_dir={str(tmp_path)!r}",
        "--set", f"data.source={str(source)!r}", "--set", f"data.calibration_file={str(tmp_path / 'calib.json')!r}",
        "--set", "data.calibration_samples=60", "--set", "train.recipe='tests.user_models.sensor_models:conv1d'",
        "--set", "train.epochs=15", "--set", "train.learning_rate=0.01", "--set", "qat.epochs=2",
        "--set", "validate.targets=['cortex-m-tflm']", "--set", "gate.min_int8_accuracy=0.8",
        env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "vib" / "manifest.json").read_text())
    art = m["artifacts"]["int8_tflite"]
    assert m["artifacts"]["int8_tflite"]["quantization"] == "qat" and not art["float_ops"]
    assert art["input"]["shape"] == [1, 64, 3] and art["input"]["dtype"] == "int8"
    assert any("conv1d" in name for name in m["qat"]["ranges"])
    assert m["metrics"]["int8_host"]["accuracy"] >= 0.8
    assert m["metrics"]["targets"]["cortex-m-tflm"]["top1_agreement"] >= 0.99
