"""The whole run's accuracy comparison (`python -m bench`): float vs post-training int8 vs edgebuild's
QAT int8, same splits and same calibration set, per case: images, a keyword spotter on synthesized
speech (accuracy), and an anomaly autoencoder on synthetic machine sounds (ROC AUC over clips)."""

import json
import os
import subprocess
import sys

from bench.common import REPO, SIGNS, edgebuild, fresh_cache, log, sets

# Accuracy comparisons: (label, config overrides); identical splits and calibration sets within a
# case, since PTQ converts the same build's float model with the same calibration file.
ACCURACY_CASES = [
    ("digits, small_cnn (default)", []),
    ("digits, ds_cnn (depthwise)", ['train.recipe="ds_cnn"']),
    # Real photos are harder than digits: here plain post-training int8 loses more than 1 pp.
    ("sign-language photos 32x32 RGB, small_cnn", [f'data.source="{SIGNS}"', "data.channels=3", "data.calibration_samples=100"]),
    ("sign-language photos 32x32 RGB, ds_cnn", [f'data.source="{SIGNS}"', "data.channels=3", "data.calibration_samples=100",
                                                'train.recipe="ds_cnn"']),
    # Feature tensors: 10 keywords synthesized here (espeak-ng, 5 voices, 3 speeds, 2 pitches, 3 noisy
    # copies at low SNR), 49x10 MFCCs; made in the run's work directory (KEYWORDS).
    ("synthesized keywords 49x10 MFCC, ds_cnn_kws", ['data.source="{keywords}"', 'train.recipe="ds_cnn_kws"',
                                                    "train.width=8", "train.epochs=20", "train.learning_rate=0.01",
                                                    "data.calibration_samples=100"]),
]
KEYWORDS = dict(words=("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"), noisy=3, noise=(-1.6, -0.9))
# Anomaly detection, judged by ROC AUC over clips: synthetic machine sounds with subtle anomalies (a 1%
# harmonic shift, faint clicks and bearing noise), 120 normal and 60 anomalous clips (MACHINE).
ANOMALY_CASES = [
    ("synthetic machine sounds 640 log-mel, autoencoder", ['data.source="{machine}"', 'task.kind="anomaly"',
                                                          'train.recipe="autoencoder"', "train.width=8",
                                                          "train.epochs=30", "data.calibration_samples=100"]),
]
MACHINE = dict(normal_clips=120, anomalous_clips=60, strength=0.15)


def _featuredata():
    sys.path.insert(0, str(REPO / "tests"))
    import featuredata

    return featuredata


def _keywords(work):
    """The keyword case's data, made once in `work` by the tests' own generator (tests/featuredata.py)."""
    return _featuredata().keywords(work / "keywords.npz", **KEYWORDS)


def anomaly(work, targets_cache):
    """Float vs post-training int8 vs edgebuild's QAT int8 of each anomaly case, by ROC AUC (and pAUC at
    FPR <= 0.1) over the test clips; the same splits and calibration set within a case."""
    rows = []
    for label, overrides in ANOMALY_CASES:
        machine = _featuredata().machine_sounds(work / "machine.npz", **MACHINE)
        overrides = [o.replace("{machine}", str(machine)) for o in overrides]
        build_dir = _build(work, targets_cache, label, overrides)
        m = json.loads((build_dir / "manifest.json").read_text())
        ptq = _ptq(work, build_dir)
        f, qat = m["metrics"]["float"], m["metrics"]["int8_host"]
        rows.append({"case": label, "overrides": overrides, "params": m["train"]["params"], "test_clips": f["clips"],
                     "anomalous_clips": f["anomalous_clips"], "float_auc": f["auc"], "ptq_int8_auc": ptq["ptq_int8_auc"],
                     "qat_int8_auc": qat["auc"], "float_pauc": f["pauc"], "ptq_int8_pauc": ptq["ptq_int8_pauc"],
                     "qat_int8_pauc": qat["pauc"]})
        log(f"anomaly {label}: AUC float {f['auc']:.4f} ptq {ptq['ptq_int8_auc']:.4f} qat {qat['auc']:.4f}")
    return rows


