"""`python -m bench` (or `make bench`): what edgebuild costs and what it buys, measured side by
side in one run on this machine. Writes bench/results.json and prints Markdown tables.

Sections: build time per stage cold vs warm (with peak memory and the JAX compile share),
on-target validation cost (emulated aarch64 vs the host interpreter, 1 vs 2 shards),
accuracy float vs post-training int8 vs edgebuild QAT int8 (same splits, same calibration set),
artifact sizes and host/target agreement, TFLite and ONNX side by side (also alone: --only formats),
and reproducibility (two clean builds, every sha256). Alone: --only isa (vector-ISA reproducibility),
--only bytecode (emulated targets with and without their compiled bytecode), --only suite (the test suite
with 1 and 2 pytest-xdist workers), --only speed --at BEFORE (the default build per stage, cold, at an earlier
revision vs now), --only fit (does each bundled model fit the devices: arena, MACs, Vela's figures, and
each target stage's time), --only ci (a fresh CI runner with a warm remote cache vs
fully cold, and a large test set validated in 1 vs 2 shards run as separate invocations and merged).
Timings are medians of --repeats runs, with their min-max spread; nothing here is asserted.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

from pipeline.engine.fsutil import sha256_file

REPO = Path(__file__).resolve().parent.parent

# Accuracy comparisons: (label, config overrides); identical splits and calibration sets within a
# case, since PTQ converts the same build's float model with the same calibration file.
SIGNS = REPO.parent / "shared" / "datasets" / "sign-language-digits" / "Dataset"
ACCURACY_CASES = [
    ("digits, small_cnn (default)", []),
    ("digits, ds_cnn (depthwise)", ['train.recipe="ds_cnn"']),
    # Real photos are harder than digits: here plain post-training int8 loses more than 1 pp.
    ("sign-language photos 32x32 RGB, small_cnn", [f'data.source="{SIGNS}"', "data.channels=3", "data.calibration_samples=100"]),
    ("sign-language photos 32x32 RGB, ds_cnn", [f'data.source="{SIGNS}"', "data.channels=3", "data.calibration_samples=100",
                                                'train.recipe="ds_cnn"']),
]

# "Bring a trained model": bench/pretrained.py trains a residual CNN outside edgebuild (0..255 input,
# softmax head, .h5) with its own held-out test folder; edgebuild builds it with default settings
# (only what describes the model and the data is set), then with variations.
BYO_CASES = [
    ("defaults: fine-tune train.epochs = 10 (best val epoch kept), QAT lr 1e-5", []),
    ("model as is (train.epochs = 0), QAT lr 1e-5 (default)", ["train.epochs=0"]),
    ("model as is, QAT lr 1e-4", ["train.epochs=0", "qat.learning_rate=0.0001"]),
    ("model as is, QAT at the old default lr 5e-4", ["train.epochs=0", "qat.learning_rate=0.0005"]),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def edgebuild(args, cache, check=True, repo=REPO):
    """Run the CLI of the checkout `repo` (its `pipeline` comes first on sys.path, and its stage processes
    run the same code) with the stage cache `cache`; (CompletedProcess, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--quiet", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if check and proc.returncode not in (0, 1):
        raise SystemExit(f"bench: edgebuild {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc, wall


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def median_spread(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def fresh_cache(work, name, targets_cache):
    cache = work / name
    cache.mkdir()
    (cache / "targets").symlink_to(targets_cache)  # target environments are shared; stages are not
    return cache


def build_times(work, repeats, targets_cache):
    """Cold builds (fresh stage cache) and warm rebuilds (everything cached) of the default config."""
    cold, warm, manifests = [], [], []
    for i in range(repeats):
        cache = fresh_cache(work, f"cold{i}", targets_cache)
        out = work / f"cold{i}-out"
        peak_before = _children_peak_mb()
        proc, wall = edgebuild(["build", "--set", f'build.out_dir="{out}"'], cache)
        m = json.loads((out / "digits" / "manifest.json").read_text())
        records = {p.stem: json.loads(p.read_text()) for p in (out / "digits" / "records").glob("*.json")}
        cold.append({"wall": wall, "stages": {r["stage"]: r["wall_seconds"] for r in records.values()},
                     "peak_rss_mb": {r["stage"]: r.get("peak_rss_mb") for r in records.values()},
                     "epoch_seconds": records["train"].get("epoch_seconds"),
                     "cli_peak_mb": max(peak_before, _children_peak_mb())})
        manifests.append((out / "digits", m))
        log(f"cold build {i + 1}/{repeats}: {wall:.1f} s")
    for i in range(repeats):
        out = work / f"warm{i}-out"
        proc, wall = edgebuild(["build", "--set", f'build.out_dir="{out}"'], work / "cold0")
        m = json.loads((out / "digits" / "manifest.json").read_text())
        assert all(s["cached"] for s in m["stages"].values()), "a warm rebuild ran a stage"
        warm.append({"wall": wall, "stages": {k: v["wall_seconds"] for k, v in m["stages"].items()}})
        log(f"warm build {i + 1}/{repeats}: {wall:.1f} s")
    stages = list(cold[0]["stages"])
    per_stage = {s: {"cold": median_spread([c["stages"][s] for c in cold]),
                     "warm": median_spread([w["stages"][s] for w in warm]),
                     "peak_rss_mb": max((c["peak_rss_mb"][s] or 0) for c in cold)} for s in stages}
    epochs = cold[0]["epoch_seconds"] or []
    compile_s = epochs[0] - statistics.median(epochs[1:]) if len(epochs) > 2 else None
    return {
        "cold_total_s": median_spread([c["wall"] for c in cold]),
        "warm_total_s": median_spread([w["wall"] for w in warm]),
        "per_stage": per_stage,
        "train_epoch_seconds": epochs,
        "jax_compile_estimate_s": round(compile_s, 2) if compile_s is not None else None,
        "jax_compile_share_of_train": round(compile_s / sum(epochs), 3) if compile_s is not None else None,
    }, manifests


def _children_peak_mb():
    import resource

    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def reproducibility(manifests):
    (_, m0), rest = manifests[0], manifests[1:]
    rows = []
    for key, art in sorted(m0["artifacts"].items()):
        same = [m["artifacts"][key]["sha256"] == art["sha256"] for _, m in rest]
        rows.append({"artifact": key, "sha256": art["sha256"][:16], "identical_in_all_builds": all(same)})
    return {"builds": len(manifests), "artifacts": rows,
            "all_identical": all(r["identical_in_all_builds"] for r in rows)}


ISA_SETTINGS = (  # XLA_FLAGS for the stage processes: edgebuild's default cap, an AVX2-only CPU, no cap
    ("default (edgebuild caps XLA at AVX2)", None),
    ("forced AVX2 (what an AVX2-only CPU compiles)", "--xla_cpu_max_isa=AVX2"),
    ("forced AVX-512 (no cap, on this CPU)", "--xla_cpu_max_isa=AVX512"),
)


def isa_reproducibility(work, targets_cache):
    """The default build (to export, fresh stage cache) under several XLA ISA settings: which artifacts
    are byte-identical to the default's."""
    runs = []
    for label, flags in ISA_SETTINGS:
        out, cache = work / f"isa{len(runs)}-out", fresh_cache(work, f"isa{len(runs)}", targets_cache)
        env_flags = {"XLA_FLAGS": flags} if flags else {}
        with _env(env_flags):
            edgebuild(["build", "--until", "export", "--set", f'build.out_dir="{out}"'], cache)
        files = {n: sha256_file(out / "digits" / n) for n in ("float.keras", "qat.keras", "model_int8.tflite",
                                                                "model_float.tflite", "model.onnx")}
        runs.append({"setting": label, "xla_flags": flags, "sha256": {k: v[:16] for k, v in files.items()}})
        log(f"isa {label}: int8 {files['model_int8.tflite'][:16]}")
    base = runs[0]["sha256"]
    for r in runs:
        r["identical_to_default"] = sorted(k for k in base if r["sha256"][k] == base[k])
    return {"cpu": machine().get("cpu"), "runs": runs}


SPEED_KINDS = ("before", "cold", "compile_cache")


def speed(work, repeats, targets_cache, before):
    """The default build with an empty stage cache (targets set up), in one run: the code at `before`
    (a git worktree, same venv) vs now truly cold (JAX's compilation cache empty) vs now with the
    compilation cache the cold build left (a runner whose cache survives, or a config change that keeps
    the computations), alternated. Per-stage and whole wall seconds, QAT/train seconds per epoch, and
    every artifact compared byte for byte across all builds."""
    tree = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), before], cwd=REPO, check=True,
                   capture_output=True)
    runs, digests = {k: [] for k in SPEED_KINDS}, []
    try:
        for i in range(repeats):
            for kind in SPEED_KINDS:
                cache, out = fresh_cache(work, f"speed-{kind}{i}", targets_cache), work / f"speed-{kind}{i}-out"
                if kind == "compile_cache":
                    shutil.copytree(work / f"speed-cold{i}" / "jax", cache / "jax")
                proc, wall = edgebuild(["build", "--set", f'build.out_dir="{out}"'], cache,
                                       repo=tree if kind == "before" else REPO)
                build_dir = out / "digits"
                records = {r["stage"]: r for r in (json.loads(p.read_text()) for p in (build_dir / "records").glob("*.json"))}
                epochs = {s: records[s]["epoch_seconds"] for s in ("train", "qat")}
                runs[kind].append({"wall": wall, "exit": proc.returncode, "epochs": epochs,
                                   "stages": {name: r["wall_seconds"] for name, r in records.items()}})
                digests.append({p.name: sha256_file(p) for p in sorted(build_dir.iterdir())
                                if p.suffix in (".keras", ".tflite", ".onnx", ".npz") or p.name == "calibration.json"})
                log(f"speed: {kind} {i + 1}/{repeats}: {wall:.1f} s, exit {proc.returncode}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    stages = list(runs["before"][0]["stages"])
    result = {"before": before, "before_commit": _rev(before), "after_commit": _rev("HEAD")}
    for kind, kind_runs in runs.items():
        per_epoch = {s: statistics.median([statistics.median(r["epochs"][s][1:] or r["epochs"][s]) for r in kind_runs])
                     for s in ("train", "qat")}
        result[kind] = {
            "wall_s": median_spread([r["wall"] for r in kind_runs]),
            "stages": {s: median_spread([r["stages"][s] for r in kind_runs]) for s in stages},
            "targets_s": median_spread([sum(v for k, v in r["stages"].items() if k.startswith("target:")) for r in kind_runs]),
            "steady_epoch_s": {s: round(v, 3) for s, v in per_epoch.items()},
            "qat_over_train_per_epoch": round(per_epoch["qat"] / per_epoch["train"], 2),
            "gate_exit_codes": sorted({r["exit"] for r in kind_runs}),
        }
    result["artifacts_identical"] = all(d == digests[0] for d in digests)
    result["artifacts"] = {name: digest[:16] for name, digest in digests[0].items()}
    return result


def _rev(name):
    return subprocess.run(["git", "rev-parse", "--short", name], cwd=REPO, capture_output=True, text=True).stdout.strip()


def speed_markdown(s):
    heads = {"before": f"before ({s['before_commit']}), cold", "cold": "now, truly cold",
             "compile_cache": "now, JAX compilation cache kept"}
    lines = [f"| stage | {' | '.join(heads[k] for k in SPEED_KINDS)} | now cold / before |",
             "|---|---|---|---|---|"]

    def row(name, cells):
        values = [c["median"] for c in cells]
        shown = " | ".join(f"{c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f})" for c in cells)
        return f"| {name} | {shown} | {values[1] / values[0]:.2f} |"

    for stage in s["before"]["stages"]:
        lines.append(row(stage, [s[k]["stages"][stage] for k in SPEED_KINDS]))
    lines.append(row("the three targets", [s[k]["targets_s"] for k in SPEED_KINDS]))
    lines.append(row("**whole build (CLI)**", [s[k]["wall_s"] for k in SPEED_KINDS]))
    lines += ["", "| | " + " | ".join(heads[k] for k in SPEED_KINDS) + " |", "|---|---|---|---|"]
    for what in ("train", "qat"):
        lines.append(f"| {what}: seconds per epoch after the first | "
                     + " | ".join(f"{s[k]['steady_epoch_s'][what]:.2f}" for k in SPEED_KINDS) + " |")
    lines.append("| QAT / train per epoch | " + " | ".join(f"{s[k]['qat_over_train_per_epoch']:.2f}" for k in SPEED_KINDS) + " |")
    lines += ["", f"Artifacts (models, ONNX, predictions, target outputs, calibration set) byte-identical in all "
                  f"{sum(s[k]['wall_s']['n'] for k in SPEED_KINDS)} builds: "
                  f"{'yes' if s['artifacts_identical'] else 'NO'}."]
    return "\n".join(lines)


@contextlib.contextmanager
def _env(values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def validation_cost(build_dir, repeats, targets_cache, work):
    from pipeline.data import preprocess
    from pipeline.device import tflite_info
    from pipeline.device import environment, fanout
    from pipeline.device import targets as targets_mod
    from pipeline.engine.config import PreprocessConfig
    from pipeline.data.splits import load_dataset

    model = build_dir / "model_int8.tflite"
    info = tflite_info.describe(model)
    q = info["inputs"][0]
    data = load_dataset(build_dir / "dataset.npz")
    pp = PreprocessConfig(**json.loads((build_dir / "manifest.json").read_text())["config"]["preprocess"])
    x = preprocess.to_int8(data["x"][data["test"]], pp, q["scale"], q["zero_point"])
    result = {"test_images": int(len(x))}
    for name in ("host", "rpi4-bookworm-tflite", "rpi5-litert"):
        target = targets_mod.load_target(name)
        root = environment.setup(target, targets_cache.parent, log=lambda m: None)
        row = {"runtime": f"{target.runtime} {target.runtime_version}", "cpu": target.cpu}
        for shards in (1, 2):
            ips, walls = [], []
            for r in range(repeats):
                _, run_info = fanout.run_sharded(target, root, model, x, work / f"v-{name}-{shards}-{r}", shards)
                ips.append(run_info["images_per_s"])
                walls.append(run_info["wall_seconds"])
            row[f"shards{shards}_images_per_s"] = median_spread(ips)
            row[f"shards{shards}_wall_s"] = median_spread(walls)
        # wall time includes starting the interpreter (under qemu: seconds of Python and numpy imports)
        row["sharding_speedup_wall"] = round(row["shards1_wall_s"]["median"] / row["shards2_wall_s"]["median"], 3)
        row["sharding_speedup_throughput"] = round(
            row["shards2_images_per_s"]["median"] / row["shards1_images_per_s"]["median"], 3)
        result[name] = row
        log(f"validation {name}: {row['shards1_images_per_s']['median']:.0f} / {row['shards2_images_per_s']['median']:.0f} img/s")
    host = result["host"]["shards1_images_per_s"]["median"]
    for name in ("rpi4-bookworm-tflite", "rpi5-litert"):
        result[name]["fraction_of_host"] = round(result[name]["shards1_images_per_s"]["median"] / host, 4)
    return result


def accuracy(work, targets_cache, default_build):
    rows = []
    for label, overrides in ACCURACY_CASES:
        if any("sign-language" in o for o in overrides) and not SIGNS.is_dir():
            log(f"accuracy {label}: skipped, {SIGNS} is not there")
            continue
        if not overrides:
            build_dir = default_build
        else:
            slug = "".join(c if c.isalnum() else "-" for c in label)[:40]
            out = work / f"acc-{slug}"
            cache = fresh_cache(work, f"acc-cache-{slug}", targets_cache)
            edgebuild(["build", "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
                       "--set", "validate.targets=[]", *sets(overrides)], cache)
            build_dir = out / "digits"
        m = json.loads((build_dir / "manifest.json").read_text())
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-m", "bench.ptq", str(build_dir), str(work / "ptq.json")],
                       cwd=REPO, env=env, check=True, capture_output=True)
        ptq = json.loads((work / "ptq.json").read_text())
        f, qat = m["metrics"]["float"]["accuracy"], m["metrics"]["int8_host"]["accuracy"]
        rows.append({
            "case": label, "overrides": overrides, "params": m["train"]["params"],
            "test_samples": m["splits"]["test"], "calibration_samples": m["calibration"]["samples"],
            "float": f, "ptq_int8": round(ptq["ptq_int8_accuracy"], 6), "qat_int8": qat,
            "ptq_drop_pp": round(100 * (f - ptq["ptq_int8_accuracy"]), 2), "qat_drop_pp": round(100 * (f - qat), 2),
            "keras_quantize_int8": ptq["keras_quantize_accuracy"], "keras_quantize_note": ptq["keras_quantize_note"],
            "keras_quantize_litert_export": ptq["keras_quantize_litert_export"],
        })
        log(f"accuracy {label}: float {f:.4f} ptq {ptq['ptq_int8_accuracy']:.4f} qat {qat:.4f}")
    return rows


def bring_a_trained_model(work):
    """float / PTQ / QAT of a model trained elsewhere, on the team's own fixed test set, default gate."""
    if not SIGNS.is_dir():
        log(f"bring a trained model: skipped, {SIGNS} is not there")
        return None
    team = work / "team"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bench.pretrained", str(SIGNS), str(team)], cwd=REPO, env=env, check=True,
                   capture_output=True)
    model = json.loads((team / "team_resnet.json").read_text())
    model["train_seconds"] = round(time.perf_counter() - started, 1)
    log(f"team model: own test accuracy {model['own_test_accuracy']:.4f} ({model['train_seconds']} s)")
    config = work / "team.toml"
    config.write_text(
        f'[build]\nname = "team"\nout_dir = "{work}/team-builds"\n'
        f'[data]\nsource = "{team}/train"\ntest_source = "{team}/test"\nimage_size = 32\nchannels = 3\n'
        f'calibration_file = "{work}/team-calibration.json"\n'
        f'[preprocess]\npixel_range = [0, 255]\n[train]\nrecipe = "{team}/team_resnet.h5"\n'
        '[validate]\ntargets = []\n')
    rows = []
    for i, (label, overrides) in enumerate(BYO_CASES):
        cache = work / f"team-cache-{i}"
        cache.mkdir()
        proc, wall = edgebuild(["build", "--config", str(config), *sets(overrides)], cache, check=False)
        row = {"case": label, "overrides": overrides, "wall_s": round(wall, 1), "exit_code": proc.returncode}
        build_dir = work / "team-builds" / "team"
        if proc.returncode not in (0, 1):
            row["stopped"] = proc.stderr.strip().splitlines()[-1][:400]
            rows.append(row)
            log(f"byo {label}: stopped ({proc.returncode})")
            continue
        m = json.loads((build_dir / "manifest.json").read_text())
        subprocess.run([sys.executable, "-m", "bench.ptq", str(build_dir), str(work / "ptq.json")],
                       cwd=REPO, env=env, check=True, capture_output=True)
        ptq = json.loads((work / "ptq.json").read_text())
        row.update(
            float=m["metrics"]["float"]["accuracy"], ptq_int8=round(ptq["ptq_int8_accuracy"], 6),
            qat_int8=m["metrics"]["int8_host"]["accuracy"], test_samples=m["test_set"]["size"],
            train_kept_epoch=m["train"]["kept_epoch"], train_val_before=(m["train"]["initial"] or {}).get("val_accuracy"),
            train_val_kept=m["train"]["kept_val_accuracy"], qat_kept_epoch=m["qat"]["kept_epoch"],
            qat_val_kept=m["qat"]["kept_val_accuracy"], float_val=m["qat"]["float_val_accuracy"],
            qat_val_history=m["qat"]["history"].get("val_accuracy"),
            softmax_removed=m["train"]["softmax_removed"], gate=m["gate"]["verdict"],
            gate_failed=[c["name"] for c in m["gate"]["checks"] if not c["passed"]],
        )
        rows.append(row)
        log(f"byo {label}: float {row['float']:.4f} ptq {row['ptq_int8']:.4f} qat {row['qat_int8']:.4f} gate {row['gate']}")
    return {"model": model, "cases": rows}


