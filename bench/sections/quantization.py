"""`python -m bench --only quantization`: what each way of quantizing keeps of float, per case, side by
side in one run (issue 32): the float model, post-training int8 (the float model through the converter
with the build's calibration set), edgebuild's QAT int8 (the build's own), and LiteRT's 16x8 mode
(post-training, int16 activations, int8 weights: `export.activations = "int16"`). For each: accuracy,
the share of float kept, the paired flips against float (right -> wrong / wrong -> right: small test
sets are noisy), the file size and the per-layer report's worst layer (its SNR and the dB lost there);
QAT's cost per epoch beside training's; and QAT settings tried beside the default (VARIANTS: a higher
learning rate for longer, and distillation from the float model). Nothing here is asserted."""

import json

import numpy as np

from bench.common import SIGNS, Section, edgebuild, log, sets
from bench.sections.accuracy import _ptq, built_cases

CASES = [
    ("digits, small_cnn (default)", []),
    ("digits, ds_cnn (depthwise)", ['train.recipe="ds_cnn"']),
    ("sign-language photos 32x32 RGB, small_cnn", [f'data.source="{SIGNS}"', "data.channels=3",
                                                   "data.calibration_samples=100"]),
    ("sign-language photos 32x32 RGB, ds_cnn", [f'data.source="{SIGNS}"', "data.channels=3",
                                                "data.calibration_samples=100", 'train.recipe="ds_cnn"']),
]


# QAT settings tried beside the default (qat.learning_rate 1e-5 for 3 epochs), on every case: the same float
# model (the case's stage cache: train is a hit), so only QAT and what follows it run again.
VARIANTS = [
    ("QAT lr 1e-4, 10 epochs", ["qat.learning_rate=1e-4", "qat.epochs=10"]),
    ("QAT lr 1e-4, 10 epochs, distilled (0.5, T 2)", ["qat.learning_rate=1e-4", "qat.epochs=10", "qat.distill=0.5",
                                                     "qat.distill_temperature=2.0"]),
]


def _variant(work, build_dir, label, overrides, extra):
    """The case built again with `extra` QAT settings in its own stage cache (train is a hit): (accuracy, its
    top-1 on the test set, QAT's seconds per epoch)."""
    slug = "".join(c if c.isalnum() else "-" for c in label)[:40]
    cache = work / f"acc-cache-{slug}"
    out = work / f"var-{slug}-{abs(hash(tuple(extra))) % 10**8}"
    edgebuild(["build", "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{build_dir.parent}/calib.json"',
               "--set", "validate.targets=[]", *sets(overrides + extra)], cache)
    d = out / "digits"
    m = json.loads((d / "manifest.json").read_text())
    with np.load(d / "predictions.npz") as p:
        top1 = p["int8_top1"]
    seconds = json.loads((d / "records" / "qat.json").read_text())["seconds"] / len(m["qat"]["history"]["loss"])
    return m["metrics"]["int8_host"]["accuracy"], top1, round(seconds, 2), m


def _flips(y, reference, other):
    """(right -> wrong, wrong -> right) from `reference`'s top-1 to `other`'s."""
    reference, other = np.asarray(reference), np.asarray(other)
    return int(((reference == y) & (other != y)).sum()), int(((reference != y) & (other == y)).sum())


def _worst(row):
    return None if not row else {k: row[k] for k in ("layer", "op", "snr_db", "lost_db")}


def quantization(work, targets_cache, cases=CASES, variants=VARIANTS, section="quantization"):
    rows = []
    for label, overrides, build_dir, m in built_cases(work, targets_cache, cases, section):
        ptq = _ptq(work, build_dir, int16=True)
        with np.load(build_dir / "predictions.npz") as p:
            y, float_top1, qat_top1 = p["labels"], p["float_top1"], p["int8_top1"]
        f = m["metrics"]["float"]["accuracy"]
        figures = {"ptq_int8": (ptq["ptq_int8_accuracy"], ptq["ptq_int8_top1"], ptq["ptq_int8_bytes"],
                                ptq["ptq_int8_worst_layer"]),
                   "qat_int8": (m["metrics"]["int8_host"]["accuracy"], qat_top1, m["artifacts"]["int8_tflite"]["bytes"],
                                (m.get("layers") or {}).get("host", {}).get("worst", [None])[0]),
                   "int16x8": (ptq.get("int16x8_accuracy"), ptq.get("int16x8_top1"), ptq.get("int16x8_bytes"),
                               ptq.get("int16x8_worst_layer"))}
        train, qat = m["train"], m["qat"]
        row = {"case": label, "overrides": overrides, "params": train["params"], "test_samples": m["splits"]["test"],
               "float": f, "float_tflite_bytes": m["artifacts"]["float_tflite"]["bytes"],
               "train_s_per_epoch": round(train["seconds"] / len(train["history"]["loss"]), 2),
               "qat_s_per_epoch": round(json.loads((build_dir / "records" / "qat.json").read_text())["seconds"]
                                        / len(qat["history"]["loss"]), 2)}
        for name, (acc, top1, size, worst) in figures.items():
            if acc is None:  # 16x8 refused by the converter or LiteRT
                row[name] = {"error": ptq.get("int16x8_error", "not made"), "worst_layer": None, "bytes": None}
                continue
            lost, won = _flips(y, float_top1, top1)
            row[name] = {"accuracy": round(float(acc), 6), "keeps": round(float(acc) / f, 4), "right_to_wrong": lost,
                         "wrong_to_right": won, "bytes": size, "worst_layer": _worst(worst)}
        ptq_loss, qat_loss = f - row["ptq_int8"]["accuracy"], f - row["qat_int8"]["accuracy"]
        row["qat_won_back"] = round((ptq_loss - qat_loss) / ptq_loss, 4) if ptq_loss > 0 else None
        row["variants"] = []
        for name, extra in variants:
            acc, top1, per_epoch, vm = _variant(work, build_dir, label, overrides, extra)
            lost, won = _flips(y, float_top1, top1)
            row["variants"].append({"variant": name, "settings": extra, "accuracy": acc, "keeps": round(acc / f, 4),
                                    "right_to_wrong": lost, "wrong_to_right": won, "qat_s_per_epoch": per_epoch,
                                    "won_back": round((ptq_loss - (f - acc)) / ptq_loss, 4) if ptq_loss > 0 else None,
                                    "worst_layer": _worst((vm.get("layers") or {}).get("host", {}).get("worst", [None])[0])})
            log(f"{section} {label}, {name}: {acc:.4f}")
        rows.append(row)
        log(f"{section} {label}: float {f:.4f} ptq {row['ptq_int8']['accuracy']:.4f} qat "
            f"{row['qat_int8']['accuracy']:.4f} int16x8 {row['int16x8'].get('accuracy', 'not made')}")
    return {"cases": rows}


