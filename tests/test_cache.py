"""Stage cache: a hit never runs the stage body, keys chain, and a changed field re-runs exactly
the stages downstream of it. Crash safety: SIGKILL mid-stage leaves no half-written artifact."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO, TINY, edgebuild, own_cache
from pipeline.orchestrate import build as build_mod
from pipeline.engine import config as config_mod
from pipeline.engine.cache import StageCache
from pipeline.engine.fsutil import sha256_file
from pipeline.engine.stage import Stage

CORE_ARTIFACTS = ("dataset.npz", "model_int8.tflite", "model_float.tflite", "model.onnx", "predictions.npz")


def _sentinel_stage(counter):
    return Stage("sentinel", "sentinel_stage", config=("train.epochs",), outputs=("out.txt",),
                 params={"counter": str(counter)})


def _run(stage, config, build_dir, cache, options):
    return build_mod.run_stage(stage, config, build_dir, cache, options, {}, {})


def test_a_cache_hit_does_not_run_the_stage_body(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))  # the child process imports sentinel_stage
    counter = tmp_path / "counter"
    build_dir = tmp_path / "b"
    build_dir.mkdir()
    cache = StageCache(tmp_path / "cache")
    options = build_mod.RunOptions(cache_dir=tmp_path / "cache", quiet=True, log=lambda m: None)
    stage = _sentinel_stage(counter)
    config = config_mod.load(None, ["train.epochs=3"])

    first = _run(stage, config, build_dir, cache, options)
    assert counter.read_text().count("ran") == 1 and not first["cached"]
    (build_dir / "out.txt").unlink()  # restored from the cache, not re-made
    second = _run(stage, config, build_dir, cache, options)
    assert counter.read_text().count("ran") == 1, "a cache hit executed the stage body"
    assert second["cached"] and second["key"] == first["key"] and second["epochs"] == 3
    assert (build_dir / "out.txt").read_text() == "epochs=3"

    other = _run(stage, config_mod.load(None, ["train.epochs=4"]), build_dir, cache, options)
    assert counter.read_text().count("ran") == 2 and not other["cached"] and other["key"] != first["key"]
    # a config field the stage does not read does not change its key
    same = _run(stage, config_mod.load(None, ["train.epochs=3", "qat.epochs=9"]), build_dir, cache, options)
    assert same["cached"] and counter.read_text().count("ran") == 2

    no_cache = build_mod.RunOptions(cache_dir=tmp_path / "cache", use_cache=False, quiet=True, log=lambda m: None)
    _run(stage, config, build_dir, cache, no_cache)
    assert counter.read_text().count("ran") == 3


def test_the_next_stages_process_starts_while_a_stage_runs_and_one_not_needed_ends(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    build_dir = tmp_path / "b"
    build_dir.mkdir()
    cache = StageCache(tmp_path / "cache")
    options = build_mod.RunOptions(cache_dir=tmp_path / "cache", quiet=True, log=lambda m: None)
    config = config_mod.load(None, [])
    first = _sentinel_stage(tmp_path / "counter1")
    second = Stage("sentinel2", "sentinel_stage", config=("train.epochs",), outputs=("out2.txt",),
                   params={"counter": str(tmp_path / "counter2"), "out": "out2.txt"})
    ahead = build_mod.Ahead(options.cache_dir)
    a = build_mod.run_stage(first, config, build_dir, cache, options, {}, {}, ahead=ahead, following=second)
    waiting = ahead.waiting
    assert waiting is not None and waiting.stage == second and waiting.proc.poll() is None
    assert not (tmp_path / "counter2").exists()  # started, not run: it waits for its request
    b = build_mod.run_stage(second, config, build_dir, cache, options, {}, {}, ahead=ahead)
    assert a["process"]["started_ahead"] is False and b["process"]["started_ahead"] is True
    assert ahead.waiting is None and waiting.proc.returncode == 0
    assert (tmp_path / "counter2").read_text() == "ran\n" and (build_dir / "out2.txt").exists()

    # a process whose stage turns out a cache hit gets no request and ends without running anything
    ahead.start(second, build_mod.log_path(build_dir, second))
    unused = ahead.waiting
    hit = build_mod.run_stage(first, config, build_dir, cache, options, {}, {}, ahead=ahead)
    assert hit["cached"]
    unused.proc.stdin.close()
    assert unused.proc.wait(timeout=30) == 0
    ahead.close()
    assert (tmp_path / "counter2").read_text() == "ran\n"


def test_a_corrupt_cache_entry_is_a_miss_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    counter, build_dir = tmp_path / "counter", tmp_path / "b"
    build_dir.mkdir()
    warnings = []
    cache = StageCache(tmp_path / "cache", warn=warnings.append)
    options = build_mod.RunOptions(cache_dir=tmp_path / "cache", quiet=True, log=lambda m: None)
    stage, config = _sentinel_stage(counter), config_mod.load(None, [])
    key = _run(stage, config, build_dir, cache, options)["key"]
    (tmp_path / "cache" / "stages" / key / "out.txt").write_text("epochs=999")  # bit rot
    again = _run(stage, config, build_dir, cache, options)
    assert not again["cached"] and counter.read_text().count("ran") == 2
    assert warnings and "corrupt" in warnings[0] and key[:12] in warnings[0]
    assert (build_dir / "out.txt").read_text() == "epochs=10"


def _records(build_dir):
    return {json.loads(p.read_text())["stage"]: json.loads(p.read_text()) for p in (build_dir / "records").glob("*.json")}


def _tiny(out, cache_dir, *sets):
    args = ["--quiet", "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"',
            "--set", f'data.calibration_file="{out}/calib.json"']
    for s in sets:
        args += ["--set", s]
    return edgebuild(*args, env={"EDGEBUILD_CACHE": str(cache_dir)})


def test_warm_rebuild_runs_nothing_and_a_changed_field_reruns_downstream(tiny_build, cache_dir, tmp_path):
    out = tmp_path / "warm"
    out.mkdir()
    (out / "calib.json").write_bytes((tiny_build["out"] / "calib.json").read_bytes())
    proc = _tiny(out, cache_dir)
    assert proc.returncode == 0, proc.stderr
    warm = out / "tiny"
    # the calibration set now exists (the first build pinned it): verified once (unless an earlier
    # test already did), nothing else runs
    assert {name for name, r in _records(warm).items() if not r["cached"]} <= {"calibration"}
    shutil.rmtree(warm / "logs", ignore_errors=True)
    proc = _tiny(out, cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert all(r["cached"] for r in _records(warm).values())
    assert not (warm / "logs").exists(), "no stage process may start on a full cache hit"
    for name in CORE_ARTIFACTS:
        assert sha256_file(warm / name) == sha256_file(tiny_build["dir"] / name)
    manifest = json.loads((warm / "manifest.json").read_text())
    assert all(s["cached"] for s in manifest["stages"].values())

    # qat.init_samples is read by qat only (and no other test uses this value with the shared cache):
    # data and train stay cached, qat and everything after re-run (one target of the two is enough to show it)
    one_target = 'validate.targets=["rpi5-litert"]'
    proc = _tiny(out, cache_dir, "qat.init_samples=131", one_target)
    assert proc.returncode == 0, proc.stderr
    ran = {name for name, r in _records(warm).items() if not r["cached"]}
    assert ran == {"qat", "export", "resources", "evaluate", "target:rpi5-litert"}
    # gate thresholds are not a stage's input: nothing re-runs, the verdict is recomputed
    proc = _tiny(out, cache_dir, "qat.init_samples=131", one_target, "gate.min_int8_accuracy=0.999")
    assert proc.returncode == 1 and all(r["cached"] for r in _records(warm).values())


def _kill_when(proc, build_dir, pattern, after_s):
    """SIGKILL the build (and its stage process) `after_s` seconds after `pattern` appears."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if list(build_dir.glob(pattern)):
            time.sleep(after_s)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.05)
    return False