def artifacts(manifest):
    a, t = manifest["artifacts"], manifest["metrics"]["targets"]
    return {
        "int8_tflite_bytes": a["int8_tflite"]["bytes"], "float_tflite_bytes": a["float_tflite"]["bytes"],
        "onnx_bytes": a["onnx"]["bytes"], "int8_over_float": manifest["metrics"]["size"]["int8_over_float"],
        "agreement": {n: {k: v[k] for k in ("top1_agreement", "bitexact_fraction", "max_abs_diff", "accuracy")}
                      for n, v in t.items()},
    }


def formats(manifest):
    """Both deployment formats of one build side by side: sizes (float vs int8), host accuracy, the int8
    ONNX's agreement with the int8 .tflite, and each emulated target that ran one of them."""
    a, m = manifest["artifacts"], manifest["metrics"]
    onnx = m["onnx_int8"]
    return {
        "build": manifest["name"],
        "test_samples": manifest["splits"]["test"],
        "tflite": {"float_bytes": a["float_tflite"]["bytes"], "int8_bytes": a["int8_tflite"]["bytes"],
                   "float_accuracy": m["float_tflite"]["accuracy"], "int8_accuracy": m["int8_host"]["accuracy"]},
        "onnx": {"float_bytes": a["onnx"]["bytes"], "int8_bytes": a["int8_onnx"]["bytes"],
                 "float_accuracy": m["onnx"]["accuracy"], "int8_accuracy": onnx["accuracy"]},
        "int8_onnx_vs_int8_tflite": {
            "accuracy_diff_pp": round(100 * (onnx["accuracy"] - m["int8_host"]["accuracy"]), 3),
            **{k: onnx[k] for k in ("top1_agreement_with_int8_tflite", "bitexact_fraction_vs_int8_tflite",
                                    "max_dequantized_diff_vs_int8_tflite")}},
        "targets": {n: {"model": t.get("model"), "runtime": f"{t['runtime']} {t['runtime_version']}",
                        **{k: t.get(k) for k in ("accuracy", "top1_agreement", "bitexact_fraction")},
                        "isa_bitexact_fraction": (t.get("isa") or {}).get("bitexact_fraction")}
                    for n, t in sorted(m["targets"].items())},
    }


