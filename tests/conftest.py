"""Shared fixtures. The tests run the real chain (JAX, the TFLite converter, tf2onnx, qemu) on a
tiny model; `tiny_build` runs it once per run through the real CLI and is shared, also between the
pytest-xdist workers of `make test` (`-n 2 --dist loadfile`: a test file's tests, and so its module
fixtures, stay on one worker).

Two tiers: tests/unit/ runs in-process in well under a minute (`make test-fast`, or
`pytest -m "not slow"`); every other test is marked `slow` here. `make test` runs both."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.engine.fsutil import file_lock

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "tiny.toml"
ALL_TARGETS = ["rpi4-bookworm-tflite", "rpi5-litert", "rpi5-onnxruntime", "cortex-m-tflm", "ethos-u55-128"]  # tiny_build
# validates on each
SIGNS = REPO / "tests" / "data" / "signs"  # 30 real photos per class (see its SOURCE.md and LICENSE)
UNIT = REPO / "tests" / "unit"


# The longest test files first, longest to shortest (their seconds in one `make test` from a fresh clone,
# 2026-12-04, AMD EPYC, 2 cores), so that `make test`'s two workers do not end with one of them alone on a long
# file (`--no-loadscope-reorder`: the files are handed out in this order, the others after them in collection
# order). test_usermodel.py makes the tiny build a third of the way in; the feature files need none.
SLOWEST_FIRST = ("test_features.py",  # 184 s
                 "test_usermodel.py",  # 166 s, the tiny build's 40 s included
                 "test_transformers.py",  # 80 s, one ViT build, no tiny build needed
                 "test_transfer.py",  # 74 s
                 "test_byo.py",  # 60 s
                 "test_validate_model.py",  # 57 s
                 "test_cache.py", "test_applications.py", "test_boards.py", "test_gate.py",  # 47-51 s each
                 "test_multiprocess.py",  # 45 s
                 "test_faults.py", "test_remote_cache.py", "test_formats.py", "test_engine.py",  # 32-36 s each
                 "test_shards.py", "test_model_transformer.py")  # 30 and 26 s


def pytest_collection_modifyitems(items):
    for item in items:
        if UNIT not in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))


def edgebuild(*args, cwd=REPO, env=None, timeout=900):
    """Run the real CLI in a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KERAS_BACKEND", None)  # the CLI chooses the backend per stage
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


def _shared(tmp_path_factory, name):
    """A directory every pytest-xdist worker of this run shares (without workers, the session's own), and
    the lock that makes a session fixture once per run, not once per worker."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name, file_lock(base / f"{name}.lock", lambda holder: None)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh stage cache per run (shared by its workers), so every stage runs once in the run; the
    emulated target environments are shared with the machine's own cache (set up cold once, in the
    first run on a machine: each is keyed by its target file's hash and verified by a self-test when
    made), and so is JAX's compilation cache (a speed-up only: the bench checks the artifacts
    byte-identical with and without). A test that needs a stage to run uses a config no other test
    uses, or a cache of its own."""
    from pipeline.cli import default_cache_dir

    cache, lock = _shared(tmp_path_factory, "cache")
    with lock:
        if not cache.exists():
            made = cache.with_name("cache.new")  # complete before any worker sees it
            shutil.rmtree(made, ignore_errors=True)
            made.mkdir()
            for shared in ("targets", "jax"):
                (default_cache_dir() / shared).mkdir(parents=True, exist_ok=True)
                (made / shared).symlink_to(default_cache_dir() / shared, target_is_directory=True)
            made.rename(cache)
    return cache


def own_cache(path):
    """A stage cache of a test's own (every stage runs), made at `path`, whose JAX compilation cache starts
    as a hard-linked copy of the machine's: the stages compile nothing the suite has compiled before,
    and what this cache gains (or a build killed mid-write leaves half-written) stays in it. JAX writes
    an entry once and never rewrites it, so the linked entries are never changed through either name."""
    from pipeline.cli import default_cache_dir

    machine = default_cache_dir() / "jax"
    path.mkdir(parents=True)
    if machine.is_dir():
        shutil.copytree(machine, path / "jax", copy_function=_link_or_copy)
    return path


def _link_or_copy(source, target):
    try:
        os.link(source, target)
    except OSError:  # another file system (a tmpfs /tmp), or links refused
        shutil.copy2(source, target)


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, cache_dir):
    """The tiny config built once per run on every target; a failed build fails each test that needs
    it with the build's output (built once, not again by each worker)."""
    out, lock = _shared(tmp_path_factory, "builds")
    done, failed = out / "stdout.txt", out / "failed.txt"
    with lock:
        if not done.exists() and not failed.exists():
            out.mkdir(exist_ok=True)
            (out / "tmp").mkdir(exist_ok=True)  # its TMPDIR: a build leaves nothing there (test_chain checks)
            proc = edgebuild(
                "--quiet", "build", "--config", str(TINY),
                "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
                "--set", f"validate.targets={json.dumps(ALL_TARGETS)}",
                env={"EDGEBUILD_CACHE": str(cache_dir), "TMPDIR": str(out / "tmp")},
            )
            if proc.returncode == 0:
                done.write_text(proc.stdout)
            else:
                failed.write_text(f"the tiny build failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    if failed.exists():
        pytest.fail(failed.read_text(), pytrace=False)
    build_dir = out / "tiny"
    return {"dir": build_dir, "out": out, "manifest": json.loads((build_dir / "manifest.json").read_text()),
            "stdout": done.read_text(), "tmp": out / "tmp"}


MINUS_ONE_TO_ONE = "preprocess.pixel_range=[-1, 1]"  # the input convention of the models made outside


@pytest.fixture(scope="session")
def outside(tmp_path_factory):
    """Model files made the way a team outside edgebuild makes them (tests/outside/make_models.py: plain
    TensorFlow and its converter), made once per run and shared by the workers: (directory, expected)."""
    out, lock = _shared(tmp_path_factory, "outside")
    with lock:
        if not (out / "expected.json").exists():
            proc = subprocess.run([sys.executable, str(REPO / "tests" / "outside" / "make_models.py"), str(out)],
                                  capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "expected.json").read_text())


def validate(outside_dir, cache_dir, model, *args):
    """`edgebuild validate` of one of the models made outside, on its test set."""
    return edgebuild("validate", str(outside_dir / model), "--data", str(outside_dir / "test.npz"),
                     "--set", MINUS_ONE_TO_ONE, *args, env={"EDGEBUILD_CACHE": str(cache_dir)})


def has_vnni():
    """Whether this x86 CPU has VNNI. Without it, onnxruntime's x86 int8 kernels multiply-add pairs of
    8-bit values into saturating 16-bit sums (VPMADDUBSW, the "saturation issue" of pre-VNNI x86): on an
    AVX2-only AMD EPYC, a QDQ model with large int8 inputs then disagrees with the same file run by
    LiteRT or by onnxruntime on aarch64, and the gate rightly fails it."""
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    return "avx512_vnni" in flags or "avx_vnni" in flags


def gate_failed_only(proc, manifest_path, names):
    """On a host whose runtime is known to differ (see has_vnni): the build published its manifest, and its
    gate failed with exactly the checks `names`."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = [c["name"] for c in json.loads(Path(manifest_path).read_text())["gate"]["checks"] if not c["passed"]]
    assert failed == list(names), failed
