"""`python -m bench --only transformers`: the built-in `vit_tiny` beside the CNNs' figures, per case
(digits and the sign-language photos at 32x32): float, post-training int8 (the float model through the
converter with the build's calibration set, as bench/ptq.py does for every accuracy case) and
edgebuild's QAT int8 on the host, the share of float the int8 keeps, the paired flips float -> int8,
and what QAT costs per epoch beside training. Nothing here is asserted."""

import json

import numpy as np

from bench.common import SIGNS, Section, log
from bench.sections.accuracy import _ptq, built_cases

EPOCHS = 40  # a transformer learns more slowly than the CNNs' 10 epochs on a thousand images
CASES = [
    ("digits 32x32, vit_tiny, GELU as x*sigmoid(1.702x)", ['train.recipe="vit_tiny"', f"train.epochs={EPOCHS}",
                                                           'qat.gelu="sigmoid"']),
    ("digits 32x32, vit_tiny, GELU native (LiteRT's op)", ['train.recipe="vit_tiny"', f"train.epochs={EPOCHS}",
                                                          'qat.gelu="native"']),
    ("sign-language photos 32x32 RGB, vit_tiny", [f'data.source="{SIGNS}"', "data.channels=3",
                                                  "data.calibration_samples=100", 'train.recipe="vit_tiny"',
                                                  f"train.epochs={EPOCHS}"]),
]


def _flips(build_dir):
    """(right -> wrong, wrong -> right) from the float model to the host's int8, on the test set."""
    with np.load(build_dir / "predictions.npz") as p:
        y, f, q = p["labels"], p["float_top1"], p["int8_top1"]
    return int(((f == y) & (q != y)).sum()), int(((f != y) & (q == y)).sum())


def transformers(work, targets_cache):
    rows = []
    for label, overrides, build_dir, m in built_cases(work, targets_cache, CASES, "transformers"):
        ptq = _ptq(work, build_dir)
        f, qat = m["metrics"]["float"]["accuracy"], m["metrics"]["int8_host"]["accuracy"]
        train, q = m["train"], m["qat"]
        lost, won = _flips(build_dir)
        rows.append({
            "case": label, "overrides": overrides, "params": train["params"], "test_samples": m["splits"]["test"],
            "float": f, "ptq_int8": round(ptq["ptq_int8_accuracy"], 6), "ptq_float_ops": ptq["ptq_float_ops"],
            "qat_int8": qat, "qat_keeps": round(qat / f, 4), "ptq_keeps": round(ptq["ptq_int8_accuracy"] / f, 4),
            "flips_right_to_wrong": lost, "flips_wrong_to_right": won, "qat_learning_rate": q.get("learning_rate"),
            "qat_epochs": q.get("epochs"), "qat_gelu": q.get("gelu"),
            # the first epoch of each includes XLA compiling its steps
            "train_s_per_epoch": round(train["seconds"] / len(train["history"]["loss"]), 2),
            "qat_s_per_epoch": round(json.loads((build_dir / "records" / "qat.json").read_text())["seconds"]
                                     / len(q["history"]["loss"]), 2),
            "int8_bytes": m["artifacts"]["int8_tflite"]["bytes"], "ops": sorted(o["name"] for o in m["artifacts"]["int8_tflite"]["ops"]),
        })
        log(f"transformers {label}: float {f:.4f} ptq {ptq['ptq_int8_accuracy']:.4f} qat {qat:.4f}")
    return {"train_epochs": EPOCHS, "cases": rows}


def markdown(section):
    out = ["| case | params | float | PTQ int8 (float ops left) | QAT int8 (edgebuild) | int8 keeps | flips float→int8 "
           "(lost / won) | int8 bytes | s/epoch train / QAT |", "|---|---|---|---|---|---|---|---|---|"]
    for r in section["cases"]:
        left = ", ".join(r["ptq_float_ops"]) or "none"
        out.append(f"| {r['case']} | {r['params']:,} | {100 * r['float']:.2f}% | {100 * r['ptq_int8']:.2f}% ({left}) | "
                   f"{100 * r['qat_int8']:.2f}% | {100 * r['qat_keeps']:.1f}% | {r['flips_right_to_wrong']} / "
                   f"{r['flips_wrong_to_right']} | {r['int8_bytes']:,} | {r['train_s_per_epoch']} / {r['qat_s_per_epoch']} |")
    epochs = sorted({str(r.get("qat_epochs") or 3) for r in section["cases"]})
    out += ["", f"Defaults but train.epochs = {section['train_epochs']}; QAT at qat.transformer_learning_rate for "
            f"{'/'.join(epochs)} epochs (the best kept). The first "
            "epoch of train and of QAT includes XLA compiling its steps. PTQ converts Keras's own LayerNormalization, "
            "whose NEG the converter leaves in float (so that int8 model is not full-integer)."]
    return "\n".join(out)


SECTION = Section("A vision transformer beside the CNNs",
                  "vit_tiny on digits and the sign-language photos: float, post-training and QAT int8",
                  "transformers", lambda args, work, tc: transformers(work, tc), markdown)
