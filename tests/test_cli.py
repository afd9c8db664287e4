"""The CLI: fast help, one-line errors with exit code 3 for bad config, nothing written."""

import subprocess
import sys

from conftest import REPO, edgebuild


def test_help_is_fast_and_imports_no_framework():
    code = ("import sys, time; t = time.perf_counter(); from pipeline import cli; "
            "heavy = [m for m in ('tensorflow', 'jax', 'keras', 'onnxruntime', 'ai_edge_litert') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO).stdout
    assert out.strip() == "[]"
    proc = edgebuild("--help")
    assert proc.returncode == 0 and "Exit codes" in proc.stdout
    for sub in ("build", "gate", "validate", "target", "cache", "config"):
        assert sub in proc.stdout


def _bad(tmp_path, *args):
    proc = edgebuild("build", "--set", f'build.out_dir="{tmp_path}"', *args)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert len(proc.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "digits" / "manifest.json").exists()
    return proc.stderr


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    assert "Did you mean 'epochs'?" in _bad(tmp_path, "--set", "train.epoch=3")


def test_unknown_section_and_bad_types_and_ranges(tmp_path):
    assert "Did you mean 'train'?" in _bad(tmp_path, "--set", "trian.epochs=3")
    assert "must be of type int; received 'three'" in _bad(tmp_path, "--set", 'train.epochs="three"')
    assert "must be between 1 and 1000000; received 0" in _bad(tmp_path, "--set", "train.batch_size=0")
    assert "must be one of 1, 3" in _bad(tmp_path, "--set", "data.channels=2")


def test_missing_data_source_is_one_line(tmp_path):
    err = _bad(tmp_path, "--set", f'data.source="{tmp_path}/nope"', "--set", 'data.calibration_file="x.json"')
    assert "does not exist" in err


def test_cache_clear_empties_the_stages_and_jaxs_compilation_cache_and_keeps_the_targets(tmp_path):
    for part in ("stages/0a1b", "jax/cpu-key", "targets/rpi5-litert-0a1b"):
        (tmp_path / part).mkdir(parents=True)
        (tmp_path / part / "entry").write_bytes(b"x" * 2**20)
    proc = edgebuild("cache", "clear", env={"EDGEBUILD_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert f"removed 1 cached stage outputs and JAX's compilation cache (1.0 MiB) from {tmp_path}" in proc.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["targets"]
    assert (tmp_path / "targets" / "rpi5-litert-0a1b" / "entry").exists()
