"""Run the stages of a build in order, each in its own process, through the stage cache.

The engine reads only what each stage declares (`pipeline.engine.stage`), never a stage's name.
Outputs are written into a private staging directory and published into the build directory only
when the stage finished, each file with os.replace; a lock file stops two builds from writing the
same build directory at once.
"""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import stages as stage_registry
from pipeline.engine.cache import StageCache, stage_key
from pipeline.engine.errors import InputError, StageError, disk_full
from pipeline.engine.fsutil import atomic_copy, atomic_create, atomic_write_text, file_lock, sha256_file
from pipeline.engine.remote import remote_for
from pipeline.engine.stage import select_config
from pipeline.engine.text import first_few

STEPS_AFTER_STAGES = ("manifest", "gate")


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
    note: str = ""


def build_lock(build_dir):
    """One build writes a build directory at a time: a second is refused, naming the holder."""
    def refuse(holder):
        raise StageError(
            f"only one build may write {build_dir} at a time; it is locked by {holder or 'another process'}. "
            "Wait for that build to finish or set build.name to another name."
        )

    build_dir.mkdir(parents=True, exist_ok=True)
    return file_lock(build_dir / ".lock", refuse)


def remove_leftovers(build_dir):
    """Remove what a killed build left behind: staging directories and temporary files (all hidden,
    never an artifact). Called under the build lock, so no live build owns them."""
    removed = 0
    own = [*build_dir.glob(".*"), *(build_dir / "records").glob(".*")]  # never below another directory
    for path in own:
        if path.name == ".lock" or not path.exists():
            continue
        if path.is_dir() and path.name.startswith(".stage-"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        elif path.is_file() and (path.name.endswith(".tmp") or ".tmp." in path.name):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


PREVIOUS = ".previous"  # hard links to the last good build while a new run may replace its files


def _visible_files(build_dir):
    return [p for p in build_dir.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(build_dir).parts)]


def keep_previous(build_dir):
    """Hard-link every file of a good build (its manifest true to its artifacts) into .previous, so a
    run that fails or is killed can put it back. Costs no disk space (links, not copies)."""
    if not (build_dir / "manifest.json").exists() or not manifest_still_true(build_dir):
        return False
    shutil.rmtree(build_dir / PREVIOUS, ignore_errors=True)
    for path in _visible_files(build_dir):
        link = build_dir / PREVIOUS / path.relative_to(build_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)
    return True


