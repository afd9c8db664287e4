"""The stage contract. A stage is one module in `pipeline/stages/` that declares a `Stage` (or a
`stages(config)` function for stages with one instance per item, such as one per target) and a
`run(cfg, inputs, out_dir, ctx)` function. The engine reads these declarations and nothing else:
it never knows a stage by name.

- `config`: the "section" or "section.key" entries the stage reads. Its process receives only
  those (as `cfg.<section>`), and their values are part of the cache key, except `key_ignores`
  (a path whose file's content is keyed as an external input instead).
- `inputs` / `outputs`: file names in the build directory; inputs are earlier stages' outputs.
- `external(config)`: {name: content hash} of files outside the build directory that the stage
  reads (a data source, a pretrained weights file, a target profile). Part of the cache key.
- `pins`: {output: "section.key"}: after the stage, the output is copied to the path that config
  key names if no file is there yet (the versioned calibration set). The stage itself verifies a
  file that is there, which it declares as an external input.
- `toolchain`: the distributions whose versions change the stage's bytes. Part of the cache key,
  with the digest of the stage's code (computed by `pipeline.engine.codehash`).
- `optional`: outputs the stage may leave unwritten (a compiled model that its compiler refused); a
  run without them is not cached.
- `optional_inputs`: inputs the stage runs without when an earlier stage left them unwritten (its
  `run` finds only the present ones in `inputs`; the absent ones are not part of its key).
- `shardable`: the stage can run in parts on separate machines. Its `run` then receives
  ctx.params["shard"] = [i, n] and writes its part's arrays to shard.npz; its module's
  `merge(cfg, inputs, parts, out_dir, ctx)` makes the stage's outputs and record from the parts
  [(record, arrays)] (`pipeline.orchestrate.shards`).
"""

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # the module that holds `run`: the stage's process imports it, its code digest keys it
    config: tuple
    inputs: tuple = ()
    outputs: tuple = ()
    backend: str | None = None  # KERAS_BACKEND of the stage's process; None: Keras is not used
    toolchain: tuple = ()
    external: Callable | None = None
    pins: dict = field(default_factory=dict)
    key_ignores: tuple = ()  # "section.key" entries read but not keyed (a path whose content is keyed instead)
    group: str = ""  # the name --only / --until use (one "targets" group for every target); default: name
    params: dict = field(default_factory=dict)  # per-instance values passed to run as ctx.params
    shardable: bool = False
    optional: tuple = ()  # outputs that may be absent (see the module's docstring)
    optional_inputs: tuple = ()  # inputs that may be absent (see the module's docstring)
    cacheable: bool = True  # False: always run, never stored (a run on real hardware proves the hardware now)

    @property
    def group_name(self):
        return self.group or self.name


def check(name, got, limit, passed, baseline=None, detail=""):
    """One gate check: what was measured (`got`), the rule (`limit`, as text), whether it passed, the
    baseline's figure and a detail line. Every check of the gate has this form."""
    return {"name": name, "got": got, "limit": limit, "baseline": baseline, "passed": bool(passed), "detail": detail}


@dataclass
class StageContext:
    """What a running stage gets besides its config and inputs: progress output, the cache
    directory (for reusable environments such as emulated root filesystems), its parameters and
    the remote cache URL ('' for none) that such environments are restored from and stored in."""

    progress: object
    cache_dir: str
    params: dict
    remote: str = ""


def select_config(config, keys):
    """{section: {key: value}} holding only the declared entries."""
    selected = {}
    for entry in keys:
        section, _, key = entry.partition(".")
        values = config.section(section)
        if key:
            selected.setdefault(section, {})[key] = values[key]
        else:
            selected[section] = values
    return selected


def config_view(selected):
    """The object a stage's `run` receives: `cfg.<section>` is the typed section when the stage
    declared all of it, else a namespace of the keys it declared."""
    from pipeline.engine.config import SECTIONS

    view = {}
    for section, values in selected.items():
        cls = SECTIONS[section]
        full = set(values) == set(cls.__dataclass_fields__)
        view[section] = cls(**values) if full else SimpleNamespace(**values)
    return SimpleNamespace(**view)


def run_here(stage, config, inputs, out_dir, progress=None, cache_dir="", params=None):
    """Run a stage's `run` in this process, without the cache or a stage process: for tests and
    debugging of stages that need no Keras backend of their own."""
    import importlib

    from pipeline.engine.progress import Progress

    module = importlib.import_module(stage.module)
    ctx = StageContext(progress or Progress(None, quiet=True), cache_dir, params if params is not None else stage.params)
    return module.run(config_view(select_config(config, stage.config)), inputs, out_dir, ctx)