def emulated_bytecode(build_dir, repeats, cache_dir):
    """Each emulated target of a finished build, validating its model on the whole test set as the
    target stage does (validate.shards processes), with the environment's ahead-of-time compiled
    bytecode and without it (every module compiled at start, as before), interleaved; outputs checked
    byte-identical to each other and to the build's own target-NAME.npz."""
    import numpy as np

    import pipeline.stages  # noqa: F401 (declares the sections of declared stages the build may have)
    from pipeline.data.splits import load_dataset
    from pipeline.device import environment, fanout, onnx_info, targets
    from pipeline.engine import config as config_mod
    from pipeline.release import manifest as manifest_mod

    build_dir = Path(build_dir)
    manifest = manifest_mod.read(build_dir / "manifest.json")
    cfg = config_mod.from_dict(manifest["config"], f"{build_dir}/manifest.json")
    data = load_dataset(build_dir / "dataset.npz")
    images = data["x"][data["test"]]
    rows = {}
    for name, rec in sorted(manifest["metrics"]["targets"].items()):
        target = targets.load_target(name)
        if not target.emulated or rec.get("refused") or rec.get("sampled"):
            continue
        root = environment.setup(target, cache_dir, log=log)
        model = build_dir / rec.get("model", "model_int8.tflite")
        x = onnx_info.model_input(images, cfg.preprocess, onnx_info.describe(model)["inputs"][0])
        runs = {True: [], False: []}
        outputs = {}
        for _ in range(repeats):
            for bytecode in (False, True):
                with tempfile.TemporaryDirectory() as work:
                    out, info = fanout.run_sharded(target, root, model, x, work, cfg.validate.shards, bytecode=bytecode)
                runs[bytecode].append(info)
                outputs.setdefault(bytecode, out)
                assert np.array_equal(out, outputs[bytecode])
        built = np.load(build_dir / f"target-{name}.npz")["outputs"]
        before, after = (median_spread([i["wall_seconds"] for i in runs[b]]) for b in (False, True))
        rows[name] = {
            "images": int(len(x)), "shards": cfg.validate.shards,
            "wall_s_without_bytecode": before, "wall_s_with_bytecode": after,
            "ratio": round(after["median"] / before["median"], 3),
            "images_per_s_per_process": {
                "without_bytecode": statistics.median(i["images_per_s"] for i in runs[False]),
                "with_bytecode": statistics.median(i["images_per_s"] for i in runs[True])},
            "outputs_identical": bool(np.array_equal(outputs[False], outputs[True])),
            "identical_to_the_builds_outputs": bool(np.array_equal(outputs[True], built)),
        }
        log(f"{name}: wall {before['median']:.2f} s -> {after['median']:.2f} s with bytecode")
    return {"build": str(build_dir), "repeats": repeats, "targets": rows}


