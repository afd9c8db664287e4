"""The per-layer error report (issue 32 item 2) as a user meets it: a float Keras model and its int8
.tflite made outside edgebuild (tests/outside/make_keras_pair.py: Keras on TensorFlow, the TFLite
converter), one layer's int8 range planted 64 times too wide, validated with `--float`; and the tiny
build's report, where every int8 tensor is compared on the host and each target."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, edgebuild


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "outside" / "make_keras_pair.py"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _validate(pair, model, out, cache_dir, *targets):
    return edgebuild("validate", str(pair / model), "--data", str(pair / "test.npz"), "--float",
                     str(pair / "float.keras"), "--out", str(out), "--set", f"validate.targets={json.dumps(list(targets))}",
                     env={"EDGEBUILD_CACHE": str(cache_dir)})


def test_a_planted_bad_layer_is_named_first_on_the_host_and_on_a_target(pair, tmp_path, cache_dir):
    planted = json.loads((pair / "planted.json").read_text())["layer"]
    proc = _validate(pair, "planted.tflite", tmp_path / "planted", cache_dir, "rpi5-litert")
    manifest = json.loads((tmp_path / "planted" / "manifest.json").read_text())
    # the repository's edgebuild.toml asks 90%: the planted model misses it, and the failure names the layer
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = {c["name"]: c["detail"] for c in manifest["gate"]["checks"] if not c["passed"]}
    assert set(failed) == {"accuracy (host)", "accuracy (rpi5-litert)"}, failed
    assert failed["accuracy (host)"].startswith(f"worst layer: {planted} (SNR ")
    assert f"worst layer: {planted} (SNR " in failed["accuracy (rpi5-litert)"]
    host = manifest["layers"]["host"]
    target = manifest["metrics"]["targets"]["rpi5-litert"]["layers"]
    for report in (host, target):
        assert report["samples"] == 32
        assert report["worst"][0]["layer"] == planted, report["worst"]
        rest = [r["lost_db"] for r in report["tensors"] if r["layer"] != planted and r["lost_db"] is not None]
        assert report["worst"][0]["lost_db"] > max(rest) + 5, report["tensors"]
    assert "qemu" not in target["where"] and target["where"].startswith("rpi5-litert: ai-edge-litert")
    # the float layers of the team's model, matched by name through the converter's fused names
    assert [r["layer"] for r in host["tensors"]] == ["stem_relu", "mix", "squeeze", "flat", "head"]
    assert f"worst layer: {planted}" in proc.stdout
    html = (tmp_path / "planted" / "report.html").read_text()
    assert 'id="layers"' in html and f"<td>{planted}</td>" in html
    bad = next(r for r in host["tensors"] if r["layer"] == planted)

    # the same model with its calibrated range, on the same samples: the layer is as good as the others
    import keras
    import numpy as np

    from pipeline.device import tflite_info
    from pipeline.model import layer_refs

    with np.load(tmp_path / "planted" / "layers.npz") as f:
        x = f["x"]  # the 32 samples, as the model's int8 input (pixel / 255 quantized: exact)
    q = tflite_info.describe(pair / "int8.tflite")["inputs"][0]
    x_float = ((x.astype("float64") - q["zero_point"]) * q["scale"]).astype("float32")
    clean = layer_refs.host_report(keras.models.load_model(pair / "float.keras"), pair / "int8.tflite", x_float, x,
                                   tmp_path / "clean.npz")
    rows = {r["layer"]: r for r in clean["tensors"]}
    assert rows[planted]["snr_db"] > bad["snr_db"] + 20 and rows[planted]["cosine"] > 0.99 > bad["cosine"]
    assert clean["worst"][0]["layer"] != planted or clean["worst"][0]["lost_db"] < 10


def test_float_goes_with_a_tflite_model_file(pair, tmp_path, cache_dir):
    proc = edgebuild("validate", "--float", str(pair / "float.keras"), "--target", "rpi5-litert")
    assert proc.returncode == 2 and "--float goes with a model file" in proc.stderr
    wrong = tmp_path / "float.txt"
    wrong.write_text("not a model")
    proc = edgebuild("validate", str(pair / "int8.tflite"), "--data", str(pair / "test.npz"), "--float", str(wrong),
                     "--out", str(tmp_path / "w"), env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "--float takes the float Keras model" in proc.stderr and "Traceback" not in proc.stderr


def test_the_tiny_build_reports_every_int8_tensor_on_the_host_and_each_tflite_target(tiny_build):
    m = tiny_build["manifest"]
    host = m["layers"]["host"]
    assert [r["layer"] for r in host["tensors"]] == ["relu0", "pool0", "relu1", "pool1", "relu2", "gap", "logits"]
    assert all(r["snr_db"] > 20 and r["cosine"] > 0.99 for r in host["tensors"]), host["tensors"]
    for name, t in m["metrics"]["targets"].items():
        if t["model"].endswith(".onnx"):
            assert "layers" not in t  # no tensors are kept for .onnx
            continue
        assert [r["layer"] for r in t["layers"]["tensors"]] == [r["layer"] for r in host["tensors"]], name
        # the same int8 model: each tensor within a step or two of the host's, so the SNRs are close
        for mine, theirs in zip(t["layers"]["tensors"], host["tensors"]):
            assert abs(mine["snr_db"] - theirs["snr_db"]) < 1.0, (name, mine, theirs)
    assert "per-layer error vs the float model (32 test samples)" in tiny_build["stdout"]
