"""Run the stages of a build in order, each in its own process, through the stage cache.

Outputs are written into a private staging directory and published into the build directory only
when the stage finished, each file with os.replace; a lock file stops two builds from writing the
same build directory at once.
"""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import stages as stage_registry
from .cache import StageCache, stage_key
from .errors import EdgebuildError, InputError, StageError
from .fsutil import atomic_copy, atomic_write_text, sha256_file


@dataclass
class RunOptions:
    """How to run (not what to build): nothing here changes an artifact."""

    cache_dir: Path
    use_cache: bool = True
    quiet: bool = False
    debug: bool = False
    log: callable = print


@dataclass
class BuildResult:
    build_dir: Path
    records: dict = field(default_factory=dict)
    manifest: dict | None = None
    gate: dict | None = None


# Config values that name a file whose content is already part of the key (_external_inputs): the
# same calibration set at another path is the same input.
CONTENT_KEYED = {"data": ("calibration_file",)}


def _config_values(config, keys):
    values = {}
    for key in keys:
        section, _, name = key.partition(".")
        sub = config.section(section)
        if name:
            values[key] = sub[name]
        else:
            values[key] = {k: v for k, v in sub.items() if k not in CONTENT_KEYED.get(section, ())}
    return values


def _external_inputs(stage, config):
    """Inputs that come from outside the build directory: data source, calibration file, target."""
    if stage.name == "data":
        from .stages.data import source_fingerprint

        calib = Path(config.data.calibration_file)
        return {
            "source": source_fingerprint(config.data.source),
            "test_source": source_fingerprint(config.data.test_source, "data.test_source") if config.data.test_source else None,
            "calibration_file": sha256_file(calib) if calib.is_file() else None,
        }
    if stage.backend:  # a Keras stage
        from .usermodel import kind, source_hash

        external = {}
        recipe_kind = kind(config.train.recipe)
        # a user function's code is not inside the .keras files: it is an input of every Keras
        # stage; a .keras recipe and pretrained weights are inputs of train
        if recipe_kind == "function" or (recipe_kind == "keras_file" and stage.name == "train"):
            external["recipe"] = source_hash(config.train.recipe)
        if stage.name == "train" and config.train.weights and Path(config.train.weights).is_file():
            external["weights"] = sha256_file(config.train.weights)
        return external
    if "target" in stage.params:
        from .targets import load_target

        return {"target": load_target(stage.params["target"]).sha256}
    return {}


@contextmanager
def build_lock(build_dir):
    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise StageError(
                f"only one build may write {build_dir} at a time; it is locked by {holder}. "
                "Wait for that build to finish or set build.name to another name."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_leftovers(build_dir):
    """Remove what a killed build left behind: staging directories and temporary files (all hidden,
    never an artifact). Called under the build lock, so no live build owns them."""
    removed = 0
    for path in build_dir.rglob(".*"):
        if path.name == ".lock" or not path.exists():
            continue
        if path.is_dir() and path.name.startswith(".stage-"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif path.is_file() and (path.name.endswith(".tmp") or ".tmp." in path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(build_dir):
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=build_dir, prefix=".probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise InputError(
            f"the output directory must be writable; {build_dir} is not ({exc.strerror}). "
            "Set build.out_dir to a writable directory."
        ) from None


def _run_child(stage, config, inputs, out_dir, options, build_dir):
    logs = build_dir / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"{stage.name.replace(':', '-')}.log"
    request = {
        "module": stage.module,
        "config": config.to_dict(),
        "inputs": {k: str(v) for k, v in inputs.items()},
        "out_dir": str(out_dir),
        "params": {**stage.params, **({"cache_dir": str(options.cache_dir)} if "target" in stage.params else {})},
        "quiet": options.quiet,
        "log": str(log_path),
        "result": str(out_dir / ".result.json"),
    }
    request_path = out_dir / ".request.json"
    request_path.write_text(json.dumps(request))
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
    if stage.backend:
        env["KERAS_BACKEND"] = stage.backend
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "pipeline.runner", str(request_path)], env=env)
    result_path = out_dir / ".result.json"
    if not result_path.exists():
        raise StageError(
            f"stage {stage.name} died without a result (exit status {proc.returncode}); "
            f"its log is {log_path}."
        )
    result = json.loads(result_path.read_text())
    if not result["ok"]:
        if options.debug:
            print(result["traceback"], file=sys.stderr)
        if result["exit_code"] is not None:
            err = InputError(result["message"]) if result["exit_code"] == 3 else StageError(result["message"])
        else:
            err = StageError(f"stage {stage.name} failed: {result['message']}. Log: {log_path}")
        raise err
    return result["record"]


