"""The gate on real builds: the CLI's exit codes, JUnit and verdict, and the default gate on a harder task.
(Planted regressions on a real manifest: tests/unit/test_release_gate.py.)"""

import copy
import json
import shutil
import xml.etree.ElementTree as ET

import pytest

from conftest import TINY, edgebuild
from pipeline.engine import config as config_mod
from pipeline.release import gate



def failed(result):
    return {c["name"] for c in result["checks"] if not c["passed"]}


def _copy_build(tiny_build, tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_build["dir"], dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_the_gate_judges_only_what_the_build_measured(tiny_build, tmp_path):
    """A gate never passes files its numbers were not measured on, a manifest or baseline edited by
    hand, or thresholds and a baseline other than the build's when none are given."""
    good = _copy_build(tiny_build, tmp_path)
    for name, change in (("model_int8.tflite", lambda d: shutil.copy(d / "model_float.tflite", d / "model_int8.tflite")),
                         ("model_int8.tflite", lambda d: (d / "model_int8.tflite").write_bytes(
                             (d / "model_int8.tflite").read_bytes()[:4000]))):
        build = _copy_build(tiny_build, tmp_path / name.replace(".", "-") / str(id(change)))
        change(build)
        before = (build / "manifest.json").read_bytes()
        proc = edgebuild("gate", str(build))
        assert proc.returncode == 3 and f"{name} has other content" in proc.stderr, proc.stderr
        assert (build / "manifest.json").read_bytes() == before  # no verdict written

    edited = json.loads((good / "manifest.json").read_text())
    edited["metrics"]["int8_host"]["accuracy"] = 1.0
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    proc = edgebuild("gate", str(good), "--baseline", str(tmp_path / "edited.json"))
    assert proc.returncode == 3 and "changed after edgebuild wrote it" in proc.stderr, proc.stderr

    # Gated against a baseline, then re-gated with no options: the build's own thresholds and the same
    # baseline (copied, so its verdict is its own), never the defaults and no baseline.
    shutil.copy(good / "manifest.json", tmp_path / "release.json")
    proc = edgebuild("gate", str(good), "--baseline", str(tmp_path / "release.json"), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["baseline"] == "tiny", proc.stderr
    proc = edgebuild("gate", str(good), "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["baseline_file"]["path"] == str((tmp_path / "release.json").resolve())
    assert any(c["name"] == "int8 drop vs baseline" for c in result["checks"])
    limit = {c["name"]: c["limit"] for c in result["checks"]}["int8 accuracy (host)"]
    assert limit == f">= {config_mod.load(TINY).gate.min_int8_accuracy}"
    (tmp_path / "release.json").unlink()
    proc = edgebuild("gate", str(good))
    assert proc.returncode == 3 and "--no-baseline" in proc.stderr, proc.stderr
    proc = edgebuild("gate", str(good), "--no-baseline", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["baseline"] is None


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

    summary = tmp_path / "summary.md"
    proc = edgebuild("gate", str(good), "--config", str(TINY), "--set", "gate.min_int8_accuracy=0.9999",
                     "--junit", str(tmp_path / "bad.xml"), env={"GITHUB_STEP_SUMMARY": str(summary)})
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

    out = tmp_path_factory.mktemp("harder")
    config = out / "harder.toml"
    config.write_text(
        f'[build]\nname = "signs"\nout_dir = "{out}"\n'
        f'[data]\nsource = "{SIGNS}"\nimage_size = 16\nchannels = 3\ncalibration_samples = 100\n'
        f'calibration_file = "{out}/calib.json"\n'
        '[train]\nwidth = 8\nepochs = 40\nlearning_rate = 0.01\nbatch_size = 32\n[qat]\nepochs = 2\n[validate]\ntargets = []\n')
    proc = edgebuild("--quiet", "build", "--config", str(config), env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
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
    best = max(m["metrics"]["float"]["per_class"], key=m["metrics"]["float"]["per_class"].get)
    m["metrics"]["int8_host"]["per_class"][best] = 0.0  # a class collapses (with 6 test samples a class, 30 pp is noise)
    assert "worst class drop vs float" in failed(gate.evaluate(m, defaults))
    m = copy.deepcopy(harder_build)
    budget = gate.flip_limit(defaults, m["metrics"]["float"]["accuracy"])
    labels, top1 = m["test_split"]["labels"], m["metrics"]["int8_host"]["top1"]
    right = [i for i, t in enumerate(labels) if top1[i] == t]
    for i in right[: int(len(labels) * budget * 1.5) + 1]:  # right -> wrong, past the budget
        top1[i] = (labels[i] + 1) % len(m["class_names"])
    assert "regressed samples float->int8" in failed(gate.evaluate(m, defaults))
    base = copy.deepcopy(harder_build)
    m = copy.deepcopy(harder_build)
    m["metrics"]["int8_host"]["accuracy"] = base["metrics"]["int8_host"]["accuracy"] - 0.03
    assert "int8 drop vs baseline" in failed(gate.evaluate(m, defaults, baseline=base))