def emulated_bytecode_markdown(e):
    lines = ["| target | images | wall without bytecode (s) | with (s) | ratio | outputs identical |", "|---|---|---|---|---|---|"]
    for name, r in e["targets"].items():
        a, b = r["wall_s_without_bytecode"], r["wall_s_with_bytecode"]
        lines.append(f"| {name} | {r['images']} | {a['median']:.2f} ({a['min']:.2f}–{a['max']:.2f}) | "
                     f"{b['median']:.2f} ({b['min']:.2f}–{b['max']:.2f}) | {r['ratio']:.2f} | "
                     f"{'yes' if r['outputs_identical'] and r['identical_to_the_builds_outputs'] else 'NO'} |")
    return "\n".join(lines)


def formats_markdown(f):
    lines = ["| format | float bytes | int8 bytes | int8/float | float accuracy | int8 accuracy |", "|---|---|---|---|---|---|"]
    for name in ("tflite", "onnx"):
        r = f[name]
        lines.append(f"| {name} | {r['float_bytes']:,} | {r['int8_bytes']:,} | {r['int8_bytes'] / r['float_bytes']:.2f} | "
                     f"{100 * r['float_accuracy']:.2f}% | {100 * r['int8_accuracy']:.2f}% |")
    v = f["int8_onnx_vs_int8_tflite"]
    lines += ["", f"int8 ONNX vs int8 TFLite on {f['test_samples']} test images: accuracy {v['accuracy_diff_pp']:+.2f} pp, "
              f"top-1 agreement {100 * v['top1_agreement_with_int8_tflite']:.2f}%, "
              f"{100 * v['bitexact_fraction_vs_int8_tflite']:.2f}% of outputs bit-exact."]
    return "\n".join(lines)


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


