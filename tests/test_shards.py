"""Targets validated in shards (separate `edgebuild validate --shard i/N` processes, as separate CI jobs
would run them) and merged: the merged result is the one-run result; merge refuses a missing, repeated,
changed or foreign shard."""

import json
import shutil

import numpy as np
import pytest

from conftest import TINY, edgebuild

TARGETS = ["rpi4-bookworm-tflite", "rpi5-onnxruntime"]  # host differences (XNNPACK) and the .onnx path
SPLITS = {"rpi4-bookworm-tflite": 3, "rpi5-onnxruntime": 2}
SAME_AS_ONE_RUN = ("accuracy", "per_class", "bitexact_fraction", "max_abs_diff", "top1_agreement", "flipped_ids",
                   "samples", "model", "runtime_version")


SECRET = "a CI secret the shard and merge jobs share"


def _args(tiny_build, out):
    calib = tiny_build["out"] / "calib.json"
    return ["--config", str(TINY), "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{calib}"',
            "--set", f"validate.targets={json.dumps(TARGETS)}"]


@pytest.fixture(scope="module")
def sharded(tiny_build, cache_dir, tmp_path_factory):
    """The tiny build up to evaluate (cache hits), then every shard of each target as its own process."""
    out = tmp_path_factory.mktemp("sharded")
    env = {"EDGEBUILD_CACHE": str(cache_dir), "EDGEBUILD_SHARD_KEY": SECRET}
    proc = edgebuild("build", *_args(tiny_build, out), "--until", "evaluate", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for target, n in SPLITS.items():
        for i in range(1, n + 1):
            proc = edgebuild("validate", str(out / "tiny"), "--target", target, "--shard", f"{i}/{n}",
                             *_args(tiny_build, out), env=env)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert f"shard-{i}-of-{n}.npz" in proc.stdout
    assert not (out / "tiny" / "manifest.json").exists(), "a shard writes no manifest"
    return {"out": out, "dir": out / "tiny", "env": env}


def test_merged_shards_equal_one_run_of_the_whole_test_set(tiny_build, sharded):
    proc = edgebuild("merge", str(sharded["dir"]), *_args(tiny_build, sharded["out"]), env=sharded["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "merged 3" in proc.stderr and "merged 2" in proc.stderr
    manifest = json.loads((sharded["dir"] / "manifest.json").read_text())
    assert manifest["gate"]["verdict"] == "pass"
    whole = tiny_build["manifest"]["metrics"]["targets"]
    for target, n in SPLITS.items():
        name = f"target-{target}.npz"
        assert (sharded["dir"] / name).read_bytes() == (tiny_build["dir"] / name).read_bytes(), name
        merged = manifest["metrics"]["targets"][target]
        assert {k: merged[k] for k in SAME_AS_ONE_RUN} == {k: whole[target][k] for k in SAME_AS_ONE_RUN}
        for k in ("bitexact_fraction", "max_abs_diff", "top1_agreement", "flipped_ids", "twin"):
            assert merged["isa"][k] == whole[target]["isa"][k], (target, k)
        assert merged["first_difference"] == whole[target]["first_difference"], target
        assert merged["shard_runs"] == n and len(merged["parts"]) == n and len(merged["merged_from"]) == n
        assert sum(p["samples"] for p in merged["parts"]) == merged["samples"]
    assert all(merged["shards_signed"] for merged in
               (json.loads((sharded["dir"] / "records" / f"target-{t}.json").read_text()) for t in SPLITS))
    # signed, the merged results went into the stage cache: a build of the same config gets them as hits
    again = edgebuild("build", *_args(tiny_build, sharded["out"]), env=sharded["env"])
    assert again.returncode == 0, again.stderr[-2000:]
    lines = [line.split() for line in again.stderr.splitlines() if line.split()[1:2] and
             line.split()[1].startswith("target:")]
    assert lines and all(words[0] == "cached" for words in lines), again.stderr


def _merge_files(tiny_build, sharded, files):
    return edgebuild("merge", str(sharded["dir"]), *map(str, files), *_args(tiny_build, sharded["out"]),
                     env=sharded["env"])


def test_merge_refuses_missing_repeated_changed_or_foreign_shards(tiny_build, sharded, tmp_path):
    files = sorted((sharded["dir"] / "shards").glob("target-rpi4-bookworm-tflite.*.npz"))
    assert len(files) == 3
    missing = _merge_files(tiny_build, sharded, files[:2])
    assert missing.returncode == 3 and "missing 3/3" in missing.stderr, missing.stderr
    repeated = _merge_files(tiny_build, sharded, [*files, files[0]])
    assert repeated.returncode == 3 and "more than once 1/3" in repeated.stderr, repeated.stderr

    changed = tmp_path / files[1].name
    with np.load(files[1]) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["outputs"] = arrays["outputs"].copy()
    arrays["outputs"].flat[0] += 1
    np.savez(changed, **arrays)
    bad = _merge_files(tiny_build, sharded, [files[0], changed, files[2]])
    assert bad.returncode == 3 and "do not match the sha256" in bad.stderr, bad.stderr

    # a shard made with other settings (another key): refused, though its samples would fit
    foreign_dir = tmp_path / "foreign"
    shutil.copytree(sharded["dir"], foreign_dir / "tiny", ignore=shutil.ignore_patterns("shards"))
    proc = edgebuild("validate", str(foreign_dir / "tiny"), "--target", "rpi4-bookworm-tflite", "--shard", "2/3",
                     *_args(tiny_build, foreign_dir), "--set", "validate.shards=2", env=sharded["env"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    (foreign,) = (foreign_dir / "tiny" / "shards").glob("*.npz")
    other = _merge_files(tiny_build, sharded, [files[0], foreign, files[2]])
    assert other.returncode == 3 and "must be made from this build" in other.stderr, other.stderr
    for proc in (missing, repeated, bad, other):
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2, proc.stderr


def test_a_forged_shard_is_refused_with_the_secret_and_never_cached_without_it(tiny_build, sharded, tmp_path):
    """A shard whose outputs were replaced and its sha256s recomputed (all a forger needs without the secret):
    refused by a merge that holds the secret; merged as given by one that does not, but never stored in the
    stage cache, so no later build replays it as `cached`."""
    from pipeline.orchestrate import shards
    from pipeline.engine.fsutil import atomic_save_npz

    files = sorted((sharded["dir"] / "shards").glob("target-rpi4-bookworm-tflite.*.npz"))
    with np.load(files[1]) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    arrays["outputs"] = np.zeros_like(arrays["outputs"])
    meta["sha256"] = {k: shards._array_sha256(v) for k, v in arrays.items()}
    forged = tmp_path / files[1].name
    atomic_save_npz(forged, meta=np.array(json.dumps(meta)), **arrays)
    refused = _merge_files(tiny_build, sharded, [files[0], forged, files[2]])
    assert refused.returncode == 3 and "unsigned or signed with another" in refused.stderr, refused.stderr

    work = tmp_path / "copy"
    shutil.copytree(sharded["dir"], work / "tiny", ignore=shutil.ignore_patterns("shards", ".lock"))
    cache = tmp_path / "cache"
    env = {"EDGEBUILD_CACHE": str(cache)}  # no secret
    proc = edgebuild("merge", str(work / "tiny"), *map(str, [files[0], forged, files[2]]),
                     *(str(p) for p in sorted((sharded["dir"] / "shards").glob("target-rpi5-onnxruntime.*.npz"))),
                     *_args(tiny_build, work), env=env)
    assert proc.returncode in (0, 1) and "are not signed" in proc.stderr, proc.stderr[-2000:]
    record = json.loads((work / "tiny" / "records" / "target-rpi4-bookworm-tflite.json").read_text())
    assert record["shards_signed"] is False and not record["cached"]
    assert not (cache / "stages").is_dir() or not any((cache / "stages").iterdir()), "an unsigned merge was cached"
