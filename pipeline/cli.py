"""The `edgebuild` command line: parse -> config -> library call -> print.

Every command runs through one error wrapper (`Commands.invoke`) with the documented exit codes:
0 pass, 1 accuracy gate failed, 2 usage (click's own), 3 bad config or data, 4 a stage failed.
"""

import json
import os
import signal
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline.engine.errors import EXIT_STAGE, EdgebuildError, InputError, disk_full, unwritable

try:
    from pipeline.stages import GROUPS

    BROKEN_STAGE = None
except InputError as exc:  # a declared stage module that breaks the contract: every command says so (exit 3)
    GROUPS, BROKEN_STAGE = (), exc

EXIT_CODES_HELP = "Exit codes: 0 pass, 1 gate failed, 2 usage, 3 bad config or data, 4 a stage failed."
STAGE_CHOICES = click.Choice([*GROUPS, "manifest", "gate"])


def default_cache_dir(config=None):
    """$EDGEBUILD_CACHE overrides cache.dir, which overrides $EDGEBUILD_HOME (where `make` keeps the
    venv too), else ~/.cache/edgebuild."""
    if os.environ.get("EDGEBUILD_CACHE"):
        return Path(os.environ["EDGEBUILD_CACHE"]).expanduser()
    if config is not None and config.cache.dir:
        return Path(config.cache.dir).expanduser()
    if os.environ.get("EDGEBUILD_HOME"):
        return Path(os.environ["EDGEBUILD_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgebuild"


class Commands(click.Group):
    """A click group whose commands all end in one place: an EdgebuildError prints its one-line
    message and exits with its code; anything else is exit 4 with the traceback behind --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except Interrupted as exc:
            click.echo(f"interrupted ({exc.args[0]}); nothing half-written was published.", err=True)
            sys.exit(128 + exc.signum)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing half-written was published.", err=True)
            sys.exit(130)
        except Exception as exc:
            exc = disk_full(exc) or unwritable(exc) or exc
            if "--debug" in sys.argv[1:]:
                import traceback

                traceback.print_exception(exc, file=sys.stderr)
            if isinstance(exc, EdgebuildError):
                click.echo(f"error: {exc}", err=True)
                sys.exit(exc.exit_code)
            click.echo(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            sys.exit(EXIT_STAGE)


class Interrupted(KeyboardInterrupt):
    """SIGTERM as an exception: stage processes are killed, staging removed, the lock released."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


class Context:
    def __init__(self, debug, quiet):
        self.debug, self.quiet = debug, quiet


def _finished_build_config(build_dir, config_path, sets):
    """The config to re-gate or extend a finished build with: the one its manifest recorded (what it was
    built with), then [gate], [validate], [cache] and the declared stages' sections (their thresholds) of
    --config when given, then --set."""
    from pipeline import stages
    from pipeline.engine import config as config_mod
    from pipeline.release import manifest as manifest_mod

    path = Path(build_dir) / "manifest.json"
    if not path.is_file():
        return _load_config(config_path, sets)
    recorded = manifest_mod.read(path)["config"]
    # boards are this run's (--board, or --config's [validate]), never carried over from the run that made it
    recorded = {**recorded, "validate": {k: v for k, v in (recorded.get("validate") or {}).items()
                                         if k not in ("boards", "board_target")}}
    return config_mod.load(config_path, sets, base=recorded, base_origin=f"{path} (the build's own config)",
                           sections=("gate", "validate", "cache", *stages.DECLARED))


def _load_config(config_path, sets, seed=None, name=None):
    from pipeline.engine import config as config_mod

    overrides = list(sets)
    if seed is not None:
        overrides.append(("build.seed", seed))
    if name is not None:
        overrides.append(("build.name", name))
    if config_path is None and Path("edgebuild.toml").is_file():
        config_path = "edgebuild.toml"
    return config_mod.load(config_path, overrides)


def _quiet_env():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="edgebuild")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or stage log lines.")
@click.pass_context
def main(ctx, debug, quiet):
    """Build a Keras 3 model (an image classifier, a classifier of feature tensors such as keyword
    MFCCs, or an anomaly autoencoder) into int8 TFLite and ONNX artifacts, validated on emulated ARM
    boards, a microcontroller's runtime (TFLM) and an NPU's compiler (Vela), gated against accuracy (or
    ROC AUC) thresholds and each device's budgets, described by manifest.json.

    Start with `edgebuild build` (uses ./edgebuild.toml if present, else built-in defaults:
    scikit-learn's digits, a small CNN, targets rpi4-bookworm-tflite, rpi5-litert, cortex-m-tflm and
    ethos-u55-128)."""
    if BROKEN_STAGE is not None:
        raise BROKEN_STAGE
    _quiet_env()
    signal.signal(signal.SIGTERM, _raise_interrupted)
    ctx.obj = Context(debug, quiet)


config_option = click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False),
                             help="Build config (default: ./edgebuild.toml if present).")
