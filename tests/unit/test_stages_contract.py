"""The stage contract: every stage declares what it reads and writes, the plan is consistent, and
the engine knows no stage by name."""

import ast
from pathlib import Path

from pipeline import stages
from pipeline.engine import config as config_mod

ENGINE = Path(stages.__file__).resolve().parent.parent / "engine"


def _plan(*sets):
    return stages.plan(config_mod.load(None, list(sets)))


def test_every_input_is_an_earlier_output_and_every_output_has_one_stage():
    made = set()
    for stage in _plan():
        assert set(stage.inputs) <= made, f"{stage.name} reads {set(stage.inputs) - made}, which no earlier stage makes"
        assert not set(stage.outputs) & made, f"{stage.name} writes what an earlier stage wrote"
        made |= set(stage.outputs)
        for entry in stage.config + stage.key_ignores:
            section, _, key = entry.partition(".")
            assert section in config_mod.SECTIONS, entry
            assert not key or key in config_mod.SECTIONS[section].__dataclass_fields__, entry
        for output, key in stage.pins.items():
            assert output in stage.outputs and key in stage.config


def test_the_cli_groups_are_the_plan_groups_in_order():
    groups = list(dict.fromkeys(s.group_name for s in _plan()))
    assert tuple(groups) == stages.GROUPS
    assert [s.name for s in _plan('validate.targets=["rpi5-litert"]') if s.group_name == "targets"] == ["target:rpi5-litert"]
    assert not [s for s in _plan("validate.targets=[]") if s.group_name == "targets"]


def test_the_engine_names_no_stage():
    names = {s.name for s in _plan()} | set(stages.GROUPS) | {"target"}
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name} names the stage {node.value!r}"


def test_library_modules_never_import_stages():
    package = ENGINE.parent
    for path in package.rglob("*.py"):
        if "stages" in path.relative_to(package).parts or path.name in ("cli.py", "__main__.py"):
            continue
        text = path.read_text()
        if path.parent.name == "engine" and path.name in ("build.py", "shards.py"):
            continue  # the engine runs the registry (pipeline.stages.plan), by module, never by name
        assert "pipeline.stages" not in text and "from pipeline import stages" not in text, path