def restore_previous(build_dir):
    """Put the kept good build back exactly (files this run added are removed); True when there was one."""
    previous = build_dir / PREVIOUS
    if not previous.is_dir():
        return False
    kept = {p.relative_to(previous) for p in previous.rglob("*") if p.is_file()}
    for path in _visible_files(build_dir):
        if path.relative_to(build_dir) not in kept:
            path.unlink()
    for rel in kept:
        (build_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(previous / rel, build_dir / rel)
    shutil.rmtree(previous, ignore_errors=True)
    return True


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


def package_root():
    """The directory that holds the `pipeline` package this process runs."""
    return str(Path(__file__).resolve().parents[2])


# The stage process: `python -P` (the working directory is not on sys.path), and this process's
# package root put first only when the interpreter would otherwise find another `pipeline` (or none):
# the stage runs the same code as the build, and site-packages never moves ahead of the stdlib.
BOOTSTRAP = """import importlib.util, os, sys
root = sys.argv[1]
spec = importlib.util.find_spec("pipeline")
if spec is None or os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))) != root:
    sys.path.insert(0, root)
from pipeline.engine.runner import serve
serve(*sys.argv[2:4])
"""


def log_path(build_dir, stage):
    return build_dir / "logs" / f"{stage.name.replace(':', '-')}.log"


class StageProcess:
    """A stage's process started before its request exists: it imports Keras with the stage's backend
    (about 1 s with JAX, 4 s with TensorFlow, on one core) and then waits on stdin (`runner.serve`). The build
    starts the next stage's process while a stage runs, on the core that stage leaves idle; closing one
    that got no request ends it."""

    def __init__(self, stage, log, cache_dir):
        env = dict(os.environ)
        env.update(TF_CPP_MIN_LOG_LEVEL="3", GRPC_VERBOSITY="ERROR", PYTHONUNBUFFERED="1")
        # Keras writes ~/.keras/keras.json when it is first imported, and reads its settings from there: a
        # stage's Keras uses one of edgebuild's cache instead, so a build writes nothing in the user's home
        # and a user's own keras.json (floatx, image_data_format) cannot change an artifact
        env["KERAS_HOME"] = str(Path(cache_dir) / "keras")
        env.pop("KERAS_BACKEND", None)
        if stage.backend:
            env["KERAS_BACKEND"] = stage.backend
        self.stage, self.log = stage, Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-P", "-c", BOOTSTRAP, package_root(), str(log), str(cache_dir)],
                                     env=env, stdin=subprocess.PIPE, text=True)

    def fits(self, stage, log):
        return self.stage == stage and self.log == Path(log) and self.proc.poll() is None

    def run(self, request_path):
        """Hand the process its request and wait for it; its exit status."""
        try:
            self.proc.stdin.write(f"{request_path}\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass  # it died while importing: no result, reported by the caller
        return self.proc.wait()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass


class Ahead:
    """The one stage process started ahead of its stage (none when JAX runs as several processes: their
    training must join before anything imports JAX)."""

    def __init__(self, cache_dir):
        self.cache_dir, self.waiting = cache_dir, None
        self.enabled = os.environ.get("JAX_NUM_PROCESSES", "1") == "1"

    def start(self, stage, log):
        self.close()
        if self.enabled and stage is not None:
            self.waiting = StageProcess(stage, log, self.cache_dir)

    def take(self, stage, log):
        """The waiting process if it is `stage`'s, else None (and the waiting one is closed)."""
        found, self.waiting = self.waiting, None
        if found is not None and found.fits(stage, log):
            return found
        if found is not None:
            found.close()
        return None

    def close(self):
        if self.waiting is not None:
            self.waiting.close()
            self.waiting = None


def run_in_process(stage, selected, inputs, out_dir, options, log_path, remote="", ahead=None, following=None):
    """Run one stage's `run` in a fresh Python process with its Keras backend; returns its record.

    The child imports the same code as this process whatever the working directory holds (BOOTSTRAP).
    With `ahead` (an Ahead), the process already started for this stage is used, and the process of
    `following` (stage, log path) is started while this one runs."""
    request = {
        "module": stage.module,
        "config": selected,
        "inputs": {k: str(v) for k, v in inputs.items()},
        "out_dir": str(out_dir),
        "params": stage.params,
        "cache_dir": str(options.cache_dir),
        "remote": remote,
        "quiet": options.quiet,
        "log": str(log_path),
        "result": str(out_dir / ".result.json"),
    }
    request_path = out_dir / ".request.json"
    request_path.write_text(json.dumps(request))
    taken = ahead.take(stage, log_path) if ahead else None
    process = taken or StageProcess(stage, log_path, options.cache_dir)
    try:
        if ahead and following:
            ahead.start(*following)
        returncode = process.run(request_path)
    finally:
        process.close()
    result_path = out_dir / ".result.json"
    if not result_path.exists():
        if returncode == errno.ENOSPC:
            raise disk_full(OSError(errno.ENOSPC, "No space left on device", str(out_dir)))
        raise StageError(
            f"stage {stage.name} died without a result (exit status {returncode}); "
            f"its log is {log_path}."
        )
    result = json.loads(result_path.read_text())
    if not result["ok"]:
        if options.debug:
            print(result["traceback"], file=sys.stderr)
        if result["exit_code"] is not None:
            raise (InputError if result["exit_code"] == InputError.exit_code else StageError)(result["message"])
        raise StageError(f"stage {stage.name} failed: {result['message']}. Log: {log_path}")
    record = result["record"]
    record["process"]["started_ahead"] = taken is not None
    return record


def check_consistent(stage, selected, producers):
    """A stage run on outputs already in the build directory must see the config those outputs were
    made with, for every entry it shares with the stages that made them (a [preprocess] changed
    since export is refused, never silently applied to the old model)."""
    for producer in producers:
        made = producer.get("config") or {}
        for section, values in selected.items():
            for key, value in values.items():
                if section in made and key in made[section] and made[section][key] != value:
                    raise InputError(
                        f"{stage.name} must run with the config its inputs were made with; stage "
                        f"{producer['stage']} made them with {section}.{key} = {json.dumps(made[section][key])}, "
                        f"the config now says {json.dumps(value)}. Use the config they were built with, or "
                        "rebuild (edgebuild build)."
                    )


def prepare(stage, config, build_dir, external, records):
    """(inputs, selected config, key, key parts) of `stage` run on the outputs now in build_dir."""
    inputs = {}
    for name in stage.inputs:
        path = build_dir / name
        if not path.exists() and name in stage.optional_inputs:
            continue
        if not path.exists():
            raise InputError(
                f"stage {stage.name} needs {name} from an earlier stage; {path} does not exist. "
                "Run the earlier stages first (edgebuild build)."
            )
        inputs[name] = path
    selected = select_config(config, stage.config)
    check_consistent(stage, selected, [r for r in records.values() if set(r.get("outputs", ())) & set(stage.inputs)])
    key, parts = stage_key(stage, selected, {n: sha256_file(p) for n, p in inputs.items()}, external)
    return inputs, selected, key, parts


def run_stage(stage, config, build_dir, cache, options, external, records, ahead=None, following=None):
    """Run one stage (or restore it from the cache); returns its record. A stage that runs starts the
    process of the `following` stage (with `ahead`)."""
    inputs, selected, key, parts = prepare(stage, config, build_dir, external, records)
    started = time.perf_counter()
    hit = cache.get(key, stage.outputs) if (cache and options.use_cache and stage.cacheable) else None
    source = cache.source.get(key) if hit else None
    if hit:
        entry, record = hit
        for name in stage.outputs:
            atomic_copy(entry / name, build_dir / name)
    else:
        tag = stage.name.replace(":", "-")
        staging = Path(tempfile.mkdtemp(dir=build_dir, prefix=f".stage-{tag}-"))
        (build_dir / "logs").mkdir(exist_ok=True)
        try:
            record = run_in_process(stage, selected, inputs, staging, options, log_path(build_dir, stage),
                                    remote=config.cache.remote, ahead=ahead,
                                    following=following and (following, log_path(build_dir, following)))
            publish_outputs(stage, staging, build_dir, cache, key, record)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return write_record(stage, config, build_dir, options, key, parts, record, source, started)


def publish_outputs(stage, staging, build_dir, cache, key, record):
    """Store a stage's finished outputs in the cache and move them into the build directory."""
    missing = [n for n in stage.outputs if not (staging / n).exists()]
    if set(missing) - set(stage.optional):
        raise StageError(f"stage {stage.name} finished without writing {', '.join(missing)}.")
    if cache and not missing and stage.cacheable:
        cache.put(key, staging, stage.outputs, record)
    for name in stage.outputs:
        if name in missing:  # an optional output not made this time: no older one stays beside the new record
            (build_dir / name).unlink(missing_ok=True)
        else:
            os.replace(staging / name, build_dir / name)


def write_record(stage, config, build_dir, options, key, parts, record, source, started, ran="ran"):
    """The stage's record as the build directory keeps it (records/<stage>.json); logs one line."""
    record = {
        **record,
        "stage": stage.name,
        "key": key,
        "key_parts": {k: parts[k] for k in ("code", "modules", "toolchain", "host", "xla_flags", "inputs", "external")
                      if k in parts},
        "config": parts["config"],
        "cached": bool(source),
        "cache_source": source,
        "pins": pin_outputs(stage, config, build_dir),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "outputs": {n: sha256_file(build_dir / n) for n in stage.outputs if (build_dir / n).exists()},
    }
    atomic_write_text(build_dir / "records" / f"{stage.name.replace(':', '-')}.json", json.dumps(record, indent=1))
    said = {"local": "cached", "remote": "remote"}.get(source, ran)
    options.log(f"{said:>6}  {stage.name:<28} {record['wall_seconds']:>7.1f} s")
    return record


def pin_outputs(stage, config, build_dir):
    """The declared pins: copy an output to the versioned path a config key names, when no file is
    there yet (a file that is there was verified by the stage, as its external input)."""
    pinned = {}
    for output, key in stage.pins.items():
        section, _, name = key.partition(".")
        path = Path(config.section(section)[name])
        written = False
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            written = atomic_create(build_dir / output, path)  # never replaces one pinned meanwhile
            if not written and sha256_file(path) != sha256_file(build_dir / output):
                raise InputError(f"{key} {path} was created by another build while this one ran, with other "
                                 "content; run this build again to verify against it.")
        pinned[output] = {"path": str(path), "written": written}
    return pinned


def load_records(build_dir):
    records = {}
    for path in sorted((build_dir / "records").glob("*.json")):
        rec = json.loads(path.read_text())
        records[rec["stage"]] = rec
    return records


def _steps(plan, only, until):
    """The groups of stages (and the manifest and gate steps) this run executes."""
    groups = list(dict.fromkeys(s.group_name for s in plan)) + list(STEPS_AFTER_STAGES)
    for name in (only, until):
        if name and name not in groups:
            raise InputError(f"no stage or step {name!r} in this build; its steps are {', '.join(groups)}.")
    if only:
        return {only}
    return set(groups[: groups.index(until) + 1]) if until else set(groups)


def build(config, options, only=None, until=None, baseline=None):
    """Run a build. `only` runs one stage (group) from existing outputs, then refreshes the manifest
    and gate when the build directory is consistent (`why_not_publishable`); `until` stops after a
    stage or step (the manifest is written when the run reaches the last stage)."""
    plan = stage_registry.plan(config)
    steps = _steps(plan, only, until)
    todo = [s for s in plan if s.group_name in steps]
    external = {s.name: s.external(config) if s.external else {} for s in todo}  # bad input fails before any stage
    build_dir = config.build_dir
    if options.cache_dir.exists() and not options.cache_dir.is_dir():
        raise InputError(f"the cache must be a directory; {options.cache_dir} is a file. Point $EDGEBUILD_CACHE (or "
                         "cache.dir) at a directory.")
    check_writable(build_dir)
    warn = lambda msg: print(f"warning: {msg}", file=sys.stderr)  # noqa: E731
    remote = remote_for(config.cache.remote, warn)
    cache = StageCache(options.cache_dir, warn=warn, remote=remote) if config.cache.enabled else None
    result = BuildResult(build_dir)
    with build_lock(build_dir):
        if restore_previous(build_dir):
            options.log(f"put back the last good build in {build_dir}: a run there was killed before it finished")
        if remove_leftovers(build_dir):
            options.log(f"removed temporary files of an interrupted build from {build_dir}")
        records = load_records(build_dir)
        keep_previous(build_dir)
        ahead = Ahead(options.cache_dir)
        try:
            for i, stage in enumerate(todo):
                records[stage.name] = result.records[stage.name] = run_stage(
                    stage, config, build_dir, cache, options, external[stage.name], records,
                    ahead=ahead, following=todo[i + 1] if i + 1 < len(todo) else None)
            ahead.close()
            if only or plan[-1].group_name in steps:
                _finish_run(result, plan, config, records, build_dir, only, steps, baseline)
            elif not manifest_still_true(build_dir):  # --until: the last manifest no longer matches
                remove_manifest(build_dir)
                result.note = "manifest removed: this run replaced artifacts it named"
        except BaseException:
            ahead.close()
            if not restore_previous(build_dir) and result.records and not manifest_still_true(build_dir):
                remove_manifest(build_dir)  # it would vouch for artifacts this failed run replaced
            raise
        shutil.rmtree(build_dir / PREVIOUS, ignore_errors=True)
    return result


def _finish_run(result, plan, config, records, build_dir, only, steps, baseline):
    """Write the manifest (and gate) of a run that reached the end, or say why it cannot be written."""
    problem = why_not_publishable(plan, config, records, build_dir)
    if problem is None:
        result.manifest, result.gate = publish(
            config, {s.name: records[s.name] for s in plan}, build_dir,
            baseline, run_gate=bool(only) or "gate" in steps)
    elif only in STEPS_AFTER_STAGES or only == plan[-1].group_name:
        raise InputError(f"running {only} on the finished build in {build_dir} refreshes its manifest, which needs "
                         f"a consistent build; {problem}. Run edgebuild build.")
    else:  # a manifest left from before would vouch for artifacts that changed since
        remove_manifest(build_dir)
        result.note = f"manifest removed, not rewritten: {problem}"


def manifest_still_true(build_dir):
    """Whether build_dir's manifest (if any) still matches every artifact it names."""
    from pipeline.release.manifest import changed_artifacts

    path = build_dir / "manifest.json"
    if not path.exists():
        return True
    try:
        return not changed_artifacts(build_dir, json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def verify_finished(build_dir):
    """The manifest of a finished build, read and checked against its artifacts: a gate must never
    judge files its numbers were not measured on (a model copied over, a truncated file)."""
    from pipeline.release import manifest as manifest_mod

    manifest = manifest_mod.read(build_dir / "manifest.json")
    changed = manifest_mod.changed_artifacts(build_dir, manifest)
    if changed:
        raise InputError(
            f"the artifacts in {build_dir} no longer match its manifest: {first_few(changed, 3)}. Its numbers were "
            "measured on other files; run the build (or validation) again."
        )
    return manifest


def resolve_baseline(build_dir, path, drop=False, warn=print):
    """The baseline to gate a finished build against again: `path` when given; else the file its
    manifest was last gated against, unchanged (re-gating never silently drops a baseline); none
    with `drop`."""
    from pipeline.release import manifest as manifest_mod

    if path:
        return manifest_mod.read_baseline(path, warn)
    previous = build_dir / "manifest.json"
    if drop or not previous.exists():
        return None
    try:
        gate = json.loads(previous.read_text()).get("gate") or {}
    except ValueError:
        return None
    if not gate.get("baseline"):
        return None
    recorded = gate.get("baseline_file") or {}
    file = Path(recorded.get("path", gate["baseline"]))
    if not file.is_file() or sha256_file(file) != recorded.get("sha256"):
        state = "is gone" if not file.is_file() else "is not the file it was (or is unrecorded)"
        raise InputError(
            f"{build_dir} was gated against the baseline {file}, which {state}. Pass --baseline PATH to gate "
            "against a baseline again, or --no-baseline to gate without one."
        )
    warn(f"gating against the baseline this build was gated against: {file}")
    return manifest_mod.read_baseline(file, warn)


def remove_manifest(build_dir):
    for name in ("manifest.json", "report.html"):
        (build_dir / name).unlink(missing_ok=True)


def why_not_publishable(plan, config, records, build_dir):
    """None when every stage's record and outputs are in the build directory, each made from the
    files now there and with the config now given; else what is wrong (the manifest must never
    describe artifacts that no longer match each other or the config)."""
    current = {}
    for stage in plan:
        record = records.get(stage.name)
        missing = [o for o in stage.outputs if not (build_dir / o).exists() and
                   (o not in stage.optional or o in (record or {}).get("outputs", {}))]
        if record is None or missing:
            return f"stage {stage.name} has not finished in {build_dir}"
        if "key_parts" not in record:
            return f"stage {stage.name}'s record in {build_dir} was written by an older edgebuild"
        for name, digest in record["key_parts"]["inputs"].items():
            current.setdefault(name, sha256_file(build_dir / name))
            if current[name] != digest:
                return f"stage {stage.name} was made from another {name} (re-run it: its inputs changed)"
        try:
            check_consistent(stage, select_config(config, stage.config), [record])
        except InputError as exc:
            return str(exc).rstrip(".")
    return None


def publish(config, records, build_dir, baseline=None, run_gate=True, manifest=None):
    """Assemble the manifest from the stage records (or take `manifest`), gate it, and write it and
    the HTML report. `edgebuild build` and `edgebuild gate` both end here."""
    from pipeline.release import gate as gate_mod
    from pipeline.release import manifest as manifest_mod
    from pipeline.release import report

    if manifest is None:
        manifest = manifest_mod.assemble(config, records, stage_registry.publish_fields(config, records, build_dir))
        manifest.update(stage_registry.manifest_sections(config, records))
    verdict = None
    if run_gate:
        verdict = gate_mod.evaluate(manifest, config.gate, baseline,
                                    declared=stage_registry.gate_checks(manifest, config, baseline))
        manifest["gate"] = verdict
    manifest_mod.write(build_dir / "manifest.json", manifest, stage_registry.schemas())
    report.write_html(manifest, build_dir, stage_registry.report_sections(manifest))
    return manifest, verdict


def run_alone(stage, config, cache_dir, debug=False):
    """Run a stage that needs no inputs in its own process, outside any build (no cache, nothing
    published: `edgebuild check-model`); returns its record."""
    with tempfile.TemporaryDirectory(prefix="edgebuild-") as tmp:
        options = RunOptions(cache_dir=Path(cache_dir), quiet=True, debug=debug)
        return run_in_process(stage, select_config(config, stage.config), {}, Path(tmp), options, Path(tmp) / "log")


def regate(config, build_dir, baseline=None):
    """Gate a finished build again (new thresholds or baseline) under its lock; returns the verdict."""
    from pipeline.release import manifest as manifest_mod

    manifest_mod.read(build_dir / "manifest.json")  # a wrong directory is an error before the lock creates it
    with build_lock(build_dir):  # a build writing this directory now would overwrite our verdict
        _, verdict = publish(config, None, build_dir, baseline, manifest=verify_finished(build_dir))
    return verdict
