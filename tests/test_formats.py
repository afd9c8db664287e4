"""export.formats on real builds of the tiny config: TFLite only makes no ONNX anywhere (artifacts,
metrics, gate, report), and an ONNX conversion that fails keeps the TFLite results and fails the gate's
"ONNX export" check with tf2onnx/onnxruntime's reason, and the ONNX target's check with why."""

import json
import shutil

from conftest import TINY, edgebuild


def _build(tiny_build, cache_dir, tmp_path, *sets):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    shutil.copy(tiny_build["out"] / "calib.json", out / "calib.json")
    args = ["--quiet", "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"',
            "--set", f'data.calibration_file="{out}/calib.json"']
    for s in sets:
        args += ["--set", s]
    return edgebuild(*args, env={"EDGEBUILD_CACHE": str(cache_dir)}), out / "tiny"


def test_tflite_only_makes_no_onnx_and_passes(tiny_build, cache_dir, tmp_path):
    proc, d = _build(tiny_build, cache_dir, tmp_path, 'export.formats=["tflite"]', 'validate.targets=["cortex-m-tflm"]')
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = json.loads((d / "manifest.json").read_text())
    assert m["export"] == {"formats": ["tflite"], "made": ["tflite"]}
    assert not list(d.glob("*.onnx")) and {"int8_tflite", "float_tflite"} <= set(m["artifacts"])
    assert not {"onnx", "int8_onnx"} & set(m["artifacts"]) and not {"onnx", "onnx_int8"} & set(m["metrics"])
    assert not [c for c in m["gate"]["checks"] if "ONNX" in c["name"]]
    assert "onnxruntime" not in proc.stdout and "int8_onnx" not in m["resources"]
    # the int8 .tflite is the one a build with ONNX makes
    assert m["artifacts"]["int8_tflite"]["sha256"] == tiny_build["manifest"]["artifacts"]["int8_tflite"]["sha256"]

    # a target that runs the int8 ONNX needs "onnx": refused before anything runs
    proc, _ = _build(tiny_build, cache_dir, tmp_path, 'export.formats=["tflite"]', 'validate.targets=["rpi5-onnxruntime"]')
    assert proc.returncode == 3 and "target rpi5-onnxruntime runs the int8 ONNX" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_an_onnx_conversion_that_fails_keeps_tflite_and_fails_its_checks(tiny_build, cache_dir, tmp_path):
    # opset 11 has no per-channel DequantizeLinear: a real refusal of the int8 ONNX, by onnxruntime
    proc, d = _build(tiny_build, cache_dir, tmp_path, "export.onnx_opset=11",
                     'validate.targets=["rpi5-onnxruntime", "cortex-m-tflm"]')
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "warning: no ONNX:" in proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    checks = {c["name"]: c for c in m["gate"]["checks"]}
    failed = sorted(n for n, c in checks.items() if not c["passed"])
    assert failed == ["ONNX export", "runs on target (rpi5-onnxruntime)"], failed
    assert "DequantizeLinear" in checks["ONNX export"]["detail"]
    assert "Raise export.onnx_opset to 13 or more (now 11)" in checks["ONNX export"]["detail"]
    assert "'ONNX export' check" in checks["runs on target (rpi5-onnxruntime)"]["detail"]
    assert m["export"]["made"] == ["tflite"] and m["export"]["onnx_error"] == checks["ONNX export"]["detail"]
    # the TFLite results stand: the artifact, the host's accuracy and the microcontroller's run
    assert not list(d.glob("*.onnx")) and (d / "model_int8.tflite").exists()
    assert m["metrics"]["int8_host"]["accuracy"] == tiny_build["manifest"]["metrics"]["int8_host"]["accuracy"]
    assert checks["int8 accuracy (cortex-m-tflm)"]["passed"]


def test_int16_activations_build_in_16x8_and_run_on_litert_and_tflm(tiny_build, cache_dir, tmp_path):
    int16 = ['export.activations="int16"', "qat.enabled=false", 'export.formats=["tflite"]']
    # 16x8 is post-training and has no ONNX form: the config says so before anything runs
    proc, _ = _build(tiny_build, cache_dir, tmp_path, 'export.activations="int16"', 'validate.targets=[]')
    assert proc.returncode == 3 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Set qat.enabled = false" in proc.stderr and 'export.formats = ["tflite"]' in proc.stderr

    proc, d = _build(tiny_build, cache_dir, tmp_path, *int16, 'validate.targets=["rpi5-litert", "cortex-m-tflm"]')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    m = json.loads((d / "manifest.json").read_text())
    art = m["artifacts"]["int8_tflite"]
    assert (art["activations"], art["quantization"]) == ("int16", "post-training")
    assert art["input"]["dtype"] == art["output"]["dtype"] == "int16"
    from pipeline.device import tflite_info

    info = tflite_info.describe(d / "model_int8.tflite")
    assert [t["dtype"] for t in info["inputs"] + info["outputs"]] == ["int16", "int16"] and not info["float_ops"]
    checks = {c["name"]: c for c in m["gate"]["checks"]}
    assert checks["int16 input/output dtype"]["got"] == "int16/int16"
    float_acc = m["metrics"]["float"]["accuracy"]
    assert m["metrics"]["int8_host"]["accuracy"] >= float_acc - 0.01  # (the host's run of the quantized model)
    for name in ("rpi5-litert", "cortex-m-tflm"):
        t = m["metrics"]["targets"][name]
        assert t["output_dtype"] == "int16" and t["accuracy"] >= float_acc - 0.01 and t["top1_agreement"] == 1.0
        assert checks[f"int16 accuracy ({name})"]["passed"]
        assert t["layers"]["tensors"] and all(r["snr_db"] > 25 for r in t["layers"]["tensors"])
    # TFLM's int16 kernels are held to LiteRT's reference kernels' within a step; rpi5's ISA bit-exact
    assert checks["max |diff| vs LiteRT reference kernels (cortex-m-tflm)"]["passed"]
    assert checks["ISA: bit-exact vs x86 twin, reference kernels (rpi5-litert)"]["got"] == 1.0
