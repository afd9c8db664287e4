"""The whole run's "bring a trained model" (`python -m bench`): bench/pretrained.py trains a residual CNN
outside edgebuild (0..255 input, softmax head, .h5) with its own held-out test folder; edgebuild builds it
with default settings (only what describes the model and the data is set), then with variations."""

import json
import os
import subprocess
import sys
import time

from bench.common import REPO, SIGNS, edgebuild, log, sets

BYO_CASES = [
    ("defaults: fine-tune train.epochs = 10 (best val epoch kept), QAT lr 1e-5", []),
    ("model as is (train.epochs = 0), QAT lr 1e-5 (default)", ["train.epochs=0"]),
    ("model as is, QAT lr 1e-4", ["train.epochs=0", "qat.learning_rate=0.0001"]),
    ("model as is, QAT at the old default lr 5e-4", ["train.epochs=0", "qat.learning_rate=0.0005"]),
]


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


def byo_markdown(byo):
    t = byo["model"]
    out = [f"Bring a trained model: a residual CNN ({t['params']:,} parameters) trained outside edgebuild on "
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
    return "\n".join(out)
