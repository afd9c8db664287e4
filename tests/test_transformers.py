"""A vision transformer end to end: a team's plain-Keras ViT (tests/user_models/vit_models.py: LayerNorm,
MultiHeadAttention, exact and tanh GELU) through `build` with the default QAT: a full-integer int8 .tflite
of the ops LiteRT and TFLM run (BATCH_MATMUL, SOFTMAX, the LayerNorm decomposition, and GELU as
x * sigmoid(1.702 x), qat.gelu's default, since TFLM has no GELU kernel), on a LiteRT board, on TFLM and
as int8 ONNX."""

import json

from conftest import edgebuild


def test_a_team_vit_builds_to_full_integer_int8_and_keeps_its_accuracy_on_litert_and_tflm(tmp_path, cache_dir):
    proc = edgebuild(
        "build", "--set", "build.name='vit'", "--set", f"build.out_dir={str(tmp_path)!r}",
        "--set", f"data.calibration_file={str(tmp_path / 'calib.json')!r}", "--set", "data.image_size=16",
        "--set", "train.recipe='tests.user_models.vit_models:build'", "--set", "train.epochs=15",
        "--set", 'validate.targets=["rpi5-litert", "cortex-m-tflm"]', "--set", "gate.min_int8_accuracy=0.6", env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert (tmp_path / "vit" / "manifest.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    m = json.loads((tmp_path / "vit" / "manifest.json").read_text())
    checks = {c["name"]: c for c in m["gate"]["checks"]}
    # the gate may fail on TFLM's kernel drift alone (below); everything else is published and passes
    failed = sorted(name for name, c in checks.items() if not c["passed"])
    drift = {"host/target top-1 agreement (cortex-m-tflm)", "bit-exact vs x86 twin (cortex-m-tflm)"}
    assert proc.returncode == (1 if failed else 0) and set(failed) <= drift, (failed, proc.stdout[-3000:] + proc.stderr[-3000:])
    qat_log = (tmp_path / "vit" / "logs" / "qat.log").read_text()
    assert "qat: transformer layers, so qat.transformer_learning_rate = 0.0003" in qat_log
    assert "qat: GELU as x * sigmoid(1.702 x) (MUL, LOGISTIC), which TFLM and Vela run too" in qat_log
    assert m["qat"]["learning_rate"] == 0.0003 and m["qat"]["epochs"] == 10 and m["qat"]["gelu"] == "sigmoid"
    art = m["artifacts"]["int8_tflite"]
    ops = {op["name"] for op in art["ops"]}
    assert {"BATCH_MATMUL", "SOFTMAX", "LOGISTIC", "RSQRT", "MEAN", "FULLY_CONNECTED"} <= ops and "GELU" not in ops, ops
    # no run-time shape arithmetic (exported at batch 1), and no float op
    assert not ops & {"SHAPE", "REDUCE_PROD", "DEQUANTIZE", "QUANTIZE"} and not art["float_ops"]
    assert art["input"]["shape"] == [1, 16, 16, 1] and art["input"]["dtype"] == "int8"
    metrics = m["metrics"]
    float_acc, int8_acc = metrics["float"]["accuracy"], metrics["int8_host"]["accuracy"]
    assert float_acc > 0.5 and int8_acc >= 0.98 * float_acc, (float_acc, int8_acc)
    litert = metrics["targets"]["rpi5-litert"]
    assert litert["accuracy"] >= 0.98 * float_acc and litert["top1_agreement"] >= 0.99
    # the microcontroller runs it, in its RAM
    tflm = metrics["targets"]["cortex-m-tflm"]
    assert "runs on target (cortex-m-tflm)" not in checks and checks["RAM (cortex-m-tflm)"]["passed"]
    assert tflm["accuracy"] >= 0.97 * float_acc and tflm["top1_agreement"] >= 0.95
    # both GELU forms reached tf2onnx in the float model: the float and int8 ONNX load and agree with the .tflite
    one = 1 / m["splits"]["test"]  # one test sample
    assert abs(metrics["onnx"]["accuracy"] - float_acc) <= one and metrics["onnx_int8"]["accuracy"] >= 0.98 * float_acc
