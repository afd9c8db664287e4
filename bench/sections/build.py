"""The whole run's default build (`python -m bench`): build time per stage cold vs warm (with peak memory
and the JAX compile share), artifact sizes and host/target agreement, and reproducibility (clean builds,
every sha256)."""

import json
import statistics

from bench.common import edgebuild, fresh_cache, log, median_spread, spread_cell


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


def artifacts(manifest):
    a, t = manifest["artifacts"], manifest["metrics"]["targets"]
    return {
        "int8_tflite_bytes": a["int8_tflite"]["bytes"], "float_tflite_bytes": a["float_tflite"]["bytes"],
        "onnx_bytes": a["onnx"]["bytes"], "int8_over_float": manifest["metrics"]["size"]["int8_over_float"],
        "agreement": {n: {k: v[k] for k in ("top1_agreement", "bitexact_fraction", "max_abs_diff", "accuracy")}
                      for n, v in t.items()},
    }


def build_times_markdown(b):
    out = ["| stage | cold s | warm s | peak RSS MB |", "|---|---|---|---|"]
    for s, v in b["per_stage"].items():
        out.append(f"| {s} | {spread_cell(v['cold'])} | {spread_cell(v['warm'])} | {v['peak_rss_mb'] or '-'} |")
    out.append(f"| **whole build (CLI)** | {spread_cell(b['cold_total_s'])} | {spread_cell(b['warm_total_s'])} | |")
    if b["jax_compile_estimate_s"] is not None:
        out.append(f"\nJAX compile (first epoch minus a steady epoch): {b['jax_compile_estimate_s']:.1f} s, "
                   f"{100 * b['jax_compile_share_of_train']:.0f}% of training time.")
    return "\n".join(out)


def artifacts_markdown(s):
    out = [f"Sizes: int8 TFLite {s['int8_tflite_bytes']:,} B, float32 TFLite {s['float_tflite_bytes']:,} B "
           f"(int8 = {100 * s['int8_over_float']:.1f}%), ONNX {s['onnx_bytes']:,} B.", "",
           "| target | top-1 agreement | bit-exact outputs | max abs diff | accuracy |", "|---|---|---|---|---|"]
    for n, a in sorted(s["agreement"].items()):
        out.append(f"| {n} | {100 * a['top1_agreement']:.2f}% | {100 * a['bitexact_fraction']:.2f}% | {a['max_abs_diff']} | {100 * a['accuracy']:.2f}% |")
    return "\n".join(out)


def reproducibility_markdown(rep):
    return (f"Reproducibility: {rep['builds']} clean builds with the same seed; "
            f"{sum(a['identical_in_all_builds'] for a in rep['artifacts'])} of {len(rep['artifacts'])} artifacts byte-identical"
            + ("." if rep["all_identical"] else f" (differ: {', '.join(a['artifact'] for a in rep['artifacts'] if not a['identical_in_all_builds'])})."))
