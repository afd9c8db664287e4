"""The gate catches planted regressions, each one alone, and raises no false alarm: in process, on
the manifest of a real tiny build (tests/unit/data/tiny-manifest.json; refresh it with
`python tools/refresh_test_manifest.py` when the manifest schema changes)."""

import copy
import json
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.release import gate, manifest as manifest_mod

HERE = Path(__file__).resolve().parent
MANIFEST = manifest_mod.read(HERE / "data" / "tiny-manifest.json")
CFG = config_mod.load(HERE.parent / "tiny.toml").gate


def failed(result):
    return {c["name"] for c in result["checks"] if not c["passed"]}


def test_a_good_build_passes_and_passes_against_itself():
    m = MANIFEST
    assert gate.evaluate(m, CFG)["verdict"] == "pass"
    assert gate.evaluate(m, CFG, baseline=copy.deepcopy(m))["verdict"] == "pass"


def test_overall_int8_drop_over_the_limit_fails():
    m = copy.deepcopy(MANIFEST)
    m["metrics"]["int8_host"]["accuracy"] = m["metrics"]["float"]["accuracy"] - 0.05
    result = gate.evaluate(m, CFG)
    assert result["verdict"] == "fail" and "int8 drop vs float" in failed(result)


def test_one_class_collapsing_fails_while_the_total_passes():
    m = copy.deepcopy(MANIFEST)
    cls = m["class_names"][3]
    m["metrics"]["int8_host"]["per_class"][cls] = 0.5  # total accuracy untouched
    result = gate.evaluate(m, CFG)
    assert "int8 drop vs float" not in failed(result)
    assert "worst class drop vs float" in failed(result) and result["verdict"] == "fail"
    base = copy.deepcopy(MANIFEST)
    assert "worst class drop vs baseline" in failed(gate.evaluate(m, CFG, baseline=base))


def _regress(m, key, fraction, improve=False):
    """Change `fraction` of the test samples' top-1 in metrics[key]: right -> wrong (or wrong -> right)."""
    labels = m["test_split"]["labels"]
    top1 = m["metrics"][key]["top1"]
    want = int(len(labels) * fraction)
    for i, t in enumerate(labels):
        if want and (top1[i] == t) != improve:
            top1[i] = t if improve else (t + 1) % len(m["class_names"])
            want -= 1
    assert want == 0
    return m


def test_regressed_samples_over_budget_fail_and_improvements_do_not():
    m = _regress(copy.deepcopy(MANIFEST), "int8_host", 0.1)
    assert "regressed samples float->int8" in failed(gate.evaluate(m, CFG))
    base = copy.deepcopy(MANIFEST)
    assert "regressed samples baseline->build" in failed(gate.evaluate(m, CFG, baseline=base))
    # The baseline got 10% wrong that this build gets right: an improvement, never a regression.
    worse_base = _regress(copy.deepcopy(MANIFEST), "int8_host", 0.1)
    worse_base["metrics"]["int8_host"]["accuracy"] -= 0.1
    assert not {c for c in failed(gate.evaluate(MANIFEST, CFG, baseline=worse_base)) if "baseline" in c}


def test_not_full_integer_fails():
    m = copy.deepcopy(MANIFEST)
    m["artifacts"]["int8_tflite"]["input"]["dtype"] = "float32"
    m["artifacts"]["int8_tflite"]["float_ops"] = ["LOGISTIC"]
    assert {"int8 input/output dtype", "full-integer ops"} <= failed(gate.evaluate(m, CFG))


def test_target_disagreement_fails():
    m = copy.deepcopy(MANIFEST)
    m["metrics"]["targets"]["rpi5-litert"]["top1_agreement"] = 0.9
    assert "host/target top-1 agreement (rpi5-litert)" in failed(gate.evaluate(m, CFG))


def test_with_an_x86_twin_the_isa_is_held_bit_exact_and_runtime_drift_is_only_reported():
    m = copy.deepcopy(MANIFEST)
    t = m["metrics"]["targets"]["rpi4-bookworm-tflite"]
    twin = {"runtime": t["runtime"], "runtime_version": t["runtime_version"], "machine": "x86_64", "python": "3.11"}
    t.update(bitexact_fraction=0.5, max_abs_diff=3)  # an older runtime rounds differently from the host's
    t["isa"] = {"twin": twin, "bitexact_fraction": 1.0, "max_abs_diff": 0, "top1_agreement": 1.0, "flipped_ids": []}
    manifest_mod.validate(m)
    result = gate.evaluate(m, CFG)
    assert result["verdict"] == "pass", failed(result)
    assert "bit-exact vs x86 twin (rpi4-bookworm-tflite)" in {c["name"] for c in result["checks"]}
    t["isa"].update(bitexact_fraction=0.999, max_abs_diff=1)  # the ARM kernels differ from x86's: a real defect
    assert failed(gate.evaluate(m, CFG)) == {"bit-exact vs x86 twin (rpi4-bookworm-tflite)"}
    t["isa"] = {"twin": None, "note": "no x86_64 twin"}  # without a twin, the host tolerances apply
    assert "bit-exact outputs (rpi4-bookworm-tflite)" in failed(gate.evaluate(m, CFG))