set_option = click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value, e.g. --set train.epochs=2 (repeatable).")

no_remote_option = click.option("--no-remote-cache", "no_remote", is_flag=True,
                                 help="Do not use cache.remote in this run (same as --set cache.remote=\"\").")


def _local_only(sets, no_remote):
    return [*sets, 'cache.remote=""'] if no_remote else list(sets)


no_baseline_option = click.option(
    "--no-baseline", is_flag=True, help="Gate a finished build without the baseline it was last gated against "
    "(by default that baseline file is used again, and a changed or missing one is an error).")


def _warn(msg):
    click.echo(f"warning: {msg}", err=True)


def gate_options(json_help):
    """--baseline, --junit and --json, shared by build and gate."""
    options = [
        click.option("--baseline", type=click.Path(dir_okay=False), help="Gate against this baseline manifest.json "
                     "(the last release)."),
        click.option("--junit", type=click.Path(dir_okay=False), help="Write the gate checks as JUnit XML."),
        click.option("--json", "as_json", is_flag=True, help=json_help),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@main.command(epilog=EXIT_CODES_HELP)
@config_option
@set_option
@click.option("--seed", type=int, help="Shortcut for --set build.seed=N.")
@click.option("--name", help="Shortcut for --set build.name=NAME.")
@click.option("--only", type=STAGE_CHOICES, help="Run just this stage, from the outputs already in the build directory.")
@click.option("--until", type=STAGE_CHOICES, help="Stop after this stage.")
@click.option("--no-cache", is_flag=True, help="Run every stage; do not reuse cached outputs.")
@no_remote_option
@gate_options("Print the manifest as JSON on stdout (logs go to stderr).")
@click.pass_context
def build(ctx, config_path, sets, seed, name, only, until, no_cache, no_remote, baseline, junit, as_json):
    """Run the build: data -> train (JAX) -> qat -> export (int8 TFLite, float TFLite, ONNX) ->
    resources (MACs, bytes, TFLM arena) -> evaluate (host) -> targets (emulated aarch64, TFLM, Vela) ->
    manifest -> gate.

    Writes build/<name>/manifest.json and the artifacts beside it. Exits 1 if the gate fails.
    Stage outputs are cached in $EDGEBUILD_CACHE (or cache.dir); cache.remote = "s3://bucket/prefix"
    shares them, and the emulated targets' environments, between CI runners (README: Running in CI)."""

    from pipeline.orchestrate import build as build_mod
    from pipeline.release import manifest as manifest_mod

    config = _load_config(config_path, _local_only(sets, no_remote), seed, name)
    options = _run_options(ctx, config, use_cache=not no_cache)
    base = manifest_mod.read_baseline(baseline, _warn) if baseline else None
    result = build_mod.build(config, options, only=only, until=until, baseline=base)
    if result.manifest is None:
        click.echo(f"stopped after {only or until}; outputs in {result.build_dir}", err=True)
        if result.note:
            click.echo(result.note, err=True)
        return
    _finish(result, junit, as_json)


def _finish(result, junit, as_json):
    """Print a finished build's or validation's summary (or manifest JSON), write the gate's JUnit
    and step summary, and exit 1 when the gate failed."""
    from pipeline import stages
    from pipeline.release import report

    _emit_gate_outputs(result.gate, junit)
    if as_json:
        click.echo(json.dumps(result.manifest, indent=1))
    else:
        click.echo(report.summary(result.manifest, stages.report_sections(result.manifest)))
        click.echo(f"manifest: {result.build_dir / 'manifest.json'}")
        click.echo(f"report:   {result.build_dir / 'report.html'}")
    if result.gate and result.gate["verdict"] == "fail":
        sys.exit(1)


def _emit_gate_outputs(gate, junit):
    if gate is None:
        return
    from pipeline.engine.fsutil import write_output
    from pipeline.release import gate as gate_mod

    if junit:
        write_output(junit, gate_mod.junit(gate).encode())
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a") as f:
                f.write(gate_mod.markdown(gate))
        except OSError as exc:  # the verdict stands; only the step summary is lost
            click.echo(f"warning: could not append the gate to GITHUB_STEP_SUMMARY={summary} ({exc.strerror}); "
                       "the verdict and exit code are unchanged", err=True)


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("build_dir", required=False, type=click.Path(file_okay=False))
@config_option
@set_option
@gate_options("Print the gate result as JSON.")
@no_baseline_option
@click.pass_context
def gate(ctx, build_dir, config_path, sets, baseline, junit, as_json, no_baseline):
    """Check a finished build's (or validation's) manifest against the [gate] thresholds and a baseline.

    The build's artifacts must still match its manifest (else exit 3). Thresholds: the build's own
    config, with [gate] from --config (when given) and --set over it. Without --baseline, the
    baseline it was last gated against is used again (--no-baseline drops it). Prints every check,
    records the verdict in the manifest, exits 0 pass / 1 fail."""

    from pipeline.orchestrate import build as build_mod
    from pipeline.orchestrate.build import regate
    from pipeline.release import gate as gate_mod

    build_dir = _build_dir(build_dir, config_path, sets)
    config = _finished_build_config(build_dir, config_path, sets)
    result = regate(config, build_dir, build_mod.resolve_baseline(build_dir, baseline, no_baseline, _warn))
    _emit_gate_outputs(result, junit)
    click.echo(json.dumps(result, indent=1) if as_json else gate_mod.table(result))
    sys.exit(0 if result["verdict"] == "pass" else 1)


def _model_overrides(model, data, out):
    """Typed overrides for validating a model file: its test set, and the image size and channels its
    input tensor has, or the tensor form for a feature input (before the user's own --set, so an explicit
    one wins and is then checked)."""
    import re

    from pipeline.device import onnx_info
    from pipeline.engine.errors import InputError
    from pipeline.stages.model_file import model_path

    path = model_path(model).resolve()
    tensor = onnx_info.describe(path)["inputs"][0]
    shape = onnx_info.image_shape(tensor)
    if any(d <= 0 for d in tensor["shape"][1:]):
        raise InputError(f"edgebuild validates a model with a fixed input size (only the batch may be dynamic); "
                         f"{model}'s input {tensor['name']!r} has shape {tensor.get('shape_signature', tensor['shape'])} "
                         "(-1 = dynamic). Export it with a fixed height, width and channels.")
    given = [("validate.model", str(path))]
    image_like = len(shape) == 3 and shape[2] in (1, 3)
    if image_like and shape[0] == shape[1] and 8 <= shape[0] <= 512:
        # an image input: the test images are loaded at its size
        given += [("data.image_size", shape[0]), ("data.channels", shape[2])]
    elif image_like and data and not str(data).endswith(".npz"):
        raise InputError(f"edgebuild loads test images square, 8 to 512 pixels (batch, size, size, 1 or 3); {model}'s "
                         f"input shape is {tensor['shape']}. Give the test set as an .npz of inputs of that shape "
                         "(read as they are), or export the model at a square size.")
    else:  # a feature input: x is read as it is, whatever its dtype or range
        given.append(("preprocess.form", "tensor"))
    if data:
        given.append(("data.test_source", data))
    out = Path(out) if out else Path("build") / ("validate-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip(".-") or "model"))
    return given + _at(out)


def _at(build_dir):
    """Typed overrides that place a build in `build_dir`."""
    return [("build.out_dir", str(Path(build_dir).parent)), ("build.name", Path(build_dir).name)]


def _with_targets(config, names):
    """The config with validate.targets = names, each held to the rule of that key (a name, never a path:
    --target and a shard file's target come from outside)."""
    import dataclasses

    from pipeline.engine.config import check_name

    for name in names:
        check_name(name, "validate.targets")
    return dataclasses.replace(config, validate=dataclasses.replace(config.validate, targets=list(names)))


def _targets_for(config, added):
    """The targets a model file is validated on: those of validate.targets whose runtime runs its format
    (a .tflite on the LiteRT targets, an .onnx on the onnxruntime ones; every shipped emulated target of
    that format when validate.targets has none), plus --target as given."""
    from pipeline.device import onnx_info, targets

    fmt = "onnx" if onnx_info.is_onnx(config.validate.model) else "tflite"

    def runs_it(name):
        return targets.model_format(targets.load_target(name)) == fmt

    names = [n for n in config.validate.targets if runs_it(n)]
    if not names and config.validate.targets and not added:
        names = [n for n in targets.available_targets() if runs_it(n) and targets.load_target(n).emulated]
    return list(dict.fromkeys(names + list(added)))


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("path", required=False, type=click.Path())
@click.option("--data", "data_source", metavar="SOURCE", help="Your test set, for a model file: an image folder "
              "(one sub-folder per class, named like the model's classes, in its order) or an .npz with x and y "
              "(sets data.test_source).")
@click.option("--target", "-t", "target_names", multiple=True, help="Target name, added to validate.targets "
              "(repeatable).")
@click.option("--float", "float_model", type=click.Path(dir_okay=False), help="The float Keras model (.keras) a "
              ".tflite was made from: adds the per-layer error report (each int8 tensor against its float layer, "
              "on the host and each target). Sets validate.float_model.")
@click.option("--out", "-o", type=click.Path(file_okay=False), help="Output directory of a model file's validation "
              "(default build/validate-<model file name>).")
@click.option("--shard", metavar="I/N", help="Run only the I-th of N parts of the test set on each --target, for a "
              "build's targets split over CI jobs: writes BUILD_DIR/shards/target-NAME.shard-I-of-N.npz and no "
              "manifest; `edgebuild merge` combines the parts. Needs only the build's stages up to evaluate.")
@click.option("--board", "boards", multiple=True, metavar="HOST", help="Run the --target on this real board over SSH "
              "(an ssh host name or ~/.ssh/config alias; repeatable: the test set is split over the boards) instead of "
              "emulating it. Sets validate.boards.")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="The ssh client config for --board (ssh -F; "
              "default: your own ~/.ssh/config). Sets validate.ssh_config.")
@click.option("--board-python", metavar="PATH", help="The boards' Python 3 (default python3 on the board's PATH). "
              "Sets validate.board_python.")
@config_option
@set_option
@no_remote_option
@gate_options("Print the manifest as JSON on stdout (logs go to stderr).")
@no_baseline_option
@click.pass_context
def validate(ctx, path, data_source, target_names, float_model, out, shard, boards, ssh_config, board_python,
             config_path, sets, no_remote, baseline, junit, as_json, no_baseline):
    """Prove a model on the host and on emulated ARM targets, and gate it.

    \b
    edgebuild validate MODEL.tflite|MODEL.onnx --data TEST_SET [--float FLOAT.keras] [--baseline manifest.json]
        A .tflite or .onnx built anywhere (float32, int8 or uint8 input; an .onnx may be NCHW):
        runs it on the host and on each target of validate.targets that runs its format (plus
        --target) over your whole test set, with pixels (or an .npz's features, of any rank)
        fed through [preprocess] and the model's own input quantization. Image size and channels
        come from the model; integer features in the input's dtype are fed unchanged. Writes
        manifest.json (kind "validation") and report.html, and gates them. With --float, the
        .tflite's per-layer error against the float model it was made from, on the host and
        each target (the worst layers in the manifest, a chart in the report).
    edgebuild validate [BUILD_DIR] --target NAME
        A finished build's int8 model on more targets: adds their results to its manifest and
        gates it again, with the build's own config ([gate] and [validate] from --config over it)
        and the baseline it was gated against (see edgebuild gate --help).
    edgebuild validate [BUILD_DIR] --target NAME --board HOST [--board HOST2 ...]
        The target on real boards over SSH (BatchMode, your ssh config and known_hosts): the
        same checks as its emulation, the board's identity and its per-inference latency.
    edgebuild validate [BUILD_DIR] --target NAME --shard I/N
        Part I of N of the test set on each target, on this machine: a shard file, verifiable on its
        own, for `edgebuild merge BUILD_DIR SHARDS...` (see its --help). The build may stop at
        evaluate (edgebuild build --until evaluate, a remote-cache hit on a CI runner).

    Exits 1 if the gate fails, 3 if the host runtime refuses the model (a target that refuses it
    fails its gate check; the other targets still run)."""

    sets = [*_local_only(sets, no_remote), *_board_overrides(boards, ssh_config, board_python, target_names)]
    model_file = path is not None and not Path(path).is_dir()
    if float_model:
        if not model_file:
            raise click.UsageError("--float goes with a model file: edgebuild validate MODEL.tflite --data TEST_SET "
                                   "--float FLOAT.keras (a build compares with its own float model already).")
        sets = [*sets, ("validate.float_model", str(Path(float_model).resolve()))]
    if shard is not None:
        if model_file or not target_names or data_source or out:
            raise click.UsageError("--shard goes with a build and its targets: edgebuild validate BUILD_DIR --target "
                                   "NAME --shard I/N.")
        return _validate_shard(ctx, path, target_names, shard, config_path, sets)
    if model_file:
        return _validate_model_file(ctx, path, data_source, out, target_names, config_path, sets, baseline, junit,
                                    as_json)
    if data_source or out:
        raise click.UsageError("--data and --out go with a model file: edgebuild validate MODEL.tflite --data TEST_SET.")
    if not target_names:
        raise click.UsageError("name the target(s) to add to the build: --target NAME (see edgebuild target list).")
    return _add_targets(ctx, path, target_names, config_path, sets, baseline, no_baseline, junit, as_json)


def _board_overrides(boards, ssh_config, board_python, target_names):
    """Typed overrides for --board, --ssh-config and --board-python: the boards run the one --target given."""
    if not boards:
        if ssh_config or board_python:
            raise click.UsageError("--ssh-config and --board-python go with --board HOST.")
        return []
    if len(target_names) != 1:
        raise click.UsageError(f"--board runs one target on the board(s): pass exactly one --target NAME; received "
                               f"{len(target_names)} ({', '.join(target_names) or 'none'}).")
    return [("validate.boards", list(boards)), ("validate.board_target", target_names[0]),
            *([("validate.ssh_config", str(Path(ssh_config).resolve()))] if ssh_config else []),
            *([("validate.board_python", board_python)] if board_python else [])]


def _run_options(ctx, config, use_cache=True):
    """How the orchestrator runs this command's stages: the cache, progress on stderr unless --quiet."""
    from pipeline.orchestrate import build as build_mod

    log = (lambda msg: click.echo(msg, err=True)) if not ctx.obj.quiet else (lambda msg: None)
    return build_mod.RunOptions(cache_dir=default_cache_dir(config), use_cache=use_cache, quiet=ctx.obj.quiet,
                                debug=ctx.obj.debug, log=log)


def _validate_model_file(ctx, path, data_source, out, target_names, config_path, sets, baseline, junit, as_json):
    """`edgebuild validate MODEL --data TEST_SET`: the model file on the host and the targets that run its format."""
    from pipeline.orchestrate import build as build_mod
    from pipeline.release import manifest as manifest_mod

    config = _load_config(config_path, [*_model_overrides(path, data_source, out), *sets])
    config = _with_targets(config, _targets_for(config, target_names))
    base = manifest_mod.read_baseline(baseline, _warn) if baseline else None
    _finish(build_mod.build(config, _run_options(ctx, config), baseline=base), junit, as_json)


def _build_dir(path, config_path, sets):
    """The build directory a command names, else the one the config names."""
    return Path(path) if path else _load_config(config_path, sets).build_dir


def _finished_build(build_dir, target_names, config_path, sets):
    """The config of the finished build in `build_dir` with `target_names` added to its targets."""
    config = _finished_build_config(build_dir, config_path, [*sets, *_at(build_dir)])
    return _with_targets(config, dict.fromkeys([*config.validate.targets, *target_names]))


def _add_targets(ctx, path, target_names, config_path, sets, baseline, no_baseline, junit, as_json):
    """`edgebuild validate BUILD_DIR --target NAME`: more targets for a finished build, gated again."""
    from pipeline import stages
    from pipeline.orchestrate import build as build_mod

    build_dir = _build_dir(path, config_path, sets)
    build_mod.verify_finished(build_dir)
    config = _finished_build(build_dir, target_names, config_path, sets)
    base = build_mod.resolve_baseline(config.build_dir, baseline, no_baseline, _warn)
    result = build_mod.build(config, _run_options(ctx, config), only=stages.TARGETS, baseline=base)
    _finish(result, junit, as_json)


def _validate_shard(ctx, path, target_names, shard, config_path, sets):
    """`edgebuild validate BUILD_DIR --target NAME --shard I/N`: one part of the test set on each target."""
    from pipeline import stages
    from pipeline.engine.errors import InputError
    from pipeline.orchestrate import shards

    try:
        part = shards.parse(shard)
    except InputError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None
    config = _finished_build(_build_dir(path, config_path, sets), target_names, config_path, sets)
    written = shards.run(config, _run_options(ctx, config), stages.target_stage_names(target_names), *part)
    click.echo("\n".join(str(p) for p in written))


@main.command(epilog=EXIT_CODES_HELP)
@click.argument("build_dir", type=click.Path(file_okay=False))
@click.argument("shard_paths", nargs=-1, type=click.Path())
@config_option
@set_option
@no_remote_option
@gate_options("Print the manifest as JSON on stdout (logs go to stderr).")
@no_baseline_option
@click.pass_context
def merge(ctx, build_dir, shard_paths, config_path, sets, no_remote, baseline, junit, as_json, no_baseline):
    """Combine shard files (edgebuild validate BUILD_DIR --target NAME --shard I/N) into the build.

    \b
    edgebuild merge BUILD_DIR [SHARD_FILE|DIR ...]
        Checks that the shards of each target were made from this build (model, test set, config
        and edgebuild), hold every part I of one N exactly once and together cover the test set
        exactly once; computes each target's agreement over the whole set, as one run would;
        stores the result in the cache (and cache.remote) only when every shard is signed with
        the secret in $EDGEBUILD_SHARD_KEY (set it in the shard and merge jobs; with it, an
        unsigned shard is refused); writes the manifest and report and gates them. Shards
        default to BUILD_DIR/shards. The build needs its stages up to evaluate, with the same
        config (--config / --set) as when the shards ran.

    Exits 1 if the gate fails, 3 if a shard is missing, repeated, changed, crafted, unsigned (with
    $EDGEBUILD_SHARD_KEY set) or from another build."""
    from pipeline.orchestrate import build as build_mod
    from pipeline.orchestrate import shards
    from pipeline.engine.errors import InputError

    build_dir = Path(build_dir)
    sets = _local_only(sets, no_remote)
    config = _finished_build_config(build_dir, config_path, [*sets, *_at(build_dir)])
    sharded = [p.get("target") for p in shards.params_of(build_dir, shard_paths)]
    if not all(isinstance(name, str) for name in sharded):  # a crafted shard: its target is what merge adds
        raise InputError("a shard file names the target it ran on; one of the shards given names none. Run the "
                         "shards again with edgebuild validate BUILD_DIR --target NAME --shard I/N.")
    config = _with_targets(config, dict.fromkeys([*config.validate.targets, *sharded]))
    base = build_mod.resolve_baseline(build_dir, baseline, no_baseline, _warn)
    _finish(shards.merge(config, _run_options(ctx, config), shard_paths, baseline=base), junit, as_json)


@main.command("report", epilog=EXIT_CODES_HELP)
@click.argument("build_dir", required=False, type=click.Path(file_okay=False))
@config_option
@set_option
@click.pass_context
def report_cmd(ctx, build_dir, config_path, sets):
    """Write build/<name>/report.html again from the build's manifest (self-contained, opens offline).
    The artifacts must still match the manifest (else exit 3)."""

    from pipeline import stages
    from pipeline.orchestrate.build import verify_finished
    from pipeline.release import report

    bdir = _build_dir(build_dir, config_path, sets)
    manifest = verify_finished(bdir)
    click.echo(report.write_html(manifest, bdir, stages.report_sections(manifest)))


@main.command("check-model", epilog=EXIT_CODES_HELP)
@config_option
@set_option
@click.option("--recipe", help="Shortcut for --set train.recipe=... ('module.path:function' or a .keras file).")
@click.pass_context
def check_model(ctx, config_path, sets, recipe):
    """Check the configured model before a build: serialization preflight (round-trips every custom
    layer's get_config/from_config, refuses Lambda layers and unregistered classes), the final softmax
    that the build removes, and, for a trained model file (.keras or Keras 2 .h5), which input
    convention it scores with (exit 3 naming the preprocess setting that fits).
    Exits 0 if the model is fine, 3 with every problem if not."""
    from pipeline.orchestrate.build import run_alone
    from pipeline.engine.errors import InputError
    from pipeline.stages.check_model import STAGE

    config = _load_config(config_path, [*sets, *([("train.recipe", recipe)] if recipe else [])])
    record = run_alone(STAGE, config, default_cache_dir(config), debug=ctx.obj.debug)
    click.echo("\n".join(record["lines"]))
    if record["error"]:
        raise InputError(record["error"])


@main.group(cls=Commands)
def target():
    """Device targets (targets/<name>.toml): emulated Linux boards, microcontrollers (TFLM) and NPUs (Vela)."""


@target.command("list")
def target_list():
    """List the available targets."""
    from pipeline.device.targets import available_targets, load_target
    from pipeline.engine.errors import InputError

    broken = []
    for name in available_targets():
        try:
            t = load_target(name)
        except InputError as exc:  # one broken file is named; the others are still listed
            broken.append(str(exc))
            continue
        click.echo(f"{name:<24} {t.kind:<8} {t.description}")
    if broken:
        raise InputError(f"{len(broken)} target file(s) cannot be used: {broken[0]}")


@target.command("setup")
@click.argument("names", nargs=-1, required=True)
@config_option
@set_option
@no_remote_option
@click.pass_context
def target_setup(ctx, names, config_path, sets, no_remote):
    """Build and verify the emulated root filesystem, qemu and runtime for target(s); cached by
    the target file's hash, so a second setup is instant. With cache.remote, an environment the
    remote cache holds is restored from it (and self-tested), and one built here is stored in it."""

    import time

    from pipeline.device.environment import env_dir, setup
    from pipeline.device.targets import load_target
    from pipeline.engine.remote import remote_for

    config = _load_config(config_path, _local_only(sets, no_remote))
    where = default_cache_dir(config)
    remote = remote_for(config.cache.remote, _warn)
    for name in names:
        t = load_target(name)
        started = time.perf_counter()
        root = setup(t, where, log=(lambda m: None) if ctx.obj.quiet else (lambda m: click.echo(m, err=True)),
                     remote=remote)
        info = json.loads((root / "ready.json").read_text())
        click.echo(f"{name}: ready in {time.perf_counter() - started:.1f} s at {env_dir(t, where)} "
                   f"({info.get('runtime', 'host')} {info.get('runtime_version', '')} on {info.get('machine', 'host')})")


@target.command("pin")
@click.argument("name")
def target_pin(name):
    """Download a target's wheels (no hash check) and print the [wheel_sha256] table for its file (and
    [twin_wheel_sha256] for its x86_64 twin): review the files, then paste them, when adding a target
    or changing a pin."""
    import tempfile

    from pipeline.device.environment import pin_wheels
    from pipeline.device.targets import load_target

    target = load_target(name, check_hashes=False)
    for twin in (False, True) if target.twin_platforms else (False,):
        with tempfile.TemporaryDirectory() as tmp:
            hashes = pin_wheels(target, tmp, Path(tmp) / "pip.log", twin=twin)
        click.echo("[twin_wheel_sha256]" if twin else "[wheel_sha256]")
        for pin, digest in hashes.items():
            click.echo(f'"{pin}" = "{digest}"')


@main.group(cls=Commands)
def board():
    """Real boards reached over SSH (your ssh client, config and known_hosts)."""


@board.command("check")
@click.argument("host")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="The ssh client config (ssh -F; default: yours).")
@click.option("--python", "python", default="python3", show_default=True, help="The board's Python (see "
              "validate.board_python).")
