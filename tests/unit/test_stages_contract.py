"""The stage contract: every stage declares what it reads and writes, the plan is consistent, and
the engine knows no stage by name."""

import ast
from pathlib import Path

from pipeline import stages
from pipeline.engine import config as config_mod

PACKAGE = Path(stages.__file__).resolve().parent.parent
ENGINE = PACKAGE / "engine"


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


def test_post_training_quantization_has_no_qat_stage_and_export_reads_the_float_model():
    for sets in (["qat.enabled=false"], ["qat.epochs=0"]):
        plan = {s.name: s for s in _plan(*sets)}
        assert "qat" not in plan and "qat.keras" not in plan["export"].inputs, sets
        assert {"float.keras", "calibration.json"} <= set(plan["export"].inputs)
    assert "qat.keras" in {s.name: s for s in _plan()}["export"].inputs


def test_the_cli_groups_are_the_plan_groups_in_order():
    groups = list(dict.fromkeys(s.group_name for s in _plan()))
    assert tuple(groups) == stages.GROUPS
    assert [s.name for s in _plan('validate.targets=["rpi5-litert"]') if s.group_name == "targets"] == ["target:rpi5-litert"]
    assert not [s for s in _plan("validate.targets=[]") if s.group_name == "targets"]


def test_the_engine_and_orchestrator_name_no_stage():
    names = {s.name for s in _plan()} | set(stages.GROUPS) | {"target"}
    for path in [*ENGINE.glob("*.py"), *(PACKAGE / "orchestrate").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name} names the stage {node.value!r}"


def test_the_manifest_is_assembled_without_reading_a_stage_record_by_name():
    """The manifest is assembled from what each stage module publishes (`publish`, `manifest`): the
    release modules index no stage record by name (they read the manifest's own fields)."""
    for path in (PACKAGE / "release").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "records":
                assert not isinstance(node.slice, ast.Constant), f"{path.name}:{node.lineno} reads a stage's record"


LAYERS = ("engine", "data", "device", "model", "release", "stages", "orchestrate", "cli", "__main__")  # the README's order


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source, module, package_init=False):
    """Every module a file imports, wherever the statement stands (functions, branches, try blocks)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = module.split(".")[: len(module.split(".")) - node.level + package_init]
                base = ".".join(package + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def _layer(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def import_graph():
    """{(importer layer, imported layer): [where]} over every module of the package."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for name in _imports(path.read_text(), module, path.name == "__init__.py"):
            if name.split(".")[0] != "pipeline" or name in ("pipeline", "pipeline.__version__"):
                continue
            a, b = _layer(module), _layer(name)
            if a and b and a != b:
                edges.setdefault((a, b), []).append(f"{module} imports {name}")
    return edges


def test_every_import_follows_the_layer_order_so_the_package_graph_has_no_cycle():
    edges = import_graph()
    assert {layer for edge in edges for layer in edge} <= set(LAYERS), "a package the README's layer order lacks"
    upward = [w for (a, b), where in edges.items() if LAYERS.index(b) > LAYERS.index(a) for w in where]
    assert not upward, f"imports against the layer order: {upward}"
    # and the order is what makes the graph acyclic: a topological sort of the edges exists
    remaining = {layer: {b for (a, b) in edges if a == layer} for layer in LAYERS}
    while remaining:
        free = [layer for layer, deps in remaining.items() if not deps & set(remaining)]
        assert free, f"a cycle among {sorted(remaining)}"
        for layer in free:
            del remaining[layer]


def test_no_module_imports_itself_back_through_others():
    """Within a package too: the module graph, every import statement counted, has no cycle."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {m: {n for n in _imports(p.read_text(), m, p.name == "__init__.py") if n in modules and n != m}
             for m, p in modules.items()}
    state = {}

    def visit(module, trail):
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", f"import cycle: {' -> '.join(trail + [module, other])}"
            if other not in state:
                visit(other, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_the_lint_sees_imports_inside_functions_and_relative_ones():
    source = ("def f():\n    from pipeline.orchestrate import build\n    if True:\n        import pipeline.stages.data\n"
              "try:\n    from ..release import gate\nexcept ImportError:\n    pass\n")
    found = set(_imports(source, "pipeline.engine.x"))
    assert {"pipeline.orchestrate.build", "pipeline.stages.data", "pipeline.release.gate"} <= found
