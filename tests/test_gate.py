"""The gate catches planted regressions, each one alone, and raises no false alarm."""

import copy
import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import TINY, edgebuild
from pipeline import config as config_mod
from pipeline import gate
from pipeline.errors import InputError

CFG = config_mod.load(TINY).gate


def failed(result):
    return {c["name"] for c in result["checks"] if not c["passed"]}


def test_a_good_build_passes_and_passes_against_itself(tiny_build):
    m = tiny_build["manifest"]
    assert gate.evaluate(m, CFG)["verdict"] == "pass"
    assert gate.evaluate(m, CFG, baseline=copy.deepcopy(m))["verdict"] == "pass"


def test_overall_int8_drop_over_the_limit_fails(tiny_build):
    m = copy.deepcopy(tiny_build["manifest"])
    m["metrics"]["int8_host"]["accuracy"] = m["metrics"]["float"]["accuracy"] - 0.05
    result = gate.evaluate(m, CFG)
    assert result["verdict"] == "fail" and "int8 drop vs float" in failed(result)


def test_one_class_collapsing_fails_while_the_total_passes(tiny_build):
    m = copy.deepcopy(tiny_build["manifest"])
    cls = m["class_names"][3]
    m["metrics"]["int8_host"]["per_class"][cls] = 0.5  # total accuracy untouched
    result = gate.evaluate(m, CFG)
    assert "int8 drop vs float" not in failed(result)
    assert "worst class drop vs float" in failed(result) and result["verdict"] == "fail"
    base = copy.deepcopy(tiny_build["manifest"])
    assert "worst class drop vs baseline" in failed(gate.evaluate(m, CFG, baseline=base))


def test_flip_rate_over_budget_fails(tiny_build):
    m = copy.deepcopy(tiny_build["manifest"])
    n = m["metrics"]["int8_host"]["samples"]
    m["metrics"]["int8_host"]["flips_vs_float"] = [f"id{i}" for i in range(int(n * 0.1))]
    assert "flip rate float->int8" in failed(gate.evaluate(m, CFG))
    base = copy.deepcopy(tiny_build["manifest"])
    m2 = copy.deepcopy(tiny_build["manifest"])
    top1 = m2["metrics"]["int8_host"]["top1"]
    for i in range(0, len(top1), 5):  # 20% of predictions change vs the baseline
        top1[i] = (top1[i] + 1) % len(m2["class_names"])
    assert "flip rate baseline->build" in failed(gate.evaluate(m2, CFG, baseline=base))


def test_not_full_integer_fails(tiny_build):
    m = copy.deepcopy(tiny_build["manifest"])
    m["artifacts"]["int8_tflite"]["input"]["dtype"] = "float32"
    m["artifacts"]["int8_tflite"]["float_ops"] = ["LOGISTIC"]
    assert {"int8 input/output dtype", "full-integer ops"} <= failed(gate.evaluate(m, CFG))


def test_target_disagreement_fails(tiny_build):
    m = copy.deepcopy(tiny_build["manifest"])
    m["metrics"]["targets"]["rpi5-litert"]["top1_agreement"] = 0.9
    assert "host/target top-1 agreement (rpi5-litert)" in failed(gate.evaluate(m, CFG))


def test_baseline_with_other_classes_is_bad_input(tiny_build):
    base = copy.deepcopy(tiny_build["manifest"])
    base["class_names"] = base["class_names"][:-1] + ["cat"]
    with pytest.raises(InputError, match="same classes"):
        gate.evaluate(tiny_build["manifest"], CFG, baseline=base)
    base = copy.deepcopy(tiny_build["manifest"])
    base["test_split"]["sha256"] = "0" * 64
    with pytest.raises(InputError, match="test splits must match"):
        gate.evaluate(tiny_build["manifest"], CFG, baseline=base)


