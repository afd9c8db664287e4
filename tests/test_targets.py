"""On-target validation with the real emulated aarch64 interpreters (qemu user-mode), no mocks."""

import os
import re
import select
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ALL_TARGETS, REPO
from pipeline.device import environment, fanout, onnx_info, oplint, targets, tflite_info
from pipeline.device.runtimes import run_onnx, run_tflite
from pipeline.engine.errors import InputError, ModelRefused, StageError
from pipeline.engine.fsutil import file_lock

AARCH64 = [n for n in ALL_TARGETS if targets.load_target(n).kind == "linux"]  # the emulated boards


@pytest.mark.parametrize("name", AARCH64)
def test_emulated_interpreter_runs_a_tiny_int8_model(name, tiny_build, cache_dir, tmp_path):
    """tiny_build set the targets up cold in this session's cache; run the validator again here, on the
    self-test model in the target's format, against the same file run by the host's runtime."""
    target = targets.load_target(name)
    root = environment.setup(target, cache_dir)
    model = targets.selftest_model(target)
    shape = onnx_info.describe(model)["inputs"][0]["shape"]
    x = np.random.RandomState(0).randint(-128, 128, size=[7, *shape[1:]]).astype(np.int8)
    out, info = fanout.run_sharded(target, root, model, x, tmp_path, shards=2)
    assert info["machine"] == "aarch64"
    assert (info["runtime"], info["runtime_version"]) == (target.runtime, target.runtime_version)
    assert info["shards"] == 2 and out.shape[0] == 7 and out.dtype == np.int8

    host = run_onnx(model, x) if onnx_info.is_onnx(model) else run_tflite(model, x)
    diff = np.abs(out.astype(int) - host.astype(int)).max()
    assert diff <= target.tolerances.max_abs_diff
    if onnx_info.is_onnx(model):
        return
    # the same process keeps every op's output tensor of 3 more inputs (the per-layer report's): what a
    # process of its own keeping them gives, and the run's outputs as without them
    outputs = {t for _, _, tensors in tflite_info.op_outputs(model) for t, _ in tensors}
    extra = np.random.RandomState(1).randint(-128, 128, size=[3, *shape[1:]]).astype(np.int8)
    out2, _ = fanout.run_sharded(target, root, model, x, tmp_path / "kept", shards=2, keep=(extra, outputs))
    np.testing.assert_array_equal(out2, out)
    with np.load(tmp_path / "kept" / "kept.npz") as f:
        kept = {int(k[1:]): f[k] for k in f.files}
    alone = fanout.dump_tensors(target, root, model, extra, tmp_path / "alone", "target", count=3, only=outputs)
    assert set(kept) == set(alone) == outputs
    for t in outputs:
        assert kept[t].shape[0] == 3
        np.testing.assert_array_equal(kept[t], alone[t], err_msg=f"tensor {t}")


def test_a_target_refuses_a_model_in_the_other_format(tiny_build):
    """An onnxruntime target is given a .tflite (and a LiteRT one an .onnx): refused by name, not run."""
    with pytest.raises(ModelRefused, match=r"runs \.onnx models; this one is \.tflite"):
        oplint.lint(targets.load_target("rpi5-onnxruntime"), onnx_info.describe(tiny_build["dir"] / "model_int8.tflite"))
    with pytest.raises(ModelRefused, match=r"runs \.tflite models; this one is \.onnx"):
        oplint.lint(targets.load_target("rpi5-litert"), onnx_info.describe(tiny_build["dir"] / "model_int8.onnx"))


