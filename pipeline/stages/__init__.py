"""The stages of a build, in order. Each module declares its own contract (`pipeline.engine.stage`).

Built-in stages run in ORDER (a full build) or VALIDATION_ORDER (the validation of a model file built
elsewhere, `validate.model`). Any other module saved in this package that declares a `STAGE` is a
*declared stage*, found here with no other file edited:
- it runs in full builds, after the group its `AFTER` names ('' or absent: last);
- its `CONFIG` dataclass (keys made with `pipeline.engine.config.setting`) is the config section of
  the module's name: `edgebuild config`, edgebuild.toml and --set know it;
- `manifest(record, config)` gives its manifest section (under the module's name), checked against
  its `SCHEMA` (a JSON Schema fragment); `gate(section, config, baseline_section)` gives its gate
  checks (`pipeline.engine.stage.check`); `report(section)` gives its report lines.
A built-in stage may give its manifest section through the same `manifest` hook (calibration, train,
qat and resources do). Its shared manifest fields (its artifacts, metrics, splits...) come from its
`publish(own_records, config, build_dir)` hook, merged into the manifest in plan order: the manifest
module assembles them and names no stage.
The orchestrator, manifest, gate, report and CLI reach stages only through the functions below."""

import importlib
import pkgutil
from pathlib import Path

from pipeline.engine.config import declare_section
from pipeline.engine.errors import InputError
from pipeline.engine.stage import Stage, check
from pipeline.release.sections import RESERVED_SECTIONS

ORDER = ("data", "calibration", "train", "qat", "export", "resources", "evaluate", "target")
VALIDATION_ORDER = ("model_file", "resources", "testset", "host", "target")
GROUP_OF = {"target": "targets"}  # a module's --only / --until name where it is not the module's own
TARGETS = GROUP_OF["target"]  # the group of every target stage: `edgebuild validate BUILD --target T` runs it
ALONE = ("check_model",)  # built-in stages a command runs outside any build (`edgebuild check-model`)


def _find_declared():
    """The declared stage modules, by name; their config sections are declared on the way."""
    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in ORDER + VALIDATION_ORDER + ALONE or info.name.startswith("_"):
            continue
        where = f"the stage module {Path(__path__[0]) / info.name}.py"
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception as exc:  # noqa: BLE001 (any error of a user's module is reported, one line)
            raise InputError(f"{where} cannot be imported: {type(exc).__name__}: {exc}. Fix it, or remove the "
                             "file.") from None
        if not hasattr(module, "STAGE"):
            continue
        if not isinstance(module.STAGE, Stage):
            raise InputError(f"{where} declares STAGE = {module.STAGE!r:.80}; a stage declares "
                             f"STAGE = pipeline.engine.stage.Stage({info.name!r}, __name__, config=(...), ...).")
        if info.name in RESERVED_SECTIONS or info.name in GROUP_OF.values() or info.name in ("manifest", "gate"):
            raise InputError(f"{where} is named {info.name!r}, which the manifest or the command line already uses. "
                             "Rename the file.")
        if module.STAGE.name != info.name:
            raise InputError(f"{where} declares a stage named {module.STAGE.name!r}; a declared stage is named after "
                             f"its file. Use Stage({info.name!r}, __name__, ...).")
        after = getattr(module, "AFTER", "")
        if after and after not in ORDER:
            raise InputError(f"{where} runs AFTER = {after!r}, which is no built-in stage; choose one of "
                             f"{', '.join(ORDER)}, or '' to run last.")
        if hasattr(module, "CONFIG"):
            declare_section(info.name, module.CONFIG, where)
        found[info.name] = module
    return found


def _check_config_entries(declared):
    """Every config entry a declared stage reads names a section (built-in or declared) and its key."""
    from pipeline.engine.config import SECTIONS

    for name, module in declared.items():
        for entry in module.STAGE.config:
            section, _, key = entry.partition(".")
            fields = getattr(SECTIONS.get(section), "__dataclass_fields__", {})
            if section not in SECTIONS or key and key not in fields:
                raise InputError(f"the stage module {module.__file__} reads the config entry {entry!r}, which no "
                                 "config section declares. Declare it in its CONFIG, or read an existing key.")


