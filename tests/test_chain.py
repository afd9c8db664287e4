"""The real chain end to end on a tiny model: the manifest contract, full-integer int8, QAT ranges
in the converted model, TF-backend reload of the QAT layers, reproducible artifacts."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TINY
from pipeline.release import manifest as manifest_mod
from pipeline.device import tflite_info

REQUIRED = [
    "schema_version", "name", "config_sha256", "seed", "class_names",
    "artifacts.int8_tflite.path", "artifacts.int8_tflite.sha256", "artifacts.int8_tflite.bytes",
    "artifacts.float_tflite.path", "artifacts.onnx.path", "artifacts.keras.path",
    "artifacts.int8_tflite.input.dtype", "artifacts.int8_tflite.input.shape",
    "artifacts.int8_tflite.input.scale", "artifacts.int8_tflite.input.zero_point",
    "artifacts.int8_tflite.output.scale", "artifacts.int8_tflite.output.zero_point",
    "artifacts.int8_onnx.path", "artifacts.int8_onnx.input.scale", "artifacts.int8_onnx.input.zero_point",
    "artifacts.int8_onnx.output.scale", "artifacts.int8_onnx.output.zero_point",
    "metrics.onnx_int8.accuracy", "metrics.onnx_int8.per_class", "metrics.onnx_int8.top1_agreement_with_int8_tflite",
    "metrics.float.accuracy", "metrics.float.per_class", "metrics.int8_host.accuracy",
    "metrics.int8_host.per_class", "metrics.onnx.accuracy", "metrics.onnx.per_class",
    "toolchain.python", "toolchain.keras", "toolchain.tensorflow", "toolchain.jax",
    "toolchain.ai_edge_litert", "toolchain.onnx", "toolchain.tf2onnx", "toolchain.onnxruntime",
]


def _get(d, dotted):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_manifest_has_the_public_contract(tiny_build):
    m = tiny_build["manifest"]
    for key in REQUIRED:
        assert _get(m, key) is not None, key
    manifest_mod.read(tiny_build["dir"] / "manifest.json")  # schema version + JSON Schema
    for name, art in m["artifacts"].items():
        path = tiny_build["dir"] / art["path"]
        assert path.stat().st_size == art["bytes"], name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == art["sha256"], name
    for key in ("float", "int8_host", "onnx", "onnx_int8"):
        assert 0.0 <= m["metrics"][key]["accuracy"] <= 1.0
        assert set(m["metrics"][key]["per_class"]) == set(m["class_names"])
    assert "int8" in tiny_build["stdout"] and "gate: PASS" in tiny_build["stdout"]


def test_a_build_leaves_nothing_in_its_temporary_directory(tiny_build):
    """The whole tiny build on every target (onnxruntime, whose import writes $TMPDIR/.ses, under qemu and
    on the host; TFLM; Vela) ran with a TMPDIR of its own: every temporary file stayed in the build's
    staging directories."""
    assert sorted(str(p) for p in tiny_build["tmp"].rglob("*")) == []
    assert "predictions" in tiny_build["manifest"]["artifacts"] and "dataset" in tiny_build["manifest"]["artifacts"]


def test_every_distribution_a_stage_loads_is_declared_in_its_toolchain(tiny_build):
    """A stage's cache key covers the versions of its declared toolchain; a distribution its process
    loaded outside that (and outside what the declared ones require, and the documented UNKEYED set)
    could change its bytes without changing its key."""
    from pipeline.engine.codehash import undeclared

    found = {}
    for path in sorted((tiny_build["dir"] / "records").glob("*.json")):
        record = json.loads(path.read_text())
        extra = undeclared(record["toolchain"], record["key_parts"]["toolchain"])
        if extra:
            found[record["stage"]] = extra
    assert not found, f"loaded but not declared in the stage's toolchain: {found}"


def test_accuracies_agree_across_runtimes(tiny_build):
    m = tiny_build["manifest"]["metrics"]
    assert m["float"]["accuracy"] > 0.8  # the tiny model really learned
    assert abs(m["onnx"]["accuracy"] - m["float"]["accuracy"]) <= 0.005
    assert abs(m["int8_host"]["accuracy"] - m["float"]["accuracy"]) <= 0.03


def test_int8_model_is_full_integer(tiny_build):
    from ai_edge_litert.interpreter import Interpreter

    path = tiny_build["dir"] / "model_int8.tflite"
    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    dtypes = {t["index"]: t["dtype"] for t in interp.get_tensor_details()}
    for op in interp._get_ops_details():
        used = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        assert all(dtypes[i] in (np.int8, np.int32) for i in used), op["op_name"]
    info = tflite_info.describe(path)
    assert info["float_ops"] == [] and info["custom_ops"] == []
    assert {op["name"] for op in info["ops"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    assert tiny_build["manifest"]["artifacts"]["int8_tflite"]["float_ops"] == []


def test_int8_onnx_is_qdq_with_the_tflite_scales_and_agrees_with_it(tiny_build):
    """The int8 ONNX carries the int8 .tflite's quantization (QDQ pairs), runs in onnxruntime, and gives
    the int8 .tflite's answers: accuracy within 0.5 pp, top-1 agreement >= 99%, recomputed here from
    the two files, not read from the manifest."""
    import onnx

    from pipeline.data import preprocess
    from pipeline.data.splits import load_dataset
    from pipeline.device import onnx_info
    from pipeline.device.runtimes import run_onnx, run_tflite
    from pipeline.engine import config as config_mod

    d, m = tiny_build["dir"], tiny_build["manifest"]
    ops = {n.op_type for n in onnx.load(str(d / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    tfl, onx = tflite_info.describe(d / "model_int8.tflite"), onnx_info.describe(d / "model_int8.onnx")
    for side in ("inputs", "outputs"):
        keys = ("dtype", "scale", "zero_point")
        assert [onx[side][0][k] for k in keys] == [tfl[side][0][k] for k in keys]
        assert m["artifacts"]["int8_onnx"][side[:-1]]["scale"] == tfl[side][0]["scale"]
    data = load_dataset(d / "dataset.npz")
    images, labels = data["x"][data["test"]], data["y"][data["test"]]
    x = preprocess.to_input(images, config_mod.load(TINY).preprocess, tfl["inputs"][0])
    a, b = run_tflite(d / "model_int8.tflite", x), run_onnx(d / "model_int8.onnx", x)
    assert a.dtype == b.dtype == np.int8
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.99
    assert abs((a.argmax(1) == labels).mean() - (b.argmax(1) == labels).mean()) <= 0.005
    o = m["metrics"]["onnx_int8"]
    assert o["accuracy"] == pytest.approx((b.argmax(1) == labels).mean(), abs=1e-6)
    assert o["top1_agreement_with_int8_tflite"] == pytest.approx((a.argmax(1) == b.argmax(1)).mean(), abs=1e-6)
    assert o["bitexact_fraction_vs_int8_tflite"] == pytest.approx((a == b).mean(), abs=1e-6)
    names = [c["name"] for c in m["gate"]["checks"]]
    assert {"int8 ONNX accuracy (host)", "int8 ONNX/TFLite top-1 agreement", "regressed samples float->int8 ONNX"} <= set(names)


@pytest.fixture(scope="module")
def tf_reload(tiny_build, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "tf_helper.py"), str(tiny_build["dir"] / "qat.keras"),
         str(tiny_build["dir"] / "dataset.npz"), str(out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


def test_qat_layers_survive_save_load_under_tensorflow(tiny_build, tf_reload):
    import keras

    from pipeline.model import qat

    report, out = tf_reload
    assert report["backend"] == "tensorflow"
    assert report["layers"].count("ActivationQuantizer") >= 3
    assert "QuantConv2D" in report["layers"] and "QuantDense" in report["layers"]
    expected = tiny_build["manifest"]["qat"]["ranges"]
    assert set(report["ranges"]) == set(expected)
    for name, rng in expected.items():
        assert report["ranges"][name] == pytest.approx(rng), name
    # Same file, JAX backend (this process): the two backends compute the same fake-quantized model.
    model = keras.models.load_model(tiny_build["dir"] / "qat.keras")
    data = np.load(tiny_build["dir"] / "dataset.npz")
    jax_logits = model.predict(data["x"][data["test"]].astype("float32") / 255.0, verbose=0)
    tf_logits = np.load(out / "tf_logits.npy")
    assert (jax_logits.argmax(1) == tf_logits.argmax(1)).mean() >= 0.99
    assert np.abs(jax_logits - tf_logits).max() < 0.1
    assert keras.backend.backend() == "jax" and qat.ActivationQuantizer


def test_activation_scales_come_from_qat_ranges_not_calibration(tiny_build, tf_reload):
    report, _ = tf_reload
    # Converting with calibration data scaled by 0.25 changes no activation scale...
    assert report["scales"]["a"] == pytest.approx(report["scales"]["b"], rel=1e-6)
    # ...and every trained range appears as a tensor scale (max - min) / 255.
    for name, (lo, hi) in tiny_build["manifest"]["qat"]["ranges"].items():
        expected = (max(hi, lo + 1e-6) - min(lo, 0.0)) / 255.0
        assert any(abs(s - expected) <= 1e-6 * max(1.0, expected) + 1e-9 for s in report["scales"]["a"]), name
    out_q = tiny_build["manifest"]["artifacts"]["int8_tflite"]["output"]
    lo, hi = tiny_build["manifest"]["qat"]["ranges"]["logits/logits_out_quant"]
    assert out_q["scale"] == pytest.approx((hi - lo) / 255.0, rel=1e-5)


# Same seed, fresh cache, byte-identical artifacts (int8 and float .tflite, both ONNX files, float.keras):
# checked by tests/test_cache.py::test_sigkill_mid_stage_leaves_nothing_half_written, whose final build runs
# every stage again in a fresh cache.
