"""Shared fixtures. The tests run the real chain (JAX, the TFLite converter, tf2onnx, qemu) on a
tiny model; `tiny_build` runs it once per session through the real CLI and is shared."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "tiny.toml"
SIGNS = REPO.parent / "shared" / "datasets" / "sign-language-digits" / "Dataset"


def edgebuild(*args, cwd=REPO, env=None, timeout=900):
    """Run the real CLI in a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("KERAS_BACKEND", None)  # the CLI chooses the backend per stage
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, env=full_env,
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A fresh cache per session, so the emulated targets are set up cold in every CI run."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("builds")
    proc = edgebuild(
        "--quiet", "build", "--config", str(TINY),
        "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
        env={"EDGEBUILD_CACHE": str(cache_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    build_dir = out / "tiny"
    return {"dir": build_dir, "out": out, "manifest": json.loads((build_dir / "manifest.json").read_text()),
            "stdout": proc.stdout}