def test_default_style_build_records_every_target(tiny_build):
    t = tiny_build["manifest"]["metrics"]["targets"]
    assert set(t) == set(ALL_TARGETS)
    t = {name: rec for name, rec in t.items() if name in AARCH64}  # (tests/test_device_fit.py: the others)
    for name, rec in t.items():
        for key in ("accuracy", "per_class", "bitexact_fraction", "max_abs_diff", "top1_agreement",
                    "images_per_s", "runtime", "runtime_version"):
            assert key in rec, (name, key)
        assert rec["machine"] == "aarch64" and rec["emulated"] is True
        assert rec["samples"] == tiny_build["manifest"]["splits"]["test"] and rec["sampled"] is False
        assert rec["top1_agreement"] >= 0.99
    # LiteRT 2.3.0 under emulation is bit-identical to LiteRT 2.3.0 on the host.
    assert t["rpi5-litert"]["bitexact_fraction"] == 1.0
    # The onnxruntime target ran the int8 ONNX under qemu and was compared with the host's onnxruntime.
    onnx_target = t["rpi5-onnxruntime"]
    assert onnx_target["model"] == "model_int8.onnx" and onnx_target["runtime"] == "onnxruntime"
    assert abs(onnx_target["accuracy"] - tiny_build["manifest"]["metrics"]["onnx_int8"]["accuracy"]) <= 1 / 359 + 1e-9
    assert t["rpi5-litert"]["model"] == "model_int8.tflite"
    # Each target beside its x86_64 twin (the same runtime, version and numpy, run natively on the build
    # host): LiteRT's ARM kernels reproduce x86's exactly, whatever the runtime-version drift vs the
    # host; onnxruntime's int8 kernels may differ by one step (its target file's tolerances).
    for name, rec in t.items():
        isa = rec["isa"]
        assert isa["twin"]["machine"] == "x86_64", (name, isa)
        assert (isa["twin"]["runtime"], isa["twin"]["runtime_version"]) == (rec["runtime"], rec["runtime_version"])
        tol = rec["tolerances"]
        assert isa["bitexact_fraction"] >= tol["min_isa_bitexact_fraction"], (name, isa)
        assert isa["max_abs_diff"] <= tol["max_isa_abs_diff"] and isa["top1_agreement"] == 1.0, (name, isa)
        if rec["runtime"] != "onnxruntime":
            assert isa["bitexact_fraction"] == 1.0 and isa["max_abs_diff"] == 0, (name, isa)
        # Where the outputs first differ: none for a bit-exact target, else one sample re-run with every
        # tensor kept on both sides, compared op by op.
        first = rec["first_difference"]
        if rec["bitexact_fraction"] == 1.0:
            assert first is None, (name, first)
        else:
            against = "host" if isa["bitexact_fraction"] == 1.0 else "twin"
            assert first["against"] == against and first["samples_differing"] >= 1, (name, first)
            assert first["sample"] in tiny_build["manifest"]["test_split"]["ids"]
            assert first["op"] or "XNNPACK" in first["note"] or ".onnx" in first["note"], first
        # the ISA check proper: validate.isa_samples images on the runtime's reference kernels, on the
        # target and on its twin, held bit-exact; onnxruntime has no reference kernels
        if rec["runtime"] != "onnxruntime":
            assert isa["reference"] == {"kernels": "reference", "samples": 64, "bitexact_fraction": 1.0,
                                        "max_abs_diff": 0.0}, (name, isa)
        else:
            assert "reference" not in isa
    checks = {c["name"] for c in tiny_build["manifest"]["gate"]["checks"]}
    assert not any(c.startswith("max int8 |diff|") for c in checks)
    for n, rec in t.items():
        if rec["runtime"] == "onnxruntime":
            assert f"bit-exact vs x86 twin ({n})" in checks
        else:
            assert {f"ISA: bit-exact vs x86 twin, reference kernels ({n})", f"xnnpack kernels vs x86 twin ({n})"} <= checks


def test_lint_refuses_flex_and_custom_ops_by_name():
    target = targets.load_target("rpi4-bookworm-tflite")
    info = {"flex_ops": ["FlexMatrixDeterminant"], "custom_ops": ["FlexMatrixDeterminant", "MyOp"]}
    with pytest.raises(InputError, match="FlexMatrixDeterminant, MyOp"):
        oplint.lint(target, info)


