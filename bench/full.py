"""`python -m bench` without --only: the whole run on this machine, and its Markdown (the first section
of bench/RESULTS.md). The emulated targets are set up cold, then the default build is measured cold and
warm (bench/sections/build.py), and the other sections reuse its builds: reproducibility, the vector ISA
(isa.py), sizes and agreement, both formats (formats.py), validation cost (validation.py), accuracy
(accuracy.py) and a model trained elsewhere (byo.py)."""

import datetime
import time

from bench.common import edgebuild, log, machine
from bench.sections import accuracy, build, byo, formats, isa, validation

HEADING = "The default build: stages, validation cost, accuracy, sizes, reproducibility"
SETUP_TARGETS = ("rpi4-bookworm-tflite", "rpi5-litert", "rpi5-onnxruntime")


def run(args, work, targets_cache):
    """Every section of the whole run, keyed as in bench/results.json (without its "markdown")."""
    setup_times = {}
    for name in SETUP_TARGETS:
        started = time.perf_counter()
        edgebuild(["target", "setup", name], _setup_cache(work, targets_cache))
        setup_times[name] = round(time.perf_counter() - started, 1)
    log(f"target setup (cold): {setup_times}")
    times, manifests = build.build_times(work, args.repeats, targets_cache)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "target_setup_cold_s": setup_times,
        "build_times": times,
        "reproducibility": build.reproducibility(manifests),
        "isa_reproducibility": {"date": datetime.date.today().isoformat(),
                                **isa.isa_reproducibility(work, targets_cache)},
        "artifacts": build.artifacts(manifests[0][1]),
        "formats": formats.formats(manifests[0][1]),
        "validation": validation.validation_cost(manifests[0][0], args.repeats, targets_cache, work),
        "accuracy": accuracy.accuracy(work, targets_cache, manifests[0][0]),
        "anomaly": accuracy.anomaly(work, targets_cache),
        "bring_a_trained_model": byo.bring_a_trained_model(work),
    }


def _setup_cache(work, targets_cache):
    cache = work / "setup-cache"
    if not cache.exists():
        cache.mkdir()
        (cache / "targets").symlink_to(targets_cache)
    return cache


def markdown(r):
    parts = [f"Run {r['date']} on {r['machine']['cpu']}, {r['machine']['cores']} cores; median (min–max) of "
             f"{r['repeats']} runs.",
             build.build_times_markdown(r["build_times"]),
             validation.validation_markdown(r["validation"]),
             accuracy.accuracy_markdown(r["accuracy"])]
    if r.get("anomaly"):
        parts.append(accuracy.anomaly_markdown(r["anomaly"]))
    if r.get("bring_a_trained_model"):
        parts.append(byo.byo_markdown(r["bring_a_trained_model"]))
    parts.append(build.artifacts_markdown(r["artifacts"]))
    if r.get("formats"):
        parts.append(formats.formats_markdown(r["formats"]))
    parts.append(build.reproducibility_markdown(r["reproducibility"]))
    return "\n\n".join(parts)