SUITE_WORKERS = (1, 2)  # pytest alone, and `make test`'s pytest-xdist workers


def suite(repeats, workers=SUITE_WORKERS, timeout_s=3600):
    """The whole test suite, as `make test` runs it, with each number of pytest-xdist workers in one run
    (1 = no xdist: one process, as before), the order alternated between repeats so neither always
    runs on what the other left. The machine's cache is used as it is (target environments and JAX's
    compilation cache; its entry count is recorded before each run); each run gets a fresh stage
    cache. Wall seconds per run, pytest's summary line, and the median over the runs that passed."""
    from pipeline.cli import default_cache_dir

    jax_dir = default_cache_dir() / "jax"
    runs = []
    for i in range(repeats):
        for n in (workers if i % 2 == 0 else workers[::-1]):
            args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            if n > 1:
                args += ["-n", str(n), "--dist", "loadfile", "--no-loadscope-reorder"]  # as the Makefile's test
            entries = sum(1 for p in jax_dir.rglob("*") if p.is_file()) if jax_dir.exists() else 0
            log(f"test suite, {n} worker(s): {' '.join(args[1:])}")
            started = time.perf_counter()
            try:
                proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
                lines, code = proc.stdout.strip().splitlines(), proc.returncode
            except subprocess.TimeoutExpired:
                lines, code = [f"killed after {timeout_s} s"], None
            wall = round(time.perf_counter() - started, 1)
            summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and "passed" in ln),
                           lines[-1] if lines else "")
            runs.append({"workers": n, "wall_s": wall, "summary": summary, "exit_code": code,
                         "jax_entries_at_start": entries})
            log(f"  {wall} s: {summary}")
    passed = {str(n): [r["wall_s"] for r in runs if r["workers"] == n and r["exit_code"] == 0] for n in workers}
    median = {n: statistics.median(walls) if walls else None for n, walls in passed.items()}
    one = median[str(workers[0])]
    return {"runs": runs, "median_wall_s": median,
            "ratio_vs_1_worker": {n: round(v / one, 2) if one and v else None for n, v in median.items()}}