def test_validate_command_adds_a_target_and_regates(tiny_build, cache_dir, tmp_path):
    import json
    import shutil

    from conftest import edgebuild

    d = tmp_path / "b" / "tiny"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock"))
    proc = edgebuild("--quiet", "validate", str(d), "--target", "host", env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    assert set(m["metrics"]["targets"]) == set(ALL_TARGETS) | {"host"}
    host = m["metrics"]["targets"]["host"]
    assert host["bitexact_fraction"] == 1.0 and host["top1_agreement"] == 1.0  # same runtime as the host
    assert m["gate"]["verdict"] == "pass" and any("(host)" in c["name"] for c in m["gate"]["checks"])
    before = tiny_build["manifest"]["metrics"]["targets"]["rpi5-litert"]
    after = m["metrics"]["targets"]["rpi5-litert"]
    for key in ("accuracy", "per_class", "bitexact_fraction", "max_abs_diff", "top1_agreement", "flipped_ids"):
        assert after[key] == before[key], key


def _target_file(tmp_path, hashes=None, **changes):
    """A copy of rpi5-litert.toml under another name, with some fields (and wheel hashes) changed."""
    text = (targets.TARGETS_DIR / "rpi5-litert.toml").read_text()
    for key, value in changes.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
    if hashes is not None:
        table = "".join(f'"{k}" = "{v}"\n' for k, v in hashes.items())  # the twin is never reached here
        text = text[:text.index("[wheel_sha256]")] + "[wheel_sha256]\n" + table + "[twin_wheel_sha256]\n" + table
    (tmp_path / "targets").mkdir(exist_ok=True)
    (tmp_path / "targets" / "broken.toml").write_text(text.replace('name = "rpi5-litert"', 'name = "broken"'))
    return targets.load_target("broken", tmp_path / "targets")


def test_setup_names_a_wheel_that_does_not_exist_and_leaves_nothing(tmp_path):
    """The real pip against the real index: a pin that was never released is a one-line config error."""
    target = _target_file(tmp_path, wheels='["ai-edge-litert==0.0.1", "numpy==2.2.6"]',
                          hashes={"ai-edge-litert==0.0.1": "0" * 64, "numpy==2.2.6": "0" * 64})
    with pytest.raises(InputError, match=r"no such wheel for this platform and Python .*ai-edge-litert==0\.0\.1"):
        environment.setup(target, tmp_path / "cache", log=lambda _: None)
    name = environment.env_dir(target, tmp_path / "cache").name
    left = sorted(p.name for p in (tmp_path / "cache" / "targets").iterdir())
    assert left == [f".{name}.lock", f"{name}.setup.log"], left  # (the set-up lock stays: it is reused)


def test_a_wheel_that_does_not_match_its_pinned_sha256_is_refused(tmp_path):
    """The real index serves the real numpy 2.2.6 file; the target file pins another hash."""
    pinned = targets.load_target("rpi5-litert").wheel_sha256
    target = _target_file(tmp_path, hashes={**pinned, "numpy==2.2.6": "0" * 64})
    with pytest.raises(InputError, match=r"must match its wheel_sha256 .*; numpy==2\.2\.6 does not"):
        environment.setup(target, tmp_path / "cache", log=lambda _: None)
    assert not environment.env_dir(target, tmp_path / "cache").exists()


def test_setup_says_when_the_registry_is_unreachable(tmp_path, monkeypatch):
    # port 9 (discard) on loopback: nothing listens, so the connection is refused at once
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "1")  # pip reports a dead index only in its retry warnings
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    target = _target_file(tmp_path)
    with pytest.raises(StageError, match="the package registry is unreachable"):
        environment.setup(target, tmp_path / "cache", log=lambda _: None)
    assert not environment.env_dir(target, tmp_path / "cache").exists()


def test_a_second_setup_of_a_target_waits_for_the_first_and_builds_nothing(tiny_build, cache_dir, tmp_path):
    """Two processes setting up one environment (two builds, two test workers): the second waits for the
    first's lock, then finds the environment ready instead of building it again."""
    target = targets.load_target("rpi5-litert")
    made = environment.env_dir(target, cache_dir)  # set up for the session's tiny build
    fresh = tmp_path / "cache"
    root = environment.env_dir(target, fresh)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(fresh)
    with file_lock(root.parent / f".{root.name}.lock", lambda holder: None):  # this test plays the first set-up
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "target", "setup", target.name], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said, deadline = "", time.time() + 120
        while "waiting for another process" not in said and time.time() < deadline and proc.poll() is None:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                said += proc.stderr.readline()
        if "waiting for another process" not in said:
            proc.kill()
        assert "waiting for another process" in said, said
        root.symlink_to(made, target_is_directory=True)  # the first set-up publishes its environment
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"{target.name}: ready in" in out
    assert not (root.parent / f"{root.name}.setup.log").exists(), "the waiting process built the environment too"
