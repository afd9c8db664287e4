"""The engine on real builds: cache keys derived from code and toolchain, and stage processes that
import the installed code whatever the working directory holds."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO, TINY


def _records(build_dir):
    return {json.loads(p.read_text())["stage"]: json.loads(p.read_text()) for p in (build_dir / "records").glob("*.json")}


def _ran(build_dir):
    return {name for name, r in _records(build_dir).items() if not r["cached"]}


def _later_stages_follow_their_inputs(previous, now, ran, later):
    """A later stage (its own code and tools unchanged) re-runs exactly when a file it reads changed."""
    for name in later:
        changed = now[name]["key_parts"]["inputs"] != previous[name]["key_parts"]["inputs"]
        assert (name in ran) == changed, f"{name}: inputs changed {changed}, re-ran {name in ran}"


def test_an_edited_stage_or_upgraded_tool_reruns_that_stage_and_what_it_feeds(tiny_build, cache_dir, tmp_path):
    # A copy of the package, run as its own installation (PYTHONPATH); a working directory without one.
    src = tmp_path / "src"
    shutil.copytree(REPO / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(tiny_build["out"] / "calib.json", out / "calib.json")
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env.update(EDGEBUILD_CACHE=str(cache_dir), PYTHONPATH=str(src))

    def build():
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", "--quiet", "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"',
             "--set", f'data.calibration_file="{out}/calib.json"', "--set", "validate.targets=[]"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        return out / "tiny"

    b = build()  # the same code as the session's build: its cache entries are hits
    assert _ran(b) <= {"calibration"}, _ran(b)
    order = ["data", "calibration", "train", "qat", "export", "evaluate"]
    before = _records(b)

    # an edit of a module the qat stage imports (a real code change that leaves its results alone)
    qat_lib = src / "pipeline" / "model" / "qat.py"
    qat_lib.write_text(qat_lib.read_text() + "\nEDITED_FOR_A_TEST = True\n")
    b = build()
    after = _records(b)
    assert {"qat", "export"} <= _ran(b) and not _ran(b) & {"data", "calibration", "train"}, _ran(b)  # export imports it too
    assert after["qat"]["key_parts"]["code"] != before["qat"]["key_parts"]["code"]
    assert after["train"]["key"] == before["train"]["key"]
    _later_stages_follow_their_inputs(before, after, _ran(b), ["evaluate"])

    # an upgraded tool that only export runs: export re-runs, the stages before stay cached, and a
    # later stage runs again unless its inputs are byte-identical to last time
    fake = tmp_path / "site"
    (fake / "tf2onnx-99.0.dist-info").mkdir(parents=True)
    (fake / "tf2onnx-99.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: tf2onnx\nVersion: 99.0\n")
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(fake)])
    previous = _records(b)
    b = build()
    now = _records(b)
    assert not _ran(b) & set(order[:4]) and "export" in _ran(b), _ran(b)
    assert now["export"]["key_parts"]["toolchain"]["tf2onnx"] == "99.0"
    _later_stages_follow_their_inputs(previous, now, _ran(b), order[5:])
    manifest = json.loads((b / "manifest.json").read_text())
    assert manifest["toolchain"]["tf2onnx"] == "99.0"  # the versions that made the artifacts
    assert manifest["toolchain"]["keras"] == now["train"]["toolchain"]["keras"]


def test_stage_processes_start_ahead_and_jax_stages_use_the_compilation_cache_without_tensorflow(tiny_build,
                                                                                                  cache_dir):
    records = _records(tiny_build["dir"])  # a stage restored from this session's cache: the record of its run
    # each stage had its process started (and Keras imported) while the stage before it ran
    for name in ("qat", "export", "evaluate"):
        process = records[name]["process"]
        assert process["started_ahead"] is True, (name, process)
        assert process["import_s"] > 0 and process["waited_s"] >= 0
    def tensorflow(name):  # the distribution (tensorflow-cpu here) of any module the stage's process imported
        return [d for d in records[name]["toolchain"] if d.startswith("tensorflow")]

    for name in ("train", "qat", "evaluate"):  # Keras on JAX: TensorFlow is never imported there
        assert "jax" in records[name]["toolchain"] and not tensorflow(name), name
    assert tensorflow("export")
    entries = [p for p in (cache_dir / "jax").rglob("*") if p.is_file()]
    assert len(entries) >= 10, "JAX's persistent compilation cache kept no computations"


def test_stage_processes_run_the_installed_code_not_the_working_directorys(tmp_path):
    # A user project that has its own package called `pipeline` (with a build config in it).
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('HIJACKED').write_text('imported')\n"
        "raise SystemExit('the project\\'s own pipeline package was imported')\n")
    edgebuild = Path(sys.executable).with_name("edgebuild")
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")}
    env["EDGEBUILD_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run(
        [str(edgebuild), "--quiet", "build", "--until", "calibration", "--set", "data.image_size=8",
         "--set", f'data.calibration_file="{tmp_path}/calib.json"', "--set", f'build.out_dir="{tmp_path}/out"'],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "pipeline" / "HIJACKED").exists()
    assert set(_records(tmp_path / "out" / "digits")) == {"data", "calibration"}


def test_only_one_stage_never_leaves_a_manifest_that_no_longer_matches(tiny_build, cache_dir, tmp_path):
    d = tmp_path / "b" / "tiny"
    shutil.copytree(tiny_build["dir"], d, ignore=shutil.ignore_patterns(".lock", "logs"))
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache_dir)
    args = [sys.executable, "-m", "pipeline", "build", "--config", str(TINY), "--set", f'build.out_dir="{d.parent}"',
            "--set", f'data.calibration_file="{tiny_build["out"]}/calib.json"']
    proc = subprocess.run([*args, "--only", "qat", "--set", "qat.epochs=1"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "manifest removed, not rewritten: stage export was made from another qat.keras" in proc.stderr, proc.stderr
    assert not (d / "manifest.json").exists()
    proc = subprocess.run([*args, "--only", "gate"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 3 and "running gate on the finished build in" in proc.stderr, proc.stderr