def test_baseline_with_other_classes_is_bad_input():
    base = copy.deepcopy(MANIFEST)
    base["class_names"] = base["class_names"][:-1] + ["cat"]
    with pytest.raises(InputError, match="same classes"):
        gate.evaluate(MANIFEST, CFG, baseline=base)
    base = copy.deepcopy(MANIFEST)
    base["test_split"]["sha256"] = "0" * 64
    with pytest.raises(InputError, match="test splits must match"):
        gate.evaluate(MANIFEST, CFG, baseline=base)


def test_float_ops_pass_only_when_export_allowed_them():
    m = copy.deepcopy(MANIFEST)
    m["artifacts"]["int8_tflite"]["float_ops"] = ["LOGISTIC"]
    assert "full-integer ops" in failed(gate.evaluate(m, CFG))
    m["config"]["export"]["allowed_float_ops"] = ["LOGISTIC"]
    check = next(c for c in gate.evaluate(m, CFG)["checks"] if c["name"] == "full-integer ops")
    assert check["passed"] and "allowed: LOGISTIC" in check["detail"]


def test_renderers_show_every_check():
    result = gate.evaluate(MANIFEST, CFG)
    table, markdown, junit = gate.table(result), gate.markdown(result), gate.junit(result)
    for check in result["checks"]:
        assert check["name"] in table and check["name"].replace("|", "\\|") in markdown
    assert table.splitlines()[-1].startswith("gate: PASS") and junit.count("<testcase") == len(result["checks"])
    # every Markdown row has the header's 6 cells: a '|' in a name ("max int8 |diff|") is escaped
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert {len(re.split(r"(?<!\\)\|", row)) for row in rows} == {8}, rows
    ElementTree.fromstring(junit.split("\n", 1)[1])  # well-formed XML


def test_junit_holds_any_check_name_as_well_formed_xml():
    names = ['a "quoted" <tag> & amp', "control \x01\x1f chars", "class | pipe"]
    result = {"verdict": "fail", "checks": [{"name": n, "got": 0.5, "limit": ">= 1", "baseline": None, "passed": False,
                                             "detail": "d\ne"} for n in names]}
    suite = ElementTree.fromstring(gate.junit(result).split("\n", 1)[1])
    assert suite.get("failures") == "3" and [c.get("name") for c in suite] == [
        'a "quoted" <tag> & amp', "control ?? chars", "class | pipe"]