@click.option("--target", "-t", "target_name", help="Also say whether the board has this target's arch and pinned "
              "runtime (exit 3 when not).")
def board_check(host, ssh_config, python, target_name):
    """What the board HOST is: arch, OS, Python, CPU (from /proc/cpuinfo and the device tree), governor,
    memory, and the runtimes it has. Nothing is installed or left on the board but edgebuild's cache
    directory (~/.cache/edgebuild-board)."""

    from pipeline.device.executors import ssh
    from pipeline.engine.errors import InputError

    env = "-"
    if target_name:
        from pipeline.device.environment import env_key
        from pipeline.device.targets import load_target

        env = env_key(load_target(target_name))
    found = ssh.ask(host, ssh_config, python, env)
    runtimes = ", ".join(f"{k} {v}" for k, v in found["runtimes"].items()) or "none"
    click.echo(f"{host}: {found['arch']}, {found['os']}, Python {found['python']}\n"
               f"  CPU: {found['cpu'] or 'unknown'} ({found['cpus']} cores), model: {found['model'] or 'unknown'}, "
               f"governor: {found['governor'] or 'unknown'}, memory: {(found['memory_bytes'] or 0) / 2**30:.1f} GiB\n"
               f"  runtimes: {runtimes}" + ("\n  emulated (user-mode qemu): its timings are not a device's latency"
                                            if found["emulated"] else ""))
    if found.get("environment"):
        click.echo(f"  environment {found['environment']} (edgebuild board setup) in its cache")
    if target_name:
        target = load_target(target_name)
        problem = ssh.mismatch(host, found, target)
        if problem:
            raise InputError(f"{problem}.")
        click.echo(f"  matches target {target.name}: {target.arch}, {target.runtime} {target.runtime_version}")