def _artifacts_are_whole(build_dir):
    """Every artifact in the build directory equals the one its stage's record vouches for."""
    records = _records(build_dir) if (build_dir / "records").exists() else {}
    vouched = {n: h for r in records.values() for n, h in r["outputs"].items()}
    for path in build_dir.iterdir():
        if path.name.startswith(".") or path.is_dir() or path.name in ("manifest.json", "report.html"):
            continue  # (manifest and report are written atomically after the stages, not by one)
        assert path.name in vouched, f"{path.name} is in the build directory but no finished stage wrote it"
        assert sha256_file(path) == vouched[path.name], f"{path.name} is half-written or stale"


def test_sigkill_mid_stage_leaves_nothing_half_written(tiny_build, tmp_path):
    out, cache = tmp_path / "crash", own_cache(tmp_path / "cache")  # every stage really runs
    out.mkdir()
    (out / "calib.json").write_bytes((tiny_build["out"] / "calib.json").read_bytes())
    args = [sys.executable, "-m", "pipeline", "--quiet", "build", "--config", str(TINY),
            "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
            "--set", "validate.targets=[]"]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache)
    build_dir = out / "tiny"
    kills = 0
    # kill points: in training, during export, while writing the float .tflite
    # (the kill in training trains 200 epochs, about 20 s, so that it lands there however fast the machine)
    for pattern, after, more in ((".stage-train-*", 2.0, ["--set", "train.epochs=200"]), (".stage-export-*", 2.0, []),
                                 (".stage-export-*/model_float.tflite", 0.0, [])):
        proc = subprocess.Popen(args + more, cwd=REPO, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += _kill_when(proc, build_dir, pattern, after)
        _artifacts_are_whole(build_dir)
        if pattern == ".stage-train-*":
            assert not (build_dir / "records" / "train.json").exists(), "the kill meant for training came after it"
    assert kills >= 2, "the build finished before it could be killed"
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    _artifacts_are_whole(build_dir)
    assert not list(build_dir.glob(".stage-*")) and not list(build_dir.rglob("*.tmp"))
    # every stage ran here in a fresh cache with the tiny build's seed: the same bytes as the tiny build
    # (this is also the suite's same-seed reproducibility check; model_int8.onnx included, whose tf2onnx
    # node and constant numbering varies between runs until export renames them by position)
    for name in ("dataset.npz", "float.keras", "model_int8.tflite", "model_float.tflite", "model.onnx",
                 "model_int8.onnx"):
        assert sha256_file(build_dir / name) == sha256_file(tiny_build["dir"] / name), name


def test_a_locked_build_directory_is_refused_to_build_and_gate(tiny_build, tmp_path):
    build_dir = tmp_path / "new" / "tiny"
    with build_mod.build_lock(build_dir):  # this test process plays the running build
        proc = edgebuild("build", "--config", str(TINY), "--set", f'build.out_dir="{build_dir.parent}"',
                         "--set", "validate.targets=[]")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"locked by pid {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert [p.name for p in build_dir.iterdir()] == [".lock"], "the refused build must write nothing"

    done = tmp_path / "done" / "tiny"
    shutil.copytree(tiny_build["dir"], done, ignore=shutil.ignore_patterns(".lock"))
    before = (done / "manifest.json").read_bytes()
    with build_mod.build_lock(done):
        proc = edgebuild("gate", str(done), "--config", str(TINY))
    assert proc.returncode == 4 and "locked by pid" in proc.stderr, proc.stdout + proc.stderr
    assert (done / "manifest.json").read_bytes() == before
