"""Does it fit the device? The resource report, the microcontroller target (the real TensorFlow Lite
Micro interpreter) and the NPU target (the real Vela compiler), on the tiny build and on model files
built outside edgebuild; budgets failing the gate with the numbers named."""

import json

import numpy as np
import pytest

from conftest import edgebuild, validate
from pipeline.device import onnx_info, tflite_info
from pipeline.engine.fsutil import sha256_file

TFLM, NPU = "cortex-m-tflm", "ethos-u55-128"


def test_the_build_reports_what_the_int8_model_asks_of_a_device(tiny_build):
    m = tiny_build["manifest"]
    res = m["resources"]["int8_tflite"]
    assert res["file"] == "model_int8.tflite" and res["model_bytes"] == m["artifacts"]["int8_tflite"]["bytes"]
    assert res["macs"] == sum(layer["macs"] for layer in res["layers"]) > 0
    assert 0 < res["weight_bytes"] < res["model_bytes"] and res["parameters"] > 0
    assert res["largest_by_macs"][0]["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    # the arena is the real runtime's figure: the microcontroller target's own run measured the same
    assert res["arena_bytes"] == m["metrics"]["targets"][TFLM]["arena_bytes"] > 0
    # the int8 ONNX holds the same layers: the same MACs (the weights stored otherwise)
    onnx = m["resources"]["int8_onnx"]
    assert onnx["macs"] == res["macs"] and onnx["model_bytes"] == m["artifacts"]["int8_onnx"]["bytes"]
    assert "arena_bytes" not in onnx
    # Vela counts the same MACs, plus one per output element of each activation it runs apart from its
    # layer (a fused ReLU of a layer whose output scale it cannot fold); the tiny model has none such
    npu = m["metrics"]["targets"][NPU]["npu"]
    assert npu["macs"] == res["macs"], (npu["macs"], res["macs"])
    summary = tiny_build["stdout"]
    assert f"{res['macs']:,} MACs, TFLM arena {res['arena_bytes']:,} B" in summary


def test_the_microcontroller_target_runs_the_test_set_on_tflm_beside_its_reference_twin(tiny_build):
    m, d = tiny_build["manifest"], tiny_build["dir"]
    t = m["metrics"]["targets"][TFLM]
    assert (t["kind"], t["runtime"], t["kernels"], t["emulated"]) == ("tflm", "tflite-micro", "tflm-reference", False)
    assert t["samples"] == m["splits"]["test"] and t["sampled"] is False
    assert "not emulated" in t["executor"]["runs"] and "CMSIS-NN" in t["executor"]["runs"]
    assert t["isa"]["twin"]["runtime"] == "ai-edge-litert" and t["isa"]["twin"]["kernels"] == "reference"
    # TFLM's kernels are ported from LiteRT's reference kernels: measured on this tiny model, 2 of its 3,590
    # output values differ by one step (the target file's tolerance), and the first op that departs is named
    isa, first = t["isa"], t["first_difference"]
    assert isa["bitexact_fraction"] >= 0.99 and isa["max_abs_diff"] <= 1 and isa["top1_agreement"] == 1.0
    if isa["bitexact_fraction"] < 1.0:
        assert first["against"] == "twin" and first["op"] and first["kernels"].startswith("TFLM vs LiteRT reference")
    assert t["top1_agreement"] >= 0.99 and t["accuracy"] >= 0.8
    # the outputs are TFLM's own: the first samples run again here, on the real interpreter, give them
    from tflite_micro.python.tflite_micro import runtime

    data = np.load(d / "dataset.npz")
    outputs = np.load(d / f"target-{TFLM}.npz")["outputs"]
    info = tflite_info.describe(d / "model_int8.tflite")["inputs"][0]
    x = onnx_info.model_input(data["x"][data["test"][:5]], _pp(m), info)
    interp = runtime.Interpreter.from_file(str(d / "model_int8.tflite"), arena_size=1 << 20)
    for i in range(5):
        interp.set_input(x[i : i + 1], 0)
        interp.invoke()
        assert np.array_equal(interp.get_output(0)[0], outputs[i])
    checks = {c["name"]: c for c in m["gate"]["checks"]}
    ram = checks[f"RAM ({TFLM})"]
    assert ram["passed"] and ram["got"] == t["arena_bytes"] and ram["limit"] == "<= 262,144"
    assert checks[f"bit-exact vs x86 twin ({TFLM})"]["passed"]


def _pp(manifest):
    from types import SimpleNamespace

    return SimpleNamespace(**manifest["config"]["preprocess"])


def test_the_npu_target_publishes_vela_s_model_and_figures(tiny_build):
    m, d = tiny_build["manifest"], tiny_build["dir"]
    t = m["metrics"]["targets"][NPU]
    npu = t["npu"]
    assert (npu["vela_version"], npu["accelerator_config"], npu["clock_hz"]) == ("5.2.0", "ethos-u55-128", 500_000_000)
    assert npu["cpu_ops"] == 0 and npu["cpu_fallback"] == [] and npu["npu_ops"] >= 4
    assert npu["sram_bytes"] > 0 and npu["off_chip_flash_bytes"] > 0 and npu["cycles"] > 0
    assert npu["inference_ms"] == pytest.approx(npu["cycles"] / 500e3, rel=1e-4) and npu["runs_here"] is False
    art = m["artifacts"][f"compiled_{NPU}"]
    assert art["for_target"] == NPU and art["sha256"] == sha256_file(d / art["path"])
    ops = {o["name"] for o in tflite_info.describe(d / art["path"])["ops"]}
    assert "ethos-u" in ops, ops  # the compiled model is one Ethos-U custom op (and its I/O)
    # its accuracy is proven on TFLM, as the Cortex-M host runs the same int8 model
    assert t["runtime"] == "tflite-micro" and t["accuracy"] == m["metrics"]["targets"][TFLM]["accuracy"]
    assert "not run" in t["executor"]["runs"]
    checks = {c["name"]: c for c in m["gate"]["checks"]}
    for name in (f"CPU-fallback ops ({NPU})", f"NPU inference ms ({NPU})", f"RAM ({NPU})", f"flash ({NPU})"):
        assert checks[name]["passed"], checks[name]
    assert checks[f"RAM ({NPU})"]["got"] == npu["sram_bytes"]
    html = (d / "report.html").read_text()
    assert "Does it fit the device?" in html and "estimated, not run" in html


def test_a_budget_the_model_exceeds_fails_the_gate_naming_both_numbers(tiny_build, tmp_path):
    import shutil

    d = tmp_path / "tiny"
    shutil.copytree(tiny_build["dir"], d, symlinks=True)
    arena = tiny_build["manifest"]["metrics"]["targets"][TFLM]["arena_bytes"]
    proc = edgebuild("gate", str(d), "--set", "gate.sram_bytes=1000", "--set", "gate.max_macs=5", "--junit",
                     str(tmp_path / "gate.xml"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    row = next(line for line in proc.stdout.splitlines() if f"RAM ({TFLM})" in line)
    assert "✗" in row and str(arena) in row and "<= 1,000" in row
    assert any("✗" in line and f"MACs ({NPU})" in line and "<= 5" in line for line in proc.stdout.splitlines())
    assert "RAM (cortex-m-tflm)" in (tmp_path / "gate.xml").read_text()


def test_a_model_file_built_elsewhere_gets_the_resource_report_and_runs_on_both_new_targets(
        outside, cache_dir, tmp_path):
    out, expected = outside
    proc = validate(out, cache_dir, "int8.tflite", "--set", f'validate.targets=["{TFLM}", "{NPU}"]',
                    "--out", str(tmp_path / "v"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    res = m["resources"]["model"]
    # the plain TensorFlow model: conv 3x3x1 -> 8x8x8, max pool 2x2 -> 4x4x8, dense 128 -> 10
    assert res["macs"] == 3 * 3 * 1 * 8 * 8 * 8 + 2 * 2 * 4 * 4 * 8 + 128 * 10
    assert res["arena_bytes"] > 0 and res["model_bytes"] == (out / "int8.tflite").stat().st_size
    for name in (TFLM, NPU):
        t = m["metrics"]["targets"][name]
        assert t["samples"] == 300 and t["accuracy"] == pytest.approx(expected["int8"]["accuracy"], abs=0.01)
        assert t["isa"]["bitexact_fraction"] >= 0.99
    assert m["metrics"]["targets"][NPU]["npu"]["macs"] >= res["macs"]
    assert m["artifacts"][f"compiled_{NPU}"]["sha256"] == sha256_file(tmp_path / "v" / f"vela-{NPU}.tflite")


def test_an_op_tflm_lacks_is_named_and_fails_runs_on_target(outside, cache_dir, tmp_path):
    out, expected = outside
    proc = validate(out, cache_dir, "gelu_int8.tflite", "--set", f'validate.targets=["{TFLM}", "rpi5-litert"]',
                    "--out", str(tmp_path / "v"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    assert "Didn't find op for builtin opcode 'GELU'" in m["metrics"]["targets"][TFLM]["refused"]
    assert m["resources"]["model"]["arena_bytes"] is None and "GELU" in m["resources"]["model"]["refused"]
    failed = [c["name"] for c in m["gate"]["checks"] if not c["passed"]]
    assert failed == [f"runs on target ({TFLM})"], failed
    # the other target still ran, and LiteRT runs GELU
    assert m["metrics"]["targets"]["rpi5-litert"]["accuracy"] == pytest.approx(expected["gelu_int8"]["accuracy"], abs=1e-6)


def test_vela_scratch_files_stay_in_the_stage_s_staging_directory(tiny_build, tmp_path, monkeypatch):
    """Vela runs with its working directory, TMPDIR and HOME in the scratch directory it is given (the
    stage's staging directory): the caller's working directory gets nothing."""
    from pipeline.device import ethosu, targets

    here, work = tmp_path / "cwd", tmp_path / "work"
    here.mkdir()
    work.mkdir()
    monkeypatch.chdir(here)
    figures, compiled = ethosu.compile_model(targets.load_target(NPU), tiny_build["dir"] / "model_int8.tflite", work)
    assert compiled.parent.parent == work and figures["cpu_ops"] == 0
    assert list(here.iterdir()) == []
    assert {p.name for p in work.iterdir()} == {"vela-out", "vela.ini", "vela.log"}


def test_vela_refusing_a_model_is_one_line_with_vela_s_reason(tmp_path):
    """The real Vela on a file it cannot read: ModelRefused naming Vela and its own reason (a failing check
    in a build, exit 3 for edgebuild validate)."""
    from pipeline.device import ethosu, targets
    from pipeline.engine.errors import ModelRefused

    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" * 8)
    with pytest.raises(ModelRefused, match=r"^Vela 5\.2\.0 for ethos-u55-128 refuses the model: .+\. Change the model"):
        ethosu.compile_model(targets.load_target(NPU), bad, tmp_path)
    figures, written = ethosu.finish(targets.load_target(NPU), bad, tmp_path / "out", tmp_path, print)
    assert written == [] and "refused" in figures["npu"] and "\n" not in figures["npu"]["refused"]


def test_a_float_model_on_the_npu_names_every_operator_left_to_the_cpu(outside, cache_dir, tmp_path):
    out, expected = outside
    proc = validate(out, cache_dir, "float.tflite", "--set", f'validate.targets=["{NPU}"]', "--out", str(tmp_path / "v"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    m = json.loads((tmp_path / "v" / "manifest.json").read_text())
    npu = m["metrics"]["targets"][NPU]["npu"]
    assert npu["cpu_ops"] == len(npu["cpu_fallback"]) > 0, npu
    check = next(c for c in m["gate"]["checks"] if c["name"] == f"CPU-fallback ops ({NPU})")
    assert not check["passed"] and check["got"] == npu["cpu_ops"] and check["limit"] == "<= 0"
    assert npu["cpu_fallback"][0] in check["detail"]


def test_a_flag_selects_the_kernels_where_the_device_build_differs(tiny_build, cache_dir, tmp_path):
    import shutil

    d = tmp_path / "tiny"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    proc = edgebuild("--quiet", "validate", str(d), "--target", "rpi5-litert", "--set", 'validate.targets=["rpi5-litert"]',
                     "--set", 'validate.kernels="builtin"', env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    t = m["metrics"]["targets"]["rpi5-litert"]
    assert t["kernels"] == "builtin" and t["isa"]["twin"]["kernels"] == "builtin" and t["isa"]["reference"]
    names = {c["name"] for c in m["gate"]["checks"]}
    assert "builtin kernels vs x86 twin (rpi5-litert)" in names and "xnnpack kernels vs x86 twin (rpi5-litert)" not in names