@board.command("setup")
@click.argument("host")
@click.argument("target_name", metavar="TARGET")
@click.option("--ssh-config", type=click.Path(dir_okay=False), help="The ssh client config (ssh -F; default: yours).")
@click.option("--python", "python", default="python3", show_default=True, help="The board's Python (see "
              "validate.board_python).")
@config_option
@set_option
@click.pass_context
def board_setup(ctx, host, target_name, ssh_config, python, config_path, sets):
    """Install TARGET's runtime on the board HOST: the site-packages of the target's environment (made here
    from its hash-pinned aarch64 wheels, as for its emulation) pushed over SSH into the board's cache
    (~/.cache/edgebuild-board/envs/), for the board's own Python. The board needs no internet and no pip;
    validate --board uses it from then on. The board's arch and Python version must be the target's."""
    import tempfile

    from pipeline.device import environment
    from pipeline.device.executors import ssh
    from pipeline.device.targets import load_target
    from pipeline.engine.errors import InputError

    target = load_target(target_name)
    if target.kind != "linux" or not target.emulated:
        raise InputError(f"board setup installs a Linux board's runtime; target {target.name} is not one. Pass the "
                         "target file of the board (edgebuild target list).")
    log = (lambda m: None) if ctx.obj.quiet else (lambda m: click.echo(m, err=True))
    found = ssh.ask(host, ssh_config, python)
    problem = ssh.mismatch(host, found, target, runtime=False)
    if problem:
        raise InputError(f"{problem}.")
    root = environment.setup(target, default_cache_dir(_load_config(config_path, sets)), log=log)
    key = environment.env_key(target)
    log(f"pushing {target.name}'s runtime ({target.runtime} {target.runtime_version}) to {host}")
    with tempfile.TemporaryDirectory(prefix="edgebuild-board-") as work:
        try:
            said = ssh.install(host, ssh_config, ssh.control_dir(), python, key, root / "site", work)
        except RuntimeError as exc:
            raise InputError(f"board {host} could not install the environment: {exc}.") from None
    click.echo(f"{host}: environment {key} for {target.name} ({target.runtime} {target.runtime_version}) "
               f"{'installed' if said['new'] else 'already there'}")