def run_stage(stage, config, build_dir, cache, options):
    """Run one stage (or restore it from the cache); returns its record."""
    inputs = {}
    for name in stage.inputs:
        path = build_dir / name
        if not path.exists():
            raise InputError(
                f"stage {stage.name} needs {name} from an earlier stage; {path} does not exist. "
                "Run the earlier stages first (edgebuild build)."
            )
        inputs[name] = path
    key = stage_key(
        stage, _config_values(config, stage.config),
        {n: sha256_file(p) for n, p in inputs.items()}, _external_inputs(stage, config),
    )
    started = time.perf_counter()
    hit = cache.get(key, stage.outputs) if (cache and options.use_cache) else None
    if hit:
        entry, record = hit
        for name in stage.outputs:
            atomic_copy(entry / name, build_dir / name)
        cached = True
    else:
        staging = Path(tempfile.mkdtemp(dir=build_dir, prefix=f".stage-{stage.name.replace(':', '-')}-"))
        try:
            record = _run_child(stage, config, inputs, staging, options, build_dir)
            missing = [n for n in stage.outputs if not (staging / n).exists()]
            if missing:
                raise StageError(f"stage {stage.name} finished without writing {', '.join(missing)}.")
            if cache:
                cache.put(key, staging, stage.outputs, record)
            for name in stage.outputs:
                os.replace(staging / name, build_dir / name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        cached = False
    if stage.name == "data":
        record = _data_record(record, config, cached, cache, stage, inputs, build_dir)
    record = {
        **record,
        "stage": stage.name,
        "key": key,
        "cached": cached,
        "wall_seconds": round(time.perf_counter() - started, 2),
        "outputs": {n: sha256_file(build_dir / n) for n in stage.outputs},
    }
    atomic_write_text(build_dir / "records" / f"{stage.name.replace(':', '-')}.json", json.dumps(record, indent=1))
    options.log(f"{'cached' if cached else 'ran':>6}  {stage.name:<28} {record['wall_seconds']:>7.1f} s")
    return record


def _data_record(record, config, cached, cache, stage, inputs, build_dir):
    """The calibration file is an input of the data stage when it exists and an output when the
    stage creates it. After creating it, store the entry under the key the next build computes
    (with the file's content hash), so that build is a hit; a hit reports this build's path."""
    calib = dict(record["calibration"], file=str(config.data.calibration_file))
    if cached:
        calib["created"] = False
    elif calib.get("created") and cache and Path(config.data.calibration_file).is_file():
        later = stage_key(stage, _config_values(config, stage.config), {n: sha256_file(p) for n, p in inputs.items()},
                          _external_inputs(stage, config))
        cache.put(later, build_dir, stage.outputs, {**record, "calibration": {**calib, "created": False}})
    return {**record, "calibration": calib}


def _restore_calibration_file(config, build_dir):
    """A cache hit of the data stage must still leave the versioned calibration file in place."""
    calib = Path(config.data.calibration_file)
    if not calib.exists() and (build_dir / "calibration.json").exists():
        atomic_copy(build_dir / "calibration.json", calib)


def check_input_files(config):
    """Files the config names must exist before any stage runs (a typo is exit 3 at once, not after
    the data stage)."""
    from .usermodel import kind

    named = [("train.weights", config.train.weights)]
    if kind(config.train.recipe) == "keras_file":
        named.append(("train.recipe", config.train.recipe))
    for key, value in named:
        if value and not Path(value).is_file():
            raise InputError(f"{key} names the file {value}, which does not exist here ({Path.cwd()}). Check the path "
                             "(nothing is downloaded).")


def check_same_preprocess(config, build_dir):
    """Stages after export (targets, manifest, gate) must feed the artifact the input it was exported
    for: a [preprocess] changed since then is refused, never silently applied to the old model."""
    path = build_dir / "records" / "export.json"
    made = json.loads(path.read_text()).get("preprocess") if path.is_file() else None
    if made is None:
        return
    from . import preprocess

    now = preprocess.describe(config.preprocess, len(made["mean"]))  # per channel, as export recorded it
    if any(now[k] != made[k] for k in ("pixel_range", "mean", "std")):
        raise InputError(
            f"the int8 model in {build_dir} was exported for preprocess pixel_range {made['pixel_range']}, mean "
            f"{made['mean']}, std {made['std']}; the config now says pixel_range {now['pixel_range']}, mean "
            f"{now['mean']}, std {now['std']}. Use the config it was built with, or "
            "rebuild (edgebuild build)."
        )


def load_records(build_dir):
    records = {}
    for path in sorted((build_dir / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        records[rec["stage"]] = rec
    return records


def build(config, options, only=None, until=None, baseline=None):
    """Run a build. `only` runs one stage from existing outputs; `until` stops after a stage."""
    from . import manifest as manifest_mod
    from . import report
    from .targets import load_target

    for name in config.validate.targets:  # an unknown target is bad input before anything runs
        load_target(name)
    if only in (None, "train"):  # validate / --only of later stages reuse what train made
        check_input_files(config)
    build_dir = config.build_dir
    check_writable(build_dir)
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    cache = StageCache(options.cache_dir, warn=warn) if config.cache.enabled else None
    result = BuildResult(build_dir)
    with build_lock(build_dir):
        if remove_leftovers(build_dir):
            options.log(f"removed temporary files of an interrupted build from {build_dir}")
        if only not in (None, "data", "train", "qat", "export"):
            check_same_preprocess(config, build_dir)
        plan = stage_registry.plan(config)
        names = [s.name for s in plan]
        for stage in plan:
            group = "targets" if stage.name.startswith("target:") else stage.name
            if only and group != only:
                continue
            result.records[stage.name] = run_stage(stage, config, build_dir, cache, options)
            if stage.name == "data":
                _restore_calibration_file(config, build_dir)
            if until and group == until and not (group == "targets" and stage.name != names[-1]):
                break
        stop_early = until in ("data", "train", "qat", "export") or only in ("data", "train", "qat", "export")
        if stop_early:
            return result
        records = load_records(build_dir)
        result.manifest = manifest_mod.assemble(config, records, build_dir)
        if only in (None, "targets", "manifest", "gate") and until not in ("evaluate", "targets", "manifest"):
            from . import gate as gate_mod

            result.gate = gate_mod.evaluate(result.manifest, config.gate, baseline)
            result.manifest["gate"] = result.gate
        manifest_mod.write(build_dir / "manifest.json", result.manifest)
        report.write_html(result.manifest, build_dir)
    return result


__all__ = ["build", "RunOptions", "BuildResult", "EdgebuildError"]
