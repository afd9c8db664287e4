"""`python -m bench --only speed --at BEFORE`: the default build per stage, cold, at an earlier git
revision vs now (truly cold, and with JAX's compilation cache kept)."""

import json
import shutil
import statistics
import subprocess

from pipeline.engine.fsutil import sha256_file

from bench.common import REPO, Section, edgebuild, fresh_cache, log, machine_targets, median_spread

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


SECTION = Section("Build speed, before and after",
                  "the default build per stage, cold, at git revision --at vs now (truly cold, and with JAX's "
                  "compilation cache kept)", "speed",
                  lambda args, work, tc: {"repeats": args.repeats, **speed(work, args.repeats, machine_targets(),
                                                                         args.at)}, speed_markdown,
                  at="BEFORE (a git revision)",
                  # measured wrongly before (JAX kept no entries); part of speed now
                  replaces=("compile_cache",))