def markdown(section):
    out = ["| case | float | PTQ int8 | QAT int8 (edgebuild) | int16x8 (PTQ) | QAT won back of PTQ's loss | "
           "s/epoch train / QAT |", "|---|---|---|---|---|---|---|"]

    def cell(r):
        if "error" in r:
            return f"not made: {r['error'][:80]}"
        return (f"{100 * r['accuracy']:.2f}% (keeps {100 * r['keeps']:.1f}%; flips {r['right_to_wrong']} / "
                f"{r['wrong_to_right']})")

    for r in section["cases"]:
        won = "-" if r["qat_won_back"] is None else f"{100 * r['qat_won_back']:.0f}%"
        out.append(f"| {r['case']} | {100 * r['float']:.2f}% | {cell(r['ptq_int8'])} | {cell(r['qat_int8'])} | "
                   f"{cell(r['int16x8'])} | {won} | {r['train_s_per_epoch']} / {r['qat_s_per_epoch']} |")
    out += ["", "| case | QAT | int8 | flips float→int8 (lost / won) | won back of PTQ's loss | s/epoch QAT | worst layer |",
            "|---|---|---|---|---|---|---|"]
    for r in section["cases"]:
        won = "-" if r["qat_won_back"] is None else f"{100 * r['qat_won_back']:.0f}%"
        d = r["qat_int8"]
        w = d["worst_layer"]
        out.append(f"| {r['case']} | default (lr 1e-5, 3 epochs) | {100 * d['accuracy']:.2f}% | {d['right_to_wrong']} / "
                   f"{d['wrong_to_right']} | {won} | {r['qat_s_per_epoch']} | {w['layer'] if w else '-'} "
                   f"({w['snr_db'] if w else '-'} dB) |")
        for v in r.get("variants", []):
            won = "-" if v["won_back"] is None else f"{100 * v['won_back']:.0f}%"
            w = v["worst_layer"]
            out.append(f"| {r['case']} | {v['variant']} | {100 * v['accuracy']:.2f}% | {v['right_to_wrong']} / "
                       f"{v['wrong_to_right']} | {won} | {v['qat_s_per_epoch']} | {w['layer'] if w else '-'} "
                       f"({w['snr_db'] if w else '-'} dB) |")
    out += ["", "| case | model | bytes | worst layer (SNR dB, dB lost there) |", "|---|---|---|---|"]
    for r in section["cases"]:
        for name in ("ptq_int8", "qat_int8", "int16x8"):
            w = r[name]["worst_layer"]
            where = "-" if not w else f"{w['layer']} ({w['op']}: {w['snr_db']} dB, {w['lost_db']} dB lost)"
            size = "-" if r[name]["bytes"] is None else f"{r[name]['bytes']:,}"
            out.append(f"| {r['case']} | {name} | {size} | {where} |")
    out += ["", "Flips are paired against the float model on the same test samples (right → wrong / wrong → right). "
            "\"QAT won back\" is (PTQ's loss − QAT's loss) / PTQ's loss, shown where PTQ loses; a case whose PTQ "
            "loses under 1 pp is within a few samples' noise. The worst layer is the per-layer report's first row "
            "(32 test samples). The first epoch of train and of QAT includes XLA compiling its steps."]
    return "\n".join(out)


SECTION = Section("Quantization: post-training int8, QAT int8 and int16x8 side by side",
                  "float, PTQ int8, QAT int8 and 16x8 per case, with paired flips and the worst layer",
                  "quantization", lambda args, work, tc: quantization(work, tc), markdown)