def suite_markdown(s):
    lines = [f"Test suite on {s['machine']['cpu']} ({s['machine']['cores']} cores), {s['date']}, in the order run:", "",
             "| pytest workers | wall (min) | JAX cache entries at start | exit | result |", "|---|---|---|---|---|"]
    for r in s["runs"]:
        lines.append(f"| {r['workers']} | {r['wall_s'] / 60:.1f} | {r['jax_entries_at_start']} | {r['exit_code']} | "
                     f"{r['summary']} |")
    medians = [f"{n} worker(s) {v / 60:.1f} min (× {s['ratio_vs_1_worker'][n]} of 1 worker)"
               for n, v in s["median_wall_s"].items() if v]
    lines += ["", f"Median wall of the passing runs: {', '.join(medians) or 'none passed'}."]
    return "\n".join(lines)


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version()}


def verdict(a):
    """Plain words for one PTQ-vs-QAT row."""
    ptq, qat = a["ptq_drop_pp"], a["qat_drop_pp"]
    n = a["test_samples"]
    step = 100 / n  # one test sample in pp
    if ptq >= 1.0:
        if qat < ptq:
            return (f"post-training int8 loses {ptq:.2f} pp; QAT loses {qat:.2f} pp, recovering "
                    f"{ptq - qat:.2f} pp ({round((ptq - qat) / step)} of {n} test samples).")
        return f"post-training int8 loses {ptq:.2f} pp and QAT did not help here ({qat:.2f} pp)."
    return (f"post-training int8 already keeps float accuracy ({ptq:+.2f} pp drop); QAT changes it by "
            f"{ptq - qat:+.2f} pp ({round((ptq - qat) / step):+d} test samples): no real gain on this case.")