def test_a_manifest_that_breaks_the_schema_names_the_field(tmp_path):
    broken = copy.deepcopy(MANIFEST)
    del broken["artifacts"]["int8_tflite"]["sha256"]
    (tmp_path / "m.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match="artifacts.int8_tflite.*sha256"):
        manifest_mod.read(tmp_path / "m.json")
    (tmp_path / "m.json").write_text(json.dumps({**MANIFEST, "schema_version": 2}))
    with pytest.raises(InputError, match="schema_version must be 1; received 2"):
        manifest_mod.read(tmp_path / "m.json")


def test_the_manifest_toolchain_is_the_one_the_stages_recorded():
    records = {"train": {"toolchain": {"python": "3.11.0", "keras": "3.0.0", "jax": "0.1"}},
               "export": {"toolchain": {"keras": "3.0.0", "tensorflow-cpu": "2.0.0", "tf2onnx": "9.9"}}}
    versions = manifest_mod.toolchain_versions(records)
    assert (versions["python"], versions["keras"], versions["tensorflow"], versions["tf2onnx"]) == \
        ("3.11.0", "3.0.0", "2.0.0", "9.9")
    assert versions["onnxruntime"] is None  # no stage ran it


def test_the_isa_is_held_bit_exact_on_reference_kernels_and_the_production_kernels_are_drift():
    """The EfficientNet case: XNNPACK takes other code paths on aarch64 than on x86, so target vs twin on
    the production kernels is only 34% bit-exact (one step apart) while every prediction agrees; the same
    samples on the reference kernels are bit-exact. Only a reference-kernel difference is an ISA defect."""
    m = copy.deepcopy(MANIFEST)
    t = m["metrics"]["targets"]["rpi4-bookworm-tflite"]
    twin = {"runtime": t["runtime"], "runtime_version": t["runtime_version"], "machine": "x86_64", "python": "3.11"}
    t["kernels"], t["tolerances"]["max_isa_abs_diff"] = "xnnpack", 2
    t["isa"] = {"twin": twin, "bitexact_fraction": 0.34, "max_abs_diff": 1, "top1_agreement": 1.0, "flipped_ids": [],
                "reference": {"kernels": "reference", "samples": 64, "bitexact_fraction": 1.0, "max_abs_diff": 0.0}}
    manifest_mod.validate(m)
    result = gate.evaluate(m, CFG)
    assert result["verdict"] == "pass", failed(result)
    names = {c["name"] for c in result["checks"]}
    assert {"ISA: bit-exact vs x86 twin, reference kernels (rpi4-bookworm-tflite)",
            "xnnpack kernels vs x86 twin (rpi4-bookworm-tflite)"} <= names
    t["isa"]["reference"].update(bitexact_fraction=0.999, max_abs_diff=1.0)  # the reference kernels differ: a defect
    assert failed(gate.evaluate(m, CFG)) == {"ISA: bit-exact vs x86 twin, reference kernels (rpi4-bookworm-tflite)"}
    t["isa"]["reference"].update(bitexact_fraction=1.0, max_abs_diff=0.0)
    t["isa"].update(max_abs_diff=3)  # drift beyond the target's tolerance
    assert failed(gate.evaluate(m, CFG)) == {"xnnpack kernels vs x86 twin (rpi4-bookworm-tflite)"}


def _with_device_fit(m):
    """The manifest with what a build now records for device fit: the resource report and a TFLM target."""
    m["resources"] = {"int8_tflite": {"file": "model_int8.tflite", "model_bytes": 12192, "parameters": 2900,
                                      "weight_bytes": 3100, "macs": 250_000, "arena_bytes": 7168, "layers": []}}
    for t in m["metrics"]["targets"].values():
        t.setdefault("model", "model_int8.tflite")  # (the golden manifest predates the field)
    tflm = copy.deepcopy(m["metrics"]["targets"]["rpi5-litert"])
    tflm.update(kind="tflm", model="model_int8.tflite", arena_bytes=7168,
                budget={"sram_bytes": 262144, "flash_bytes": 1048576, "max_macs": 32_000_000})
    m["metrics"]["targets"]["cortex-m-tflm"] = tflm
    manifest_mod.validate(m)
    return m


def test_budgets_are_checked_per_target_and_gate_keys_override_them():
    m = _with_device_fit(copy.deepcopy(MANIFEST))
    result = gate.evaluate(m, CFG)
    assert result["verdict"] == "pass", failed(result)
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["RAM (cortex-m-tflm)"]["got"] == 7168 and checks["RAM (cortex-m-tflm)"]["limit"] == "<= 262,144"
    assert checks["flash (cortex-m-tflm)"]["got"] == 12192 and checks["MACs (cortex-m-tflm)"]["got"] == 250_000
    m["metrics"]["targets"]["cortex-m-tflm"]["budget"]["sram_bytes"] = 4096  # a board with 4 KB for the arena
    result = gate.evaluate(m, CFG)
    assert failed(result) == {"RAM (cortex-m-tflm)"}
    row = gate.table(result).splitlines()
    assert any("✗" in line and "RAM (cortex-m-tflm)" in line and "7168" in line and "<= 4,096" in line for line in row)
    strict = config_mod.load(HERE.parent / "tiny.toml", ["gate.max_macs=1000", "gate.sram_bytes=1000000"]).gate
    # [gate] overrides every target's budget: each target running the 250,000-MAC model fails
    assert failed(gate.evaluate(m, strict)) == {f"MACs ({n})" for n in ("cortex-m-tflm", "rpi4-bookworm-tflite",
                                                                          "rpi5-litert")}


def test_a_disagreement_at_an_exact_int8_tie_of_the_host_is_named():
    import numpy as np

    from pipeline.release.metrics import compare

    host = np.asarray([[-10, -10, -57], [5, 1, 0], [0, 0, -63]], np.int8)  # two exact ties at the top
    target = np.asarray([[-11, -10, -57], [5, 1, 0], [0, 0, -63]], np.int8)  # one step flips the first
    rec = compare(target, host, np.asarray([0, 0, 0]), np.asarray(["a", "b", "c"]), ["x", "y", "z"])
    assert rec["flipped_ids"] == ["a"] and rec["tied_flips"] == 1
    m = copy.deepcopy(MANIFEST)
    name, t = next(iter(sorted(m["metrics"]["targets"].items())))
    t.update(top1_agreement=0.5, flipped_ids=["a", "b"], tied_flips=1)
    agreement = next(c for c in gate.evaluate(m, CFG)["checks"] if c["name"] == f"host/target top-1 agreement ({name})")
    assert not agreement["passed"] and "2 differ, 1 of them at an exact int8 tie" in agreement["detail"]
