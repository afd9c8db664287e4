"""The README's "Adding a stage" example, saved unchanged as a new module of a copy of the package, runs
in the next build and shows up in `edgebuild config`, the manifest, the gate and the report, with no
other file edited."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY
from tests.unit.test_declared_stages import readme_stage


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A copy of the package (and its targets) with the README's block saved as pipeline/stages/opcount.py."""
    root = tmp_path_factory.mktemp("declared")
    shutil.copytree(REPO / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "targets").symlink_to(REPO / "targets")
    (root / "pipeline" / "stages" / "opcount.py").write_text(readme_stage())
    return root


def run(package, *args, env=None):
    full = {**os.environ, "PYTHONPATH": str(package), **(env or {})}
    full.pop("KERAS_BACKEND", None)
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=package, env=full, capture_output=True,
                          text=True, timeout=900)


def test_the_copy_runs_its_own_code(package):
    out = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=package,
                         env={**os.environ, "PYTHONPATH": str(package)}, capture_output=True, text=True)
    assert out.stdout.strip() == str(package / "pipeline" / "__init__.py")


def test_config_and_set_know_the_section(package):
    described = run(package, "config")
    assert described.returncode == 0, described.stderr
    assert "[opcount]" in described.stdout and "max_ops = 200" in described.stdout
    wrong = run(package, "build", "--set", "opcount.max_opz=3")
    assert wrong.returncode == 3 and "opcount.max_opz" in wrong.stderr and "max_ops" in wrong.stderr
    low = run(package, "build", "--set", "opcount.max_ops=0")
    assert low.returncode == 3 and "between 1" in low.stderr


def test_a_build_runs_it_into_manifest_gate_and_report(package, cache_dir):
    out = package / "build"
    sets = ["--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
            "--set", "validate.targets=[]"]
    proc = run(package, "build", "--config", str(TINY), *sets, env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = json.loads((out / "tiny" / "manifest.json").read_text())
    ops = manifest["artifacts"]["int8_tflite"]["ops"]
    by_type = {}
    for op in ops:
        by_type[op["name"]] = by_type.get(op["name"], 0) + op["count"]
    assert manifest["opcount"] == {"ops": sum(by_type.values()), "by_type": by_type}
    assert list(manifest["stages"]).index("opcount") == list(manifest["stages"]).index("export") + 1
    check = next(c for c in manifest["gate"]["checks"] if c["name"] == "int8 operators")
    assert check["passed"] and check["got"] == manifest["opcount"]["ops"] and check["limit"] == "<= 200"
    assert f"int8 operators: {manifest['opcount']['ops']} (" in proc.stdout
    assert "<h2>opcount</h2>" in (out / "tiny" / "report.html").read_text()

    # its threshold decides the verdict: gate again with a limit the model exceeds
    regate = run(package, "gate", str(out / "tiny"), "--set", "opcount.max_ops=1")
    assert regate.returncode == 1, regate.stdout + regate.stderr
    assert re.search(r"✗ +int8 operators", regate.stdout)
    # and --only knows it by its file name
    only = run(package, "build", "--config", str(TINY), *sets, "--only", "opcount",
               env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert only.returncode == 0, only.stdout + only.stderr