def markdown(r):
    def ms(d):
        return f"{d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f})"

    out = [f"Run {r['date']} on {r['machine']['cpu']}, {r['machine']['cores']} cores; median (min–max) of {r['repeats']} runs.", ""]
    b = r["build_times"]
    out += ["| stage | cold s | warm s | peak RSS MB |", "|---|---|---|---|"]
    for s, v in b["per_stage"].items():
        out.append(f"| {s} | {ms(v['cold'])} | {ms(v['warm'])} | {v['peak_rss_mb'] or '-'} |")
    out.append(f"| **whole build (CLI)** | {ms(b['cold_total_s'])} | {ms(b['warm_total_s'])} | |")
    if b["jax_compile_estimate_s"] is not None:
        out.append(f"\nJAX compile (first epoch minus a steady epoch): {b['jax_compile_estimate_s']:.1f} s, "
                   f"{100 * b['jax_compile_share_of_train']:.0f}% of training time.")
    v = r["validation"]
    out += ["", f"On-target validation of the {v['test_images']} test images (int8, batch 1). Images/s counts "
            "inference only (all shards together); wall time includes starting the interpreter:", "",
            "| runtime | images/s, 1 shard | images/s, 2 shards | wall s, 1 shard | wall s, 2 shards | 2 shards: throughput × | 2 shards: wall × | 1 shard vs host |",
            "|---|---|---|---|---|---|---|---|"]
    for name in ("host", "rpi4-bookworm-tflite", "rpi5-litert"):
        x = v[name]
        out.append(f"| {name} ({x['runtime']}) | {ms(x['shards1_images_per_s'])} | {ms(x['shards2_images_per_s'])} | "
                   f"{ms(x['shards1_wall_s'])} | {ms(x['shards2_wall_s'])} | {x['sharding_speedup_throughput']:.2f}× | "
                   f"{x['sharding_speedup_wall']:.2f}× | "
                   f"{100 * x.get('fraction_of_host', 1):.2f}% |")
    out += ["", "| model | params | float | PTQ int8 | QAT int8 (edgebuild) | PTQ drop pp | QAT drop pp | keras quantize('int8') | its LiteRT export |",
            "|---|---|---|---|---|---|---|---|---|"]
    for a in r["accuracy"]:
        kq = "-" if a["keras_quantize_int8"] is None else f"{100 * a['keras_quantize_int8']:.2f}%"
        out.append(f"| {a['case']} | {a['params']:,} | {100 * a['float']:.2f}% | {100 * a['ptq_int8']:.2f}% | "
                   f"{100 * a['qat_int8']:.2f}% | {a['ptq_drop_pp']:+.2f} | {a['qat_drop_pp']:+.2f} | {kq} | "
                   f"{a['keras_quantize_litert_export'][:60]} |")
    out.append("")
    for a in r["accuracy"]:
        out.append(f"- {a['case']}: {verdict(a)}")
    out.append("- Keras's own `model.quantize('int8')` quantizes Dense kernels only (convolutions stay float), so "
               "its accuracy is close to float; its LiteRT export fails (see the table), so it gives no int8 artifact.")
    byo = r.get("bring_a_trained_model")
    if byo:
        t = byo["model"]
        out += ["", f"Bring a trained model: a residual CNN ({t['params']:,} parameters) trained outside edgebuild on "
                f"{t['train_images']} sign-language photos ({t['input']}, {t['head']} head, {t['format']}); its own "
                f"accuracy on its held-out test folder ({t['test_images']} photos): {100 * t['own_test_accuracy']:.2f}%. "
                "edgebuild with default settings (recipe, data, test_source, pixel_range set; default gate):", "",
                "| case | float | PTQ int8 | QAT int8 | QAT val: float → kept (epoch) | gate (defaults) |",
                "|---|---|---|---|---|---|"]
        for c in byo["cases"]:
            if "stopped" in c:
                out.append(f"| {c['case']} | - | - | stopped, exit {c['exit_code']} | {c['stopped'][:90]} | - |")
                continue
            gate = c["gate"] + (f" ({', '.join(c['gate_failed'])})" if c["gate_failed"] else "")
            out.append(f"| {c['case']} | {100 * c['float']:.2f}% | {100 * c['ptq_int8']:.2f}% | {100 * c['qat_int8']:.2f}% | "
                       f"{100 * c['float_val']:.2f}% → {100 * c['qat_val_kept']:.2f}% ({c['qat_kept_epoch']}) | {gate} |")
    s = r["artifacts"]
    out += ["", f"Sizes: int8 TFLite {s['int8_tflite_bytes']:,} B, float32 TFLite {s['float_tflite_bytes']:,} B "
            f"(int8 = {100 * s['int8_over_float']:.1f}%), ONNX {s['onnx_bytes']:,} B.", "",
            "| target | top-1 agreement | bit-exact outputs | max abs diff | accuracy |", "|---|---|---|---|---|"]
    for n, a in sorted(s["agreement"].items()):
        out.append(f"| {n} | {100 * a['top1_agreement']:.2f}% | {100 * a['bitexact_fraction']:.2f}% | {a['max_abs_diff']} | {100 * a['accuracy']:.2f}% |")
    if r.get("formats"):
        out += ["", formats_markdown(r["formats"])]
    rep = r["reproducibility"]
    out += ["", f"Reproducibility: {rep['builds']} clean builds with the same seed; "
            f"{sum(a['identical_in_all_builds'] for a in rep['artifacts'])} of {len(rep['artifacts'])} artifacts byte-identical"
            + ("." if rep["all_identical"] else f" (differ: {', '.join(a['artifact'] for a in rep['artifacts'] if not a['identical_in_all_builds'])}).")]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median reported)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--work", help="scratch directory (default: a temporary one, removed after)")
    parser.add_argument("--only", choices=sorted(ONLY), help="measure one section alone and add it to the results "
                        "file: " + "; ".join(f"{name}: {section.what}" for name, section in sorted(ONLY.items())))
    parser.add_argument("--at", metavar="REV_OR_BUILD_DIR", help="what --only speed (a git revision to compare with), "
                        "--only bytecode and --only formats (a finished build directory, e.g. build/digits) measure")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="edgebuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        targets_cache = work / "targets"
        targets_cache.mkdir(exist_ok=True)
        if args.only:
            section = ONLY[args.only]
            if args.only in NEEDS_AT and not args.at:
                parser.error(f"--only {args.only} needs --at {NEEDS_AT[args.only]}")
            if args.at and args.only not in NEEDS_AT:
                parser.error(f"--only {args.only} takes no --at")
            result = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
            if args.only == "speed":
                result.pop("compile_cache", None)  # measured wrongly before (JAX kept no entries); part of speed now
            result[section.key] = {"date": datetime.date.today().isoformat(), "machine": machine(),
                                   **section.measure(args, work, targets_cache)}
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(section.markdown(result[section.key]))
            return
        setup_times = {}
        for name in ("rpi4-bookworm-tflite", "rpi5-litert", "rpi5-onnxruntime"):
            started = time.perf_counter()
            edgebuild(["target", "setup", name], _setup_cache(work, targets_cache))
            setup_times[name] = round(time.perf_counter() - started, 1)
        log(f"target setup (cold): {setup_times}")
        times, manifests = build_times(work, args.repeats, targets_cache)
        result = {
            "date": datetime.date.today().isoformat(),
            "machine": machine(),
            "repeats": args.repeats,
            "target_setup_cold_s": setup_times,
            "build_times": times,
            "reproducibility": reproducibility(manifests),
            "isa_reproducibility": {"date": datetime.date.today().isoformat(), **isa_reproducibility(work, targets_cache)},
            "artifacts": artifacts(manifests[0][1]),
            "formats": formats(manifests[0][1]),
            "validation": validation_cost(manifests[0][0], args.repeats, targets_cache, work),
            "accuracy": accuracy(work, targets_cache, manifests[0][0]),
            "bring_a_trained_model": bring_a_trained_model(work),
        }
        result["markdown"] = markdown(result)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(result["markdown"])
        log(f"wrote {args.out}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def _machine_targets():
    from pipeline.cli import default_cache_dir

    return default_cache_dir() / "targets"


def _fit(args, work, targets_cache):
    from bench.fit import fit

    return fit(work, args.repeats, ACCURACY_CASES, edgebuild, sets, fresh_cache, _machine_targets(), log)


def _formats(args, work, targets_cache):
    from pipeline.release import manifest as manifest_mod

    return formats(manifest_mod.read(Path(args.at) / "manifest.json"))


def _fit_markdown(section):
    from bench.fit import fit_markdown

    return fit_markdown(section)


def _bytecode(args, work, targets_cache):
    from pipeline.cli import default_cache_dir

    return emulated_bytecode(args.at, args.repeats, default_cache_dir())


def isa_markdown(section):
    rows = ["| XLA setting | flags | int8 .tflite sha256 | byte-identical to the default |", "|---|---|---|---|"]
    for run in section["runs"]:
        same = run["identical_to_default"]
        rows.append(f"| {run['setting']} | `{run['xla_flags'] or '-'}` | `{run['sha256']['model_int8.tflite']}…` | "
                    f"{len(same)} of {len(run['sha256'])} ({', '.join(same) or 'none'}) |")
    return "\n".join(rows)


class Section(NamedTuple):
    heading: str  # in bench/RESULTS.md
    what: str  # in --help
    key: str  # in results.json
    measure: Callable  # (args, work, targets_cache) -> the section's figures
    markdown: Callable  # the section's figures -> Markdown


# --only NAME, in the order of bench/RESULTS.md (`python -m bench.render`)
ONLY = {
    "isa": Section("Vector ISA and reproducible bytes",
                   "the default build to export under several XLA vector ISAs: which artifacts stay byte-identical",
                   "isa_reproducibility", lambda args, work, tc: isa_reproducibility(work, tc), isa_markdown),
    "formats": Section("TFLite and ONNX side by side",
                       "the TFLite/ONNX side-by-side figures of the finished build --at", "formats", _formats,
                       formats_markdown),
    "speed": Section("Build speed, before and after",
                     "the default build per stage, cold, at git revision --at vs now (truly cold, and with JAX's "
                     "compilation cache kept)", "speed",
                     lambda args, work, tc: {"repeats": args.repeats, **speed(work, args.repeats, _machine_targets(),
                                                                            args.at)}, speed_markdown),
    "bytecode": Section("Emulated targets with and without compiled bytecode",
                        "each emulated target of the finished build --at with and without its compiled bytecode",
                        "emulated_bytecode", _bytecode, emulated_bytecode_markdown),
    "ci": Section("CI runners: warm remote cache, sharded validation",
                  "a fresh CI runner with a warm remote cache vs fully cold, and a large test set in 1 vs 2 shards",
                  "ci", lambda args, work, tc: {"sharded_validation": sharded_validation(work),
                                                "runners": ci_runners(work)}, ci_markdown),
    "suite": Section("The test suite with 1 and 2 workers",
                     "the whole test suite with 1 and 2 pytest-xdist workers, alternated, --repeats times each (about "
                     "20 minutes a repeat on 2 cores)", "suite",
                     lambda args, work, tc: {"repeats": args.repeats, **suite(args.repeats)}, suite_markdown),
    "fit": Section("Does each bundled model fit the devices",
                   "what each bundled model asks of the devices (arena, MACs, Vela's figures) and each target stage's "
                   "time", "fit", _fit, _fit_markdown),
}
NEEDS_AT = {"speed": "BEFORE (a git revision)", "bytecode": "BUILD_DIR", "formats": "BUILD_DIR"}


def _setup_cache(work, targets_cache):
    cache = work / "setup-cache"
    if not cache.exists():
        cache.mkdir()
        (cache / "targets").symlink_to(targets_cache)
    return cache


if __name__ == "__main__":
    main()
