"""`edgebuild validate MODEL.tflite --data TEST_SET` on model files made without edgebuild: plain
TensorFlow trained on digits and converted with tf.lite.TFLiteConverter by tests/outside/make_models.py
(float32, int8 and uint8 inputs, the [-1, 1] input convention), validated on the host and under qemu,
and gated against each other."""

import json

import numpy as np
import pytest

from conftest import MINUS_ONE_TO_ONE, edgebuild, gate_failed_only, has_vnni, validate
from pipeline.engine.fsutil import sha256_file

@pytest.mark.parametrize("model", ["int8", "uint8", "float"])
def test_model_file_validated_on_host_and_emulated_target(outside, cache_dir, tmp_path, model):
    out, expected = outside
    proc = validate(out, cache_dir, f"{model}.tflite", "--set", 'validate.targets=["rpi5-litert"]',
                    "--out", str(tmp_path / "v"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert manifest["kind"] == "validation" and manifest["built_here"] is False
    assert not {"train", "qat", "calibration"} & set(manifest) and set(manifest["stages"]) == {
        "model", "resources", "testset", "host", "target:rpi5-litert"}
    art = manifest["artifacts"]["model"]
    assert art["sha256"] == sha256_file(out / f"{model}.tflite") == sha256_file(tmp_path / "v" / art["path"])
    assert art["input"]["dtype"] == expected[model]["input_dtype"]
    if model != "float":  # the file's own quantization, not ours
        assert [art["input"]["scale"], art["input"]["zero_point"]] == pytest.approx(expected[model]["input_quantization"])
    # Accuracy equals what TensorFlow's own interpreter gives on the same test set (make_models.py).
    host = manifest["metrics"]["host"]
    assert host["accuracy"] == pytest.approx(expected[model]["accuracy"], abs=1e-6) and host["samples"] == 300
    target = manifest["metrics"]["targets"]["rpi5-litert"]
    assert target["machine"] == "aarch64" and target["samples"] == 300
    assert target["accuracy"] == pytest.approx(expected[model]["accuracy"], abs=1e-6)
    assert target["top1_agreement"] == 1.0 and 0.0 <= target["bitexact_fraction"] <= 1.0
    if model != "float":  # the same LiteRT version on aarch64 and x86: integer outputs bit-identical
        assert target["bitexact_fraction"] == 1.0 and target["max_abs_diff"] == 0
    raw = np.load(tmp_path / "v" / "target-rpi5-litert.npz")["outputs"]
    assert raw.dtype.name == art["output"]["dtype"] and raw.shape == (300, 10)
    assert manifest["gate"]["verdict"] == "pass"
    assert (tmp_path / "v" / "report.html").read_text().count("not built here") == 1


def test_new_model_file_gated_against_the_released_one(outside, cache_dir, tmp_path):
    out, expected = outside
    assert expected["worse_int8"]["accuracy"] < expected["int8"]["accuracy"] - 0.05
    no_targets = ("--set", "validate.targets=[]")
    released = validate(out, cache_dir, "int8.tflite", *no_targets, "--out", str(tmp_path / "released"))
    assert released.returncode == 0, released.stderr
    baseline = tmp_path / "released" / "manifest.json"

    same = validate(out, cache_dir, "int8.tflite", *no_targets, "--out", str(tmp_path / "again"),
                    "--baseline", str(baseline), "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    assert json.loads(same.stdout)["gate"]["baseline"] == "released"

    worse = validate(out, cache_dir, "worse_int8.tflite", *no_targets, "--out", str(tmp_path / "worse"),
                     "--baseline", str(baseline), "--junit", str(tmp_path / "junit.xml"))
    assert worse.returncode == 1, worse.stdout + worse.stderr
    failed = {c["name"] for c in json.loads((tmp_path / "worse" / "manifest.json").read_text())["gate"]["checks"]
              if not c["passed"]}
    assert "accuracy drop vs baseline" in failed and "regressed samples baseline->model" in failed
    assert "accuracy drop vs baseline" in (tmp_path / "junit.xml").read_text()

    # A baseline measured on another test set is refused, not compared.
    with np.load(out / "test.npz") as f:
        np.savez(tmp_path / "other.npz", x=f["x"][:200], y=f["y"][:200], class_names=f["class_names"])
    other = edgebuild("validate", str(out / "int8.tflite"), "--data", str(tmp_path / "other.npz"), "--set",
                      MINUS_ONE_TO_ONE, *no_targets, "--out", str(tmp_path / "other"), "--baseline", str(baseline),
                      env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert other.returncode == 3 and "same test set" in other.stderr, other.stderr


def test_models_a_runtime_refuses_are_one_line_errors(outside, cache_dir, tmp_path):
    out, _ = outside
    flex = validate(out, cache_dir, "flex.tflite", "--out", str(tmp_path / "flex"))
    assert flex.returncode == 3 and "FlexMatrixDeterminant" in flex.stderr, flex.stderr
    assert "refuses the model" in flex.stderr and "Traceback" not in flex.stderr
    assert not (tmp_path / "flex" / "manifest.json").exists()

    (tmp_path / "cut.tflite").write_bytes((out / "int8.tflite").read_bytes()[:1000])
    (tmp_path / "notes.tflite").write_text("not a model\n")
    for name, says in (("cut.tflite", "truncated or corrupt"), ("notes.tflite", "not one")):
        proc = edgebuild("validate", str(tmp_path / name), "--data", str(out / "test.npz"))
        assert proc.returncode == 3 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr

    shape = validate(out, cache_dir, "int8.tflite", "--set", "data.image_size=16", "--out", str(tmp_path / "shape"))
    assert shape.returncode == 3 and "data.image_size = 8" in shape.stderr, shape.stderr


def test_a_target_runtime_that_refuses_the_model_is_recorded_not_raised(outside, cache_dir, tmp_path):
    """The Flex model under qemu: the emulated LiteRT's own refusal comes back as one line; the target
    stage records it (its gate check fails) instead of failing the validation."""
    from pipeline.device import environment, fanout, targets
    from pipeline.engine import config as config_mod
    from pipeline.engine.errors import ModelRefused
    from pipeline.engine.stage import run_here
    from pipeline.release import gate
    from pipeline.stages import target as target_stage
    from pipeline.stages import testset

    out, _ = outside
    rpi5 = targets.load_target("rpi5-litert")
    root = environment.setup(rpi5, cache_dir, log=lambda _: None)
    x = np.zeros((3, 8, 8, 1), np.float32)
    with pytest.raises(ModelRefused, match="FlexMatrixDeterminant") as refused:
        fanout.run_sharded(rpi5, root, out / "flex.tflite", x, tmp_path / "work", shards=1)
    assert "target rpi5-litert (ai-edge-litert 2.3.0)" in str(refused.value) and "\n" not in refused.value.reason

    config = config_mod.load(None, [f"validate.model={str(out / 'flex.tflite')!r}", "data.image_size=8",
                                    f"data.test_source={str(out / 'test.npz')!r}", MINUS_ONE_TO_ONE,
                                    'validate.targets=["rpi5-litert"]'])
    run_here(testset.STAGE, config, {}, tmp_path)
    (tmp_path / "model.tflite").write_bytes((out / "flex.tflite").read_bytes())
    np.savez(tmp_path / "predictions.npz", host_output=np.zeros((300, 10), np.float32))  # the host refuses it too
    stage = target_stage.stages(config)[0]
    inputs = {n: tmp_path / n for n in stage.inputs}
    record = run_here(stage, config, inputs, tmp_path, cache_dir=str(cache_dir))
    assert "FlexMatrixDeterminant" in record["refused"] and (tmp_path / "target-rpi5-litert.npz").exists()
    checks = gate._target_checks({"targets": {"rpi5-litert": record}}, config.gate, "")
    assert [(c["name"], c["passed"]) for c in checks] == [("runs on target (rpi5-litert)", False)]


def test_a_target_runtime_that_crashes_is_that_targets_failure_and_the_others_run(outside, cache_dir, tmp_path):
    """Issue 35 item 18, on the real runtimes: tflite-runtime 2.14 (rpi4, under qemu) segfaults running a
    token/FC-style int8 model made in plain TensorFlow (FULLY_CONNECTED on a 3-D input, with its XNNPACK and
    its builtin kernels alike); LiteRT 2.3 (rpi5) runs it. The crash is rpi4's failing check, with the
    signal and what its reference kernels do; rpi5 is validated as usual; exit 1, not 4."""
    out, expected = outside
    proc = validate(out, cache_dir, "tokens_int8.tflite", "--out", str(tmp_path / "v"), "--set",
                    'validate.targets=["rpi4-bookworm-tflite", "rpi5-litert"]', "--set", "gate.min_int8_accuracy=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    failed = [c for c in m["gate"]["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["runs on target (rpi4-bookworm-tflite)"], failed
    refused = m["metrics"]["targets"]["rpi4-bookworm-tflite"]["refused"]
    assert refused.startswith("the runtime crashed (SIGSEGV") and "its reference kernels run it" in refused, refused
    rpi5 = m["metrics"]["targets"]["rpi5-litert"]
    assert rpi5["top1_agreement"] == 1.0 and rpi5["accuracy"] == pytest.approx(m["metrics"]["host"]["accuracy"])


@pytest.mark.parametrize("model", ["float_nchw", "qdq_nchw"])
def test_onnx_model_file_validated_on_host_and_the_onnxruntime_target(outside, cache_dir, tmp_path, model):
    """An .onnx made outside edgebuild (tf2onnx, channels first; then onnxruntime's own QDQ quantization):
    validate picks the targets that run ONNX (rpi5-onnxruntime, under qemu) and feeds NCHW inputs."""
    out, expected = outside
    proc = validate(out, cache_dir, f"{model}.onnx", "--out", str(tmp_path / "v"))
    # On an x86 host without VNNI the host's onnxruntime and the Raspberry Pi's disagree on 5 of 300 test
    # images of this QDQ model (conftest.has_vnni): the gate must catch it. On a VNNI host both agree.
    saturating = model == "qdq_nchw" and not has_vnni()
    if saturating:
        gate_failed_only(proc, tmp_path / "v" / "manifest.json", ["host/target top-1 agreement (rpi5-onnxruntime)"])
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "v" / "manifest.json").read_text())
    art = manifest["artifacts"]["model"]
    assert art["format"] == "onnx" and art["path"] == "model.onnx" and art["sha256"] == sha256_file(out / f"{model}.onnx")
    assert art["input"]["shape"] == [1, 1, 8, 8] and manifest["input_shape"] == [8, 8, 1]
    host = manifest["metrics"]["host"]
    assert (host["runtime"], host["input_layout"]) == ("onnxruntime", "NCHW")
    assert host["accuracy"] == pytest.approx(expected[model]["accuracy"], abs=1e-6)
    assert set(manifest["metrics"]["targets"]) == {"rpi5-onnxruntime"}
    target = manifest["metrics"]["targets"]["rpi5-onnxruntime"]
    assert target["machine"] == "aarch64" and target["model"] == "model.onnx" and target["samples"] == 300
    if not saturating:
        assert target["accuracy"] == pytest.approx(expected[model]["accuracy"], abs=1e-6)
        assert target["top1_agreement"] == 1.0 and manifest["gate"]["verdict"] == "pass"

    if model == "qdq_nchw":  # a LiteRT target named explicitly refuses the format; the gate fails it
        proc = validate(out, cache_dir, f"{model}.onnx", "--target", "rpi5-litert", "--out", str(tmp_path / "w"))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        refused = json.loads((tmp_path / "w" / "manifest.json").read_text())["metrics"]["targets"]["rpi5-litert"]
        assert "runs .tflite models; this one is .onnx" in refused["refused"]