@target.command("image")
@click.argument("name")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Also copy the image archive here.")
@config_option
@set_option
@click.pass_context
def target_image(ctx, name, output, config_path, sets):
    """Build the target as an OCI image (podman, from the same arm64 root filesystem, runtime and
    validator the emulated target runs; no registry) and save it as an archive that `docker load` and
    `podman load` accept. Needs podman and runc (bash scripts/install.sh --container).

    \b
    On a Raspberry Pi:  docker load -i ARCHIVE
                        docker run --rm -v $PWD:/work IMAGE /work/model_int8.tflite /work/x.npy /work/y.npy
    On x86 (podman):    podman run --rm --runtime runc --network none -v $PWD:/work
                          --entrypoint /usr/bin/qemu-aarch64-static IMAGE
                          /usr/bin/python3 /opt/edgebuild/ondevice.py /work/model_int8.tflite /work/x.npy /work/y.npy
                        (see the README for the --ulimit flags a sandbox may need)
    """
    from pipeline.device import image
    from pipeline.device.targets import load_target

    log = (lambda m: None) if ctx.obj.quiet else (lambda m: click.echo(m, err=True))
    config = _load_config(config_path, sets)  # cache.dir: where validate.executor = "container" looks too
    built = image.build(load_target(name), default_cache_dir(config), log=log)
    if output:
        from pipeline.engine.fsutil import copy_output

        copy_output(built["archive"], output)
        built["archive"] = str(Path(output).resolve())
    click.echo(f"{name}: image {built['tag']} ({built['id'][:12]}), archive {built['archive']} "
               f"({built['bytes'] / 2**20:.0f} MiB)")


