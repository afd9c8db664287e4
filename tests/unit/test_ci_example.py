"""examples/ci/github-actions.yml is valid YAML, and every edgebuild command in it exists with the
flags and values it uses (parsed by the real CLI, not run)."""

import re
import shlex
import warnings
from pathlib import Path

import click
import yaml

from pipeline.cli import main
from pipeline.device.targets import available_targets
from pipeline.orchestrate import shards

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci" / "github-actions.yml"


def _commands(workflow):
    """(job, matrix, argv) of every edgebuild command line in the workflow's run steps."""
    for name, job in workflow["jobs"].items():
        matrix = (job.get("strategy") or {}).get("matrix") or {}
        for step in job["steps"]:
            for line in step.get("run", "").splitlines():
                for part in re.split(r"&&|;", _substitute(line, matrix, workflow["env"])):
                    words = shlex.split(part)
                    if words and words[0] == "edgebuild":
                        yield name, matrix, words[1:]


def _substitute(line, matrix, env):
    """Put a value of each ${{ matrix.X }} / ${{ env.X }} in, as the runner would, and each $VAR, as the
    shell would (only the workflow's env; a variable it does not define is a KeyError)."""
    def value(m):
        scope, key = m.group(1), m.group(2)
        return str(matrix[key][0] if scope == "matrix" else env[key])

    line = re.sub(r"\$\{\{\s*(matrix|env)\.(\w+)\s*\}\}", value, line)
    if line.lstrip().startswith("edgebuild"):
        line = re.sub(r"\$(\w+)", lambda m: shlex.quote(str(env[m.group(1)])), line.replace('"$', "$").replace('E"', "E"))
    return line


def _rest(ctx):
    with warnings.catch_warnings():  # click 8.2 deprecates protected_args; 8.1 needs it
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(ctx.protected_args) + list(ctx.args)


def _parse(argv):
    """Parse argv as the CLI would, without running it: a UsageError for an unknown command or flag."""
    ctx = main.make_context("edgebuild", list(argv))
    command, args = main, _rest(ctx)
    while isinstance(command, click.Group):
        name, command, args = command.resolve_command(ctx, args)
        ctx = command.make_context(name, args, parent=ctx)
        args = _rest(ctx) if isinstance(command, click.Group) else []
    return command.name, ctx.params


def test_the_workflow_is_valid_yaml_with_the_jobs_it_documents():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert {"build", "validate", "merge"} <= set(workflow["jobs"])
    assert workflow["jobs"]["merge"]["needs"] == "validate"
    matrix = workflow["jobs"]["validate"]["strategy"]["matrix"]
    assert set(matrix["target"]) <= set(available_targets()) and len(matrix["shard"]) == int(workflow["env"]["SHARDS"])


def test_every_edgebuild_command_in_it_exists_with_its_flags():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    seen = set()
    for job, matrix, words in _commands(workflow):
        name, params = _parse(words)
        seen.add(name)
        if params.get("shard"):
            i, n = shards.parse(params["shard"])
            assert n == int(workflow["env"]["SHARDS"])
        for entry in params.get("sets") or ():
            assert entry.startswith("cache.remote=") and '"s3://' in entry, (job, entry)
    assert {"build", "validate", "merge", "setup"} <= seen, seen
    for job, matrix, words in _commands(workflow):
        for target in matrix.get("target", []):
            assert target in available_targets(), (job, target)


def test_a_wrong_flag_is_caught_by_the_parser():
    try:
        _parse(["validate", "build/digits", "--target", "rpi5-litert", "--shards", "1/2"])
    except click.UsageError:
        return
    raise AssertionError("an unknown flag passed the parser")