def _in_order(names, declared):
    """The built-in module names with each declared stage after its AFTER (several after one: by name)."""
    names = list(names)
    placed = {}
    for name, module in declared.items():  # sorted by name
        after = getattr(module, "AFTER", "")
        at = names.index(after) + 1 + placed.get(after, 0) if after else len(names)
        placed[after] = placed.get(after, 0) + 1
        names.insert(at, name)
    return names


DECLARED = _find_declared()  # at import: their config sections exist before any config is read
_check_config_entries(DECLARED)


def _modules(config):
    """The module names of a plan, in order: the built-in ones with each declared stage after its AFTER."""
    return list(VALIDATION_ORDER) if config.validate.model else _in_order(ORDER, DECLARED)


def _plan_modules(config):
    return [(name, DECLARED.get(name) or importlib.import_module(f"{__name__}.{name}")) for name in _modules(config)]


def plan(config):
    """Every stage of a full build (or of the validation of a model file), in order."""
    stages = []
    for _, module in _plan_modules(config):
        stages += module.stages(config) if hasattr(module, "stages") else [module.STAGE]
    return stages


# --only / --until names of a full build, in order (a test checks them against the plan)
GROUPS = tuple(GROUP_OF.get(n, n) for n in _in_order(ORDER, DECLARED))


def target_stage_names(targets):
    """The stage names of the given targets' stages (for `edgebuild validate BUILD --target T --shard`)."""
    from pipeline.stages.target import stage_name

    return [stage_name(t) for t in targets]


def _own_records(module, config, records):
    """{stage name: record} of a plan module's stages that ran."""
    own = module.stages(config) if hasattr(module, "stages") else [module.STAGE]
    return {stage.name: records[stage.name] for stage in own if stage.name in records}


def publish_fields(config, records, build_dir):
    """The manifest fields each stage module of the plan contributes (`publish(own_records, config,
    build_dir)`: a built-in stage's artifacts, metrics, splits...), in plan order."""
    return [module.publish(_own_records(module, config, records), config, build_dir)
            for _, module in _plan_modules(config) if hasattr(module, "publish")]


def manifest_sections(config, records):
    """{name: section} of every stage module of this build's plan that gives its own manifest section
    (`manifest(record, config)`, built-in or declared) and ran."""
    return {name: module.manifest(records[name], config) for name, module in _plan_modules(config)
            if hasattr(module, "manifest") and name in records}


def schemas():
    """{name: JSON Schema fragment} of the declared stages' manifest sections."""
    return {name: module.SCHEMA for name, module in DECLARED.items() if hasattr(module, "SCHEMA")}


def gate_checks(manifest, config, baseline=None):
    """The gate checks of the plan's stage modules that declare `gate(section, config, baseline)`, built-in
    or declared, in plan order. A declared stage whose section the manifest lacks fails its check: the
    build was made without it (a built-in one is skipped: a build from before its section)."""
    checks = []
    if manifest.get("kind") == "validation":
        return checks
    for name, module in _plan_modules(config):
        if not hasattr(module, "gate"):
            continue
        if name not in manifest and name not in DECLARED:
            continue
        if name not in manifest:
            checks.append(check(f"{name}: section in the manifest", "missing", "present", False,
                                detail=f"the manifest was made without the stage {name}; run edgebuild build"))
            continue
        checks += module.gate(manifest[name], config, (baseline or {}).get(name))
    return checks


def report_sections(manifest):
    """[(title, lines)] of the declared stages whose sections the manifest holds."""
    return [(name, list(module.report(manifest[name]))) for name, module in DECLARED.items()
            if hasattr(module, "report") and name in manifest]
