"""The remote cache against a real S3 API: moto's standalone server (the one s3fs's own tests use),
started on localhost by the fixture. Runners are CLI processes with separate local caches that share
one bucket."""

import json
from pathlib import Path

import pytest

from conftest import ALL_TARGETS, TINY, edgebuild
from s3server import local_s3

SECRET = "edgebuild-test-secret-4f9c2e"  # must never appear in a log, a record or a manifest
ARTIFACTS = ("model_int8.tflite", "model_int8.onnx", "model.onnx", "model_float.tflite", "float.keras",
             "predictions.npz", *(f"target-{t}.npz" for t in ALL_TARGETS))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on localhost with a bucket, and the AWS environment a runner needs to reach it."""
    with local_s3("edgebuild-ci", tmp_path_factory.mktemp("moto") / "server.log", secret=SECRET) as env:
        yield {"env": env, "url": "s3://edgebuild-ci/cache", "fs": _fs()}


def _fs():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def _runner(tiny_build, s3, local_cache, out, *extra):
    """`edgebuild build` of the session's tiny build config with its own local cache and output dir."""
    calib = tiny_build["out"] / "calib.json"  # the versioned calibration set the tiny build pinned
    return edgebuild(
        "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{calib}"',
        "--set", f"validate.targets={json.dumps(ALL_TARGETS)}", "--set", f'cache.remote="{s3["url"]}"', *extra,
        env={**s3["env"], "EDGEBUILD_CACHE": str(local_cache)},
    )


def _stage_lines(stderr):
    return {line.split()[1]: line.split()[0] for line in stderr.splitlines()
            if line.split()[:1] in (["ran"], ["cached"], ["remote"])}


def _no_secret(*texts_and_dirs):
    for item in texts_and_dirs:
        if isinstance(item, Path):
            for path in item.rglob("*"):
                if path.is_file():
                    assert SECRET.encode() not in path.read_bytes(), f"the secret key is written in {path}"
        else:
            assert SECRET not in item


def test_a_fresh_runner_gets_every_stage_from_the_bucket_byte_identical(tiny_build, s3, cache_dir, tmp_path):
    # runner A: the session's warm local cache; its entries are written back to the empty bucket
    a = _runner(tiny_build, s3, cache_dir, tmp_path / "a")
    assert a.returncode == 0, a.stderr[-3000:]
    ran = {stage for stage, how in _stage_lines(a.stderr).items() if how != "cached"}
    assert ran <= {"calibration"}, a.stderr  # (its key now covers the calibration file the tiny build pinned)
    assert s3["fs"].ls("edgebuild-ci/cache/stages"), "runner A wrote its entries to the bucket"
    # runner B: an empty local cache (an ephemeral CI runner)
    b = _runner(tiny_build, s3, tmp_path / "b-cache", tmp_path / "b")
    assert b.returncode == 0, b.stderr[-3000:]
    lines = _stage_lines(b.stderr)
    assert len(lines) == 7 + len(ALL_TARGETS) and set(lines.values()) == {"remote"}, lines
    for name in ARTIFACTS:
        assert (tmp_path / "b" / "tiny" / name).read_bytes() == (tiny_build["dir"] / name).read_bytes(), name
    records = [json.loads(p.read_text()) for p in (tmp_path / "b" / "tiny" / "records").glob("*.json")]
    assert {r["cache_source"] for r in records} == {"remote"}
    manifest = json.loads((tmp_path / "b" / "tiny" / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "pass" and manifest["config"]["cache"]["remote"] == s3["url"]
    _no_secret(a.stdout + a.stderr, b.stdout + b.stderr, tmp_path / "b", tmp_path / "b-cache")


def test_a_corrupted_remote_object_is_detected_and_the_stage_runs_again(tiny_build, s3, cache_dir, tmp_path):
    fs = _fs()
    if not fs.exists("edgebuild-ci/cache/stages"):
        assert _runner(tiny_build, s3, cache_dir, tmp_path / "a").returncode == 0
    entries = [json.loads(fs.cat_file(p)) for p in fs.ls("edgebuild-ci/cache/stages")]
    blob = next(e["sha256"]["predictions.npz"] for e in entries if "predictions.npz" in e["sha256"])
    path = f"edgebuild-ci/cache/blobs/{blob}"
    good = fs.cat_file(path)
    fs.pipe_file(path, good[: len(good) // 2])  # a partial object, as a broken uploader would leave it
    try:
        c = _runner(tiny_build, s3, tmp_path / "c-cache", tmp_path / "c")
    finally:
        fs.pipe_file(path, good)
    assert c.returncode == 0, c.stderr[-3000:]
    assert "corrupt or partial" in c.stderr and "continuing without it" in c.stderr
    lines = _stage_lines(c.stderr)
    assert lines["evaluate"] == "ran" and lines["export"] == "remote", lines
    for name in ("predictions.npz", "model_int8.tflite"):
        assert (tmp_path / "c" / "tiny" / name).read_bytes() == (tiny_build["dir"] / name).read_bytes()
    _no_secret(c.stdout + c.stderr, tmp_path / "c")


def test_a_fresh_runner_restores_a_target_environment_instead_of_building_it(s3, cache_dir, tmp_path):
    env = {**s3["env"], "EDGEBUILD_CACHE": str(cache_dir)}
    remote = ["--set", f'cache.remote="{s3["url"]}"']
    a = edgebuild("target", "setup", "rpi5-litert", *remote, env=env)  # set up here: stored in the bucket
    assert a.returncode == 0, a.stderr
    b = edgebuild("target", "setup", "rpi5-litert", *remote, env={**env, "EDGEBUILD_CACHE": str(tmp_path / "fresh")})
    assert b.returncode == 0, b.stderr
    assert "restoring from the remote cache" in b.stderr and "root filesystem" not in b.stderr, b.stderr
    (restored,) = (tmp_path / "fresh" / "targets").glob("rpi5-litert-*/ready.json")
    original = cache_dir / "targets" / restored.parent.name / "ready.json"
    assert json.loads(restored.read_text()) == json.loads(original.read_text())
    assert "aarch64" in b.stdout  # the self-test ran the restored interpreter under qemu
    _no_secret(a.stdout + a.stderr, b.stdout + b.stderr)
