"""Faults a build must survive cleanly: SIGTERM, a full disk, a hostile build name beside running
builds. Each ends with a clear exit code, nothing half-written, the lock released."""

import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import pytest

from conftest import REPO, TINY, edgebuild, own_cache
from pipeline.orchestrate import build as build_mod


def _start(out, cache, *sets, until=None):
    args = [sys.executable, "-m", "pipeline", "--quiet", "build", "--config", str(TINY), *(["--until", until] if until else []),
            "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
            "--set", "validate.targets=[]", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache)
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(pattern, root, proc, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if list(root.glob(pattern)):
            return True
        time.sleep(0.1)
    return False


@contextmanager
def _tmpfs(path, options):
    """A tmpfs mounted at `path` for the block (skip where this machine does not allow mounting)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here ({mounted.stderr.strip()[:100]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _lock_is_free(build_dir):
    with build_mod.build_lock(build_dir):
        return True


def _files(build_dir):
    return {p.relative_to(build_dir): p.read_bytes() for p in build_dir.rglob("*")
            if p.is_file() and p.name != ".lock" and "logs" not in p.parts}


def test_sigterm_mid_stage_kills_the_stage_and_leaves_the_last_good_build_as_it_was(tmp_path, cache_dir):
    out = tmp_path / "out"
    first = _start(out, cache_dir)  # the last good build: the session's cache has its stages
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    build_dir = out / "tiny"
    good = _files(build_dir)
    # A rebuild with another learning rate replaces float.keras, then is stopped in QAT.
    proc = _start(out, cache_dir, "train.learning_rate=0.002")
    assert _wait_for("tiny/.stage-qat-*/.request.json", out, proc), "qat never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # to the build only, as a CI runner's timeout would
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM); nothing half-written was published" in err and "Traceback" not in err, err
    assert not list(build_dir.glob(".stage-*")) and not list(build_dir.rglob("*.tmp"))
    assert not (build_dir / ".previous").exists()
    now = _files(build_dir)
    assert set(now) == set(good) and all(now[k] == good[k] for k in good), "the last good build changed"
    # qat's process, and export's, started ahead while qat ran (each names its log on its command line)
    alive = subprocess.run(["pgrep", "-af", str(build_dir / "logs")], capture_output=True, text=True).stdout.strip()
    assert not alive, f"a stage process outlived the build: {alive}"
    assert _lock_is_free(build_dir)


def test_a_full_disk_ends_with_exit_3_and_nothing_half_written(tmp_path):
    with _tmpfs(tmp_path / "small", "size=400k") as small:
        proc = _start(small, tmp_path / "cache")
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 3, err
        assert "the disk is full" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        build_dir = small / "tiny"
        assert not list(build_dir.glob(".stage-*")) and not list(build_dir.rglob("*.tmp"))
        assert not (build_dir / "manifest.json").exists()
        assert _lock_is_free(build_dir)


def test_a_hostile_build_name_beside_two_running_builds_harms_neither(tmp_path):
    out = tmp_path / "out"
    a = _start(out, own_cache(tmp_path / "cache-a"), 'build.name="a"', "train.epochs=3", until="train")
    b = _start(out, own_cache(tmp_path / "cache-b"), 'build.name="b"', "train.epochs=3", until="train")
    assert _wait_for("a/.stage-train-*", out, a) and _wait_for("b/.stage-train-*", out, b)
    for name in ('""', '"../out"', '"."'):  # each would have made the neighbours' directory its own
        hostile = _start(out, tmp_path / "cache-c", f"build.name={name}")
        _, err = hostile.communicate(timeout=120)
        assert hostile.returncode == 3 and "must be a name" in err, err
    neighbour = _start(out, tmp_path / "cache-c", 'build.name="c"', "data.image_size=8",
                       f'data.calibration_file="{tmp_path}/c-calib.json"', until="calibration")
    _, neighbour_err = neighbour.communicate(timeout=300)
    for proc, name in ((a, "a"), (b, "b")):
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        assert (out / name / "float.keras").exists() and not list((out / name).glob(".stage-*"))
    assert neighbour.returncode == 0, neighbour_err


def test_a_read_only_cache_is_a_warning_and_the_build_goes_on(tmp_path):
    with _tmpfs(tmp_path / "ro-cache", "ro,size=64k") as cache:
        proc = _start(tmp_path / "out", cache, "data.image_size=8", until="calibration")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "warning: could not store stage outputs in the cache" in err and "Read-only file system" in err, err
        assert (tmp_path / "out" / "tiny" / "calibration.json").exists()


def test_a_read_only_build_directory_is_exit_3_for_build_gate_and_report(tiny_build, tmp_path):
    """A read-only file system (root ignores permission bits, and CI runs as root, so a chmod proves
    nothing): building into it, re-gating or reporting a finished build there is exit 3 in one line
    naming what could not be written, never a traceback."""
    with _tmpfs(tmp_path / "ro", "size=20m") as ro:
        shutil.copytree(tiny_build["dir"], ro / "tiny", ignore=shutil.ignore_patterns(".lock", "logs"))
        remounted = subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True, text=True)
        if remounted.returncode != 0:
            pytest.skip(f"cannot remount a tmpfs read-only here ({remounted.stderr.strip()[:100]})")
        runs = {
            "gate": edgebuild("gate", str(ro / "tiny"), "--config", str(TINY)),
            "report": edgebuild("report", str(ro / "tiny")),
            "build": edgebuild("build", "--config", str(TINY), "--set", f'build.out_dir="{ro}"', "--set",
                               "build.name=\"other\"", "--set", "validate.targets=[]"),
        }
        for what, proc in runs.items():
            err = proc.stderr.strip()
            assert proc.returncode == 3, (what, proc.stdout + err)
            assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, (what, err)
            assert "Read-only file system" in err, (what, err)