@target.command("dockerfile")
@click.option("--check", is_flag=True, help="Exit 1 if Dockerfile.edge differs from the target files.")
@click.option("--output", "-o", default="Dockerfile.edge", show_default=True, type=click.Path(dir_okay=False))
def target_dockerfile(check, output):
    """Write Dockerfile.edge (arm64 images with each target's runtime and the same validator)."""
    from pipeline.device.image import dockerfile
    from pipeline.device.targets import available_targets, load_target
    from pipeline.engine.fsutil import write_output

    text = dockerfile([load_target(n) for n in available_targets()])
    if check:
        same = Path(output).is_file() and Path(output).read_text() == text
        click.echo(f"{output} is {'up to date' if same else 'out of date: run edgebuild target dockerfile'}")
        sys.exit(0 if same else 1)
    write_output(output, text.encode())
    click.echo(f"wrote {output}")


@main.group(cls=Commands)
def cache():
    """The stage cache ($EDGEBUILD_CACHE, else cache.dir, else $EDGEBUILD_HOME or ~/.cache/edgebuild)."""


@cache.command("clear")
@config_option
@set_option
def cache_clear(config_path, sets):
    """Delete every cached stage output and JAX's compilation cache (emulated target environments are kept)."""
    import shutil

    from pipeline.engine.cache import StageCache

    where = default_cache_dir(_load_config(config_path, sets))
    n = StageCache(where).clear()
    jax = where / "jax"  # (a link to another cache's, as the tests make, is unlinked, not emptied)
    size = sum(p.stat().st_size for p in jax.rglob("*") if p.is_file()) if jax.is_dir() and not jax.is_symlink() else 0
    if jax.is_symlink():
        jax.unlink()
    shutil.rmtree(jax, ignore_errors=True)
    click.echo(f"removed {n} cached stage outputs and JAX's compilation cache ({size / 2**20:.1f} MiB) from {where}")


@main.command("config")
def show_config():
    """Print every config key with its default and description."""
    from pipeline.engine import config as config_mod

    click.echo(config_mod.describe())
