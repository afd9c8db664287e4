"""`python -m bench --only ci`: a fresh CI runner with a warm remote cache vs fully cold, and a large test
set validated in 1 vs 2 shards run as separate invocations and merged."""

import json
import os
import shutil
import subprocess
import sys
import time

from pipeline.engine.fsutil import sha256_file

from bench.common import REPO, Section, edgebuild, log, sets

ARTIFACT_NAMES = ("model_int8.tflite", "model_int8.onnx", "model.onnx", "model_float.tflite", "float.keras",
                  "predictions.npz", "target-rpi4-bookworm-tflite.npz", "target-rpi5-litert.npz",
                  "target-rpi5-onnxruntime.npz")


def _same_artifacts(a, b):
    return all(sha256_file(a / n) == sha256_file(b / n) for n in ARTIFACT_NAMES)


def _stage_sources(build_dir):
    records = [json.loads(p.read_text()) for p in (build_dir / "records").glob("*.json")]
    return sorted({r.get("cache_source") or "ran" for r in records})


def big_test_set(path, copies=4, seed=0):
    """scikit-learn's digits, each image shifted by one pixel in `copies` directions, with noise: 7,188
    real-derived 8x8 test images, none equal to a training image (edgebuild refuses an overlap)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    base = np.round(digits.images * 255.0 / 16.0)
    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for dy, dx in [(0, 1), (1, 0), (-1, -1), (0, -1), (-1, 0)][:copies]:
        shifted = np.roll(base, (dy, dx), axis=(1, 2)) + rng.normal(0, 8, base.shape)
        xs.append(shifted)
        ys.append(digits.target)
    x = np.clip(np.concatenate(xs), 0, 255).astype(np.uint8)
    np.savez(path, x=x, y=np.concatenate(ys))
    return len(x)


def ci_runners(work):
    """A fresh CI runner (empty local cache) against a warm remote cache (moto's S3 server on localhost,
    as in the tests), vs the fully cold build; everything includes the emulated targets' set-up."""
    sys.path.insert(0, str(REPO / "tests"))
    from s3server import local_s3

    remote = 'cache.remote="s3://bench/cache"'
    result = {}
    with local_s3("bench", work / "moto.log"):
        def run(name, cache, *overrides):
            (work / cache).mkdir(exist_ok=True)
            out = work / f"{name}-out"
            _, wall = edgebuild(["build", *sets([f'build.out_dir="{out}"', *overrides])], work / cache)
            log(f"{name}: {wall:.1f} s ({', '.join(_stage_sources(out / 'digits'))})")
            return out / "digits", round(wall, 1)

        cold_dir, result["fully_cold_s"] = run("fully-cold", "runner-a")
        started = time.perf_counter()
        run("fill-remote", "runner-a", remote)  # runner A's warm cache fills the empty remote
        for name in ("rpi4-bookworm-tflite", "rpi5-litert", "rpi5-onnxruntime"):
            edgebuild(["target", "setup", name, "--set", remote], work / "runner-a")
        result["fill_remote_s"] = round(time.perf_counter() - started, 1)
        warm_dir, result["fresh_runner_warm_remote_s"] = run("fresh-runner", "runner-b", remote)
        result["fresh_runner_artifacts_identical"] = _same_artifacts(cold_dir, warm_dir)
        result["fresh_runner_stage_sources"] = _stage_sources(warm_dir)
        # a commit that changes the model (train.epochs): train and every later stage run, the targets'
        # environments are restored from the remote instead of built
        _, result["fresh_runner_changed_model_s"] = run("fresh-runner-changed-model", "runner-c", remote,
                                                        "train.epochs=9")
    result["ratio_fresh_runner_vs_cold"] = round(result["fresh_runner_warm_remote_s"] / result["fully_cold_s"], 3)
    return result


def sharded_validation(work):
    """A large test set (big_test_set) on rpi5-litert: one `validate --shard 1/1` vs two invocations
    `--shard 1/2` and `--shard 2/2` side by side (two runners, one core each), each then merged."""
    big = work / "big-test.npz"
    n = big_test_set(big)
    out = work / "sharded-out"
    cache = work / "sharded-cache"
    cache.mkdir(exist_ok=True)
    common = sets([f'build.out_dir="{out}"', f'data.test_source="{big}"', 'validate.targets=["rpi5-litert"]',
                   "validate.shards=1"])
    edgebuild(["build", "--until", "evaluate", *common], cache)
    edgebuild(["target", "setup", "rpi5-litert"], cache)  # set up before the timings (as the CI build job does)
    build_dir = out / "digits"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache)
    result = {"test_images": n, "target": "rpi5-litert"}
    merged = {}
    for shards in (1, 2):
        shutil.rmtree(build_dir / "shards", ignore_errors=True)
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "--quiet", "validate", str(build_dir), "--target",
                                   "rpi5-litert", "--shard", f"{i}/{shards}", *common], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(1, shards + 1)]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"bench: a shard failed: {err[-2000:]}")
        wall = time.perf_counter() - started
        _, merge_wall = edgebuild(["merge", str(build_dir), *common], cache)
        target = json.loads((build_dir / "manifest.json").read_text())["metrics"]["targets"]["rpi5-litert"]
        merged[shards] = sha256_file(build_dir / "target-rpi5-litert.npz")
        result[f"{shards}_shard"] = {"shards_wall_s": round(wall, 1), "merge_s": round(merge_wall, 1),
                                     "accuracy": target["accuracy"], "bitexact_vs_host": target["bitexact_fraction"],
                                     "parts": target.get("parts")}
        log(f"{shards} shard(s): {wall:.1f} s + merge {merge_wall:.1f} s")
    result["merged_outputs_identical"] = merged[1] == merged[2]
    result["ratio_2_vs_1"] = round(result["2_shard"]["shards_wall_s"] / result["1_shard"]["shards_wall_s"], 3)
    return result


def ci_markdown(c):
    r, s = c["runners"], c["sharded_validation"]
    return "\n".join([
        f"CI runners ({c['machine']['cpu']}, {c['machine']['cores']} cores), default build with its 3 emulated targets:",
        "", "| runner | wall (s) |", "|---|---|",
        f"| fully cold (empty local cache, no remote; targets set up) | {r['fully_cold_s']} |",
        f"| fresh runner, warm remote cache (same commit) | {r['fresh_runner_warm_remote_s']} |",
        f"| fresh runner, warm remote cache, model changed (train.epochs=9: train onwards run; targets restored) | "
        f"{r['fresh_runner_changed_model_s']} |",
        "", f"fresh/cold ratio {r['ratio_fresh_runner_vs_cold']}; artifacts byte-identical to the cold build: "
            f"{r['fresh_runner_artifacts_identical']}; filling the remote took {r['fill_remote_s']} s.", "",
        f"Validation of {s['test_images']} test images on {s['target']} (one core per shard):", "",
        "| shards (separate invocations, side by side) | shards wall (s) | merge (s) |", "|---|---|---|",
        f"| 1 | {s['1_shard']['shards_wall_s']} | {s['1_shard']['merge_s']} |",
        f"| 2 | {s['2_shard']['shards_wall_s']} | {s['2_shard']['merge_s']} |",
        "", f"2/1 ratio {s['ratio_2_vs_1']}; merged outputs byte-identical: {s['merged_outputs_identical']}.",
    ])


SECTION = Section("CI runners: warm remote cache, sharded validation",
                  "a fresh CI runner with a warm remote cache vs fully cold, and a large test set in 1 vs 2 shards",
                  "ci", lambda args, work, tc: {"sharded_validation": sharded_validation(work),
                                                "runners": ci_runners(work)}, ci_markdown)