def _copy_build(tiny_build, tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_build["dir"], dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_cli_exit_codes_junit_and_verdict_in_manifest(tiny_build, tmp_path):
    good = _copy_build(tiny_build, tmp_path)
    proc = edgebuild("gate", str(good), "--config", str(TINY), "--junit", str(tmp_path / "ok.xml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "✓" in proc.stdout and "gate: PASS" in proc.stdout
    proc = edgebuild("gate", str(good), "--config", str(TINY), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout is JSON and nothing else
    assert result["verdict"] == "pass" and result["checks"]
    assert all(set(c) >= {"name", "got", "limit", "baseline", "passed"} for c in result["checks"])

    bad = json.loads((good / "manifest.json").read_text())
    bad["metrics"]["int8_host"]["accuracy"] = 0.1
    (good / "manifest.json").write_text(json.dumps(bad))
    summary = tmp_path / "summary.md"
    proc = edgebuild("gate", str(good), "--config", str(TINY), "--junit", str(tmp_path / "bad.xml"),
                     env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert proc.returncode == 1 and "✗" in proc.stdout and "gate: FAIL" in proc.stdout
    assert json.loads((good / "manifest.json").read_text())["gate"]["verdict"] == "fail"
    suite = ET.parse(tmp_path / "bad.xml").getroot()
    assert int(suite.get("failures")) >= 2
    assert any(tc.find("failure") is not None and "int8 accuracy (host)" == tc.get("name") for tc in suite)
    assert "❌ fail" in summary.read_text()

    other = json.loads((tiny_build["dir"] / "manifest.json").read_text())
    other["schema_version"] = 99
    (tmp_path / "old.json").write_text(json.dumps(other))
    proc = edgebuild("gate", str(good), "--config", str(TINY), "--baseline", str(tmp_path / "old.json"))
    assert proc.returncode == 3 and "schema_version must be 1; received 99" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def harder_build(tmp_path_factory, cache_dir):
    """A healthy first build of a harder task: real sign-language photos, small and low-resolution,
    with the default [gate] (nothing set)."""
    from conftest import SIGNS

    if not SIGNS.is_dir():
        pytest.skip("shared/datasets/sign-language-digits is not beside the repo")
    out = tmp_path_factory.mktemp("harder")
    config = out / "harder.toml"
    config.write_text(
        f'[build]\nname = "signs"\nout_dir = "{out}"\n'
        f'[data]\nsource = "{SIGNS}"\nimage_size = 16\nchannels = 3\ncalibration_samples = 100\n'
        f'calibration_file = "{out}/calib.json"\n'
        '[train]\nwidth = 8\nepochs = 8\n[qat]\nepochs = 2\n[validate]\ntargets = []\n')
    proc = edgebuild("--quiet", "build", "--config", str(config), env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads((out / "signs" / "manifest.json").read_text())


def test_default_gate_passes_a_healthy_build_of_a_harder_task(harder_build):
    m = harder_build
    assert 0.4 < m["metrics"]["float"]["accuracy"] < 0.9, "not the harder task this test is about"
    assert m["gate"]["verdict"] == "pass", [c for c in m["gate"]["checks"] if not c["passed"]]
    old_defaults = config_mod.GateConfig(min_int8_accuracy=0.9, max_int8_drop=0.01, max_flip_rate=0.02,
                                         flip_error_ratio=0.0, class_drop_samples=0)
    assert gate.evaluate(m, old_defaults)["verdict"] == "fail"  # what a first build met before


def test_default_gate_still_fails_planted_regressions_on_the_harder_task(harder_build):
    defaults = config_mod.GateConfig()
    m = copy.deepcopy(harder_build)
    m["metrics"]["int8_host"]["accuracy"] = m["metrics"]["float"]["accuracy"] - 0.05
    assert "int8 drop vs float" in failed(gate.evaluate(m, defaults))
    m = copy.deepcopy(harder_build)
    big = max(m["test_set"]["per_class"], key=m["test_set"]["per_class"].get)
    m["metrics"]["int8_host"]["per_class"][big] = m["metrics"]["float"]["per_class"][big] - 0.3
    assert "worst class drop vs float" in failed(gate.evaluate(m, defaults))
    m = copy.deepcopy(harder_build)
    budget = gate.flip_limit(defaults, m["metrics"]["float"]["accuracy"])
    n = m["metrics"]["int8_host"]["samples"]
    m["metrics"]["int8_host"]["flips_vs_float"] = [f"id{i}" for i in range(int(n * budget * 1.5) + 1)]
    assert "flip rate float->int8" in failed(gate.evaluate(m, defaults))
    base = copy.deepcopy(harder_build)
    m = copy.deepcopy(harder_build)
    m["metrics"]["int8_host"]["accuracy"] = base["metrics"]["int8_host"]["accuracy"] - 0.03
    assert "int8 drop vs baseline" in failed(gate.evaluate(m, defaults, baseline=base))