def anomaly_markdown(rows):
    out = ["| model | params | test clips (anomalous) | float AUC | PTQ int8 AUC | QAT int8 AUC (edgebuild) | "
           "float / PTQ / QAT pAUC |", "|---|---|---|---|---|---|---|"]
    for a in rows:
        out.append(f"| {a['case']} | {a['params']:,} | {a['test_clips']} ({a['anomalous_clips']}) | {a['float_auc']:.4f} | "
                   f"{a['ptq_int8_auc']:.4f} | {a['qat_int8_auc']:.4f} | {a['float_pauc']:.4f} / "
                   f"{a['ptq_int8_pauc']:.4f} / {a['qat_int8_pauc']:.4f} |")
    return "\n".join(out)


def _build(work, targets_cache, label, overrides):
    """The build directory of one case, built with no targets in a cache of its own."""
    slug = "".join(c if c.isalnum() else "-" for c in label)[:40]
    out = work / f"acc-{slug}"
    cache = fresh_cache(work, f"acc-cache-{slug}", targets_cache)
    edgebuild(["build", "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{out}/calib.json"',
               "--set", "validate.targets=[]", *sets(overrides)], cache)
    return out / "digits"


def built_cases(work, targets_cache, cases, section):
    """(label, overrides, build directory, manifest) of each case of `cases` built with no targets (`_build`);
    a case on the sign-language photos is skipped, and logged, where they are not there."""
    for label, overrides in cases:
        if any("sign-language" in o for o in overrides) and not SIGNS.is_dir():
            log(f"{section} {label}: skipped, {SIGNS} is not there")
            continue
        build_dir = _build(work, targets_cache, label, overrides)
        yield label, overrides, build_dir, json.loads((build_dir / "manifest.json").read_text())


def _ptq(work, build_dir, int16=False):
    """bench/ptq.py's figures for the build's float model (TensorFlow in a child process); with `int16`,
    LiteRT's 16x8 mode and the worst layers too."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "bench.ptq", str(build_dir), str(work / "ptq.json"), *(["--int16"] if int16 else [])],
                   cwd=REPO, env=env, check=True, capture_output=True)
    return json.loads((work / "ptq.json").read_text())


def accuracy(work, targets_cache, default_build):
    rows = []
    for label, overrides in ACCURACY_CASES:
        if any("sign-language" in o for o in overrides) and not SIGNS.is_dir():
            log(f"accuracy {label}: skipped, {SIGNS} is not there")
            continue
        if any("{keywords}" in o for o in overrides):
            overrides = [o.replace("{keywords}", str(_keywords(work))) for o in overrides]
        build_dir = default_build if not overrides else _build(work, targets_cache, label, overrides)
        m = json.loads((build_dir / "manifest.json").read_text())
        ptq = _ptq(work, build_dir)
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


def accuracy_markdown(rows):
    out = ["| model | params | float | PTQ int8 | QAT int8 (edgebuild) | PTQ drop pp | QAT drop pp | keras quantize('int8') | its LiteRT export |",
           "|---|---|---|---|---|---|---|---|---|"]
    for a in rows:
        kq = "-" if a["keras_quantize_int8"] is None else f"{100 * a['keras_quantize_int8']:.2f}%"
        out.append(f"| {a['case']} | {a['params']:,} | {100 * a['float']:.2f}% | {100 * a['ptq_int8']:.2f}% | "
                   f"{100 * a['qat_int8']:.2f}% | {a['ptq_drop_pp']:+.2f} | {a['qat_drop_pp']:+.2f} | {kq} | "
                   f"{a['keras_quantize_litert_export'][:60]} |")
    out.append("")
    for a in rows:
        out.append(f"- {a['case']}: {verdict(a)}")
    out.append("- Keras's own `model.quantize('int8')` quantizes Dense kernels only (convolutions stay float), so "
               "its accuracy is close to float; its LiteRT export fails (see the table), so it gives no int8 artifact.")
    return "\n".join(out)
