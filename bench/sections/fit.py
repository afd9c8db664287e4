"""`python -m bench --only fit`: does each bundled model fit the devices, and what does each target
stage cost. Per case (the accuracy cases: small_cnn and ds_cnn on digits and on the sign-language
photos), one build on every shipped target, then each target stage run again `repeats` times from the
build's outputs (`--only targets --no-cache`, environments already set up). Reports the resource figures
(parameters, MACs ours and Vela's, model bytes, the TFLM arena, Vela's SRAM, flash, cycles and CPU
fallback) and the median wall time of every target stage. Nothing here is asserted."""

import json
import statistics

from bench.common import Section, edgebuild, fresh_cache, log, machine_targets, sets
from bench.sections.accuracy import ACCURACY_CASES

TARGETS = ["rpi4-bookworm-tflite", "rpi5-litert", "rpi5-onnxruntime", "cortex-m-tflm", "ethos-u55-128"]


def fit(work, repeats, cases, targets_cache):
    rows = []
    for i, (label, overrides) in enumerate(cases):
        cache = fresh_cache(work, f"fit{i}", targets_cache)
        out = work / f"fit{i}-out"
        common = [*sets(overrides), "--set", f'build.out_dir="{out}"', "--set", f'build.name="fit{i}"',
                  "--set", f'data.calibration_file="{out}/calibration.json"',
                  "--set", f"validate.targets={json.dumps(TARGETS)}"]
        edgebuild(["build", *common], cache)
        build_dir = out / f"fit{i}"
        seconds = {t: [] for t in TARGETS}
        for _ in range(repeats):
            edgebuild(["build", "--only", "targets", "--no-cache", *common], cache)
            for t in TARGETS:
                record = json.loads((build_dir / "records" / f"target-{t}.json").read_text())
                seconds[t].append(record["wall_seconds"])
        m = json.loads((build_dir / "manifest.json").read_text())
        res = m["resources"]["int8_tflite"]
        npu = m["metrics"]["targets"]["ethos-u55-128"].get("npu") or {}
        tflm = m["metrics"]["targets"]["cortex-m-tflm"]
        rows.append({
            "case": label, "parameters": res["parameters"], "weight_bytes": res["weight_bytes"],
            "model_bytes": res["model_bytes"], "macs": res["macs"], "arena_bytes": res["arena_bytes"],
            "vela": {k: npu.get(k) for k in ("macs", "sram_bytes", "off_chip_flash_bytes", "cycles", "inference_ms",
                                             "npu_ops", "cpu_ops", "cpu_fallback", "refused")},
            "int8_accuracy_host": m["metrics"]["int8_host"]["accuracy"],
            "tflm_accuracy": tflm.get("accuracy"), "tflm_twin_bitexact": (tflm.get("isa") or {}).get("bitexact_fraction"),
            "tflm_host_bitexact": tflm.get("bitexact_fraction"),
            "target_stage_s": {t: round(statistics.median(v), 2) for t, v in seconds.items()},
            "target_stage_s_all": seconds,
            "gate": m["gate"]["verdict"],
        })
        log(f"fit {label}: {rows[-1]['target_stage_s']}")
    return {"repeats": repeats, "targets": TARGETS, "cases": rows}


def _vela_cells(v):
    if v.get("refused"):
        return ["refused"] * 5
    return [f"{v['macs']:,}", f"{v['sram_bytes']:,}", f"{v['off_chip_flash_bytes']:,}",
            f"{v['cycles']:,} ({v['inference_ms']:.3f} ms)", str(v["cpu_ops"])]


def fit_markdown(f):
    out = ["| case | params | MACs | Vela MACs | model B | TFLM arena B | Vela SRAM B | Vela flash B | Vela cycles "
           "| CPU ops | TFLM bit-exact vs twin / host |", "|" + "---|" * 11]
    for r in f["cases"]:
        macs, sram, flash, cycles, cpu = _vela_cells(r["vela"])
        arena = f"{r['arena_bytes']:,}" if r["arena_bytes"] else "-"
        out.append(f"| {r['case']} | {r['parameters']:,} | {r['macs']:,} | {macs} | {r['model_bytes']:,} | {arena} | "
                   f"{sram} | {flash} | {cycles} | {cpu} | {100 * r['tflm_twin_bitexact']:.2f}% / "
                   f"{100 * r['tflm_host_bitexact']:.2f}% |")
    out += ["", f"Target stage wall seconds (median of {f['repeats']}, environments set up, `--only targets --no-cache`):",
            "", "| case | " + " | ".join(f["targets"]) + " |", "|---|" + "---|" * len(f["targets"])]
    for r in f["cases"]:
        out.append(f"| {r['case']} | " + " | ".join(f"{r['target_stage_s'][t]:.2f}" for t in f["targets"]) + " |")
    return "\n".join(out)


SECTION = Section("Does each bundled model fit the devices",
                  "what each bundled model asks of the devices (arena, MACs, Vela's figures) and each target stage's "
                  "time", "fit", lambda args, work, tc: fit(work, args.repeats, ACCURACY_CASES, machine_targets()),
                  fit_markdown)
