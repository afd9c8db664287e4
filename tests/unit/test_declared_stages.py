"""Declared stages (README "Adding a stage"): a module saved in pipeline/stages/ joins the plan, the
config and the --only names; one that breaks the contract is refused with one line (exit 3). Each case
runs on a copy of the package, so the package under test is never edited."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def readme_stage():
    text = (REPO / "README.md").read_text()
    section = text.split("### Adding a stage", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_block_is_a_complete_stage_of_at_most_40_lines():
    block = readme_stage()
    assert len(block.splitlines()) <= 40
    for part in ("CONFIG", "STAGE", "SCHEMA", "def run(", "def manifest(", "def gate(", "def report("):
        assert part in block
GOOD = '''from dataclasses import dataclass
from pipeline.engine.config import setting
from pipeline.engine.stage import Stage, check

@dataclass(frozen=True)
class Config:
    limit: int = setting(3, "a limit", min=1)

CONFIG = Config
AFTER = "qat"
STAGE = Stage("probe", __name__, config=("probe",), inputs=("model_qat.keras",))

def run(cfg, inputs, out_dir, ctx):
    return {"n": cfg.probe.limit}
'''


@pytest.fixture()
def copy(tmp_path):
    shutil.copytree(REPO / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "targets").symlink_to(REPO / "targets")
    return tmp_path


def python(root, code):
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})


def cli(root, *args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})


def test_a_saved_module_joins_plan_groups_and_config(copy):
    (copy / "pipeline" / "stages" / "probe.py").write_text(GOOD)
    out = python(copy, "from pipeline import stages; from pipeline.engine import config\n"
                       "c = config.load(None, ['probe.limit=5'])\n"
                       "print(stages.GROUPS); print([s.name for s in stages.plan(c)]); print(c.probe.limit)\n"
                       "print(c.to_dict()['probe'], 'probe' in config.describe())")
    assert out.returncode == 0, out.stderr
    groups, plan, limit, rest = out.stdout.splitlines()
    assert "'qat', 'probe', 'export'" in groups
    assert "'qat', 'probe', 'export'" in plan
    assert limit == "5" and rest == "{'limit': 5} True"


def test_declared_stages_after_one_stage_run_by_name(copy):
    for name in ("zeta", "alpha"):
        (copy / "pipeline" / "stages" / f"{name}.py").write_text(
            GOOD.replace('"probe"', f'"{name}"').replace("cfg.probe", f"cfg.{name}"))
    out = python(copy, "from pipeline import stages; print(stages.GROUPS)")
    assert "'qat', 'alpha', 'zeta', 'export'" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("name, text, says", [
    ("metrics", GOOD.replace('"probe"', '"metrics"').replace("cfg.probe", "cfg.metrics"), "the manifest"),
    ("probe", GOOD.replace('setting(3, "a limit", min=1)', "3"), "has no default and description"),
    ("probe", GOOD.replace('AFTER = "qat"', 'AFTER = "training"'), "no built-in stage"),
    ("probe", GOOD.replace('Stage("probe"', 'Stage("other"'), "named after its file"),
    ("probe", GOOD + "\ndef (:\n", "cannot be imported: SyntaxError"),
    ("build", GOOD.replace('"probe"', '"build"').replace("cfg.probe", "cfg.build"), "already owns"),
    ("to_dict", GOOD.replace('"probe"', '"to_dict"').replace("cfg.probe", "cfg.to_dict"), "already owns"),
    ("probe", GOOD.replace('STAGE = Stage("probe", __name__, config=("probe",), inputs=("model_qat.keras",))',
                           'STAGE = "probe"'), "a stage declares STAGE = pipeline.engine.stage.Stage"),
    ("probe", GOOD.replace("CONFIG = Config", "CONFIG = dict"), "must be a frozen dataclass"),
    ("probe", GOOD.replace('limit: int = setting(3, "a limit", min=1)', "limit: int"), "has no default and description"),
    ("probe", GOOD.replace('config=("probe",)', 'config=("probe", "train.epochz")'), "reads the config entry 'train.epochz'"),
])
def test_a_module_that_breaks_the_contract_is_refused_in_one_line(copy, name, text, says):
    (copy / "pipeline" / "stages" / f"{name}.py").write_text(text)
    out = cli(copy, "config")
    assert out.returncode == 3, out.stdout + out.stderr
    assert says in out.stderr and f"stages/{name}.py" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
