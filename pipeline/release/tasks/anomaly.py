"""Anomaly detection (`task.kind = "anomaly"`), as the machine-sound benchmarks judge it: the model
reconstructs its input window; a window's score is the mean squared error between the float input and
the (dequantized) output, a clip's score the mean over its windows (the `group` array; each window its
own clip without one). y is 0 = normal, 1 = anomaly. The metric is the ROC AUC over clips, with the
partial AUC at FPR <= 0.1 (scikit-learn's standardized pAUC, the DCASE convention)."""

import numpy as np

from pipeline.engine.stage import check

MAX_FPR = 0.1


def model_outputs(input_shape, class_names):
    """An autoencoder outputs its input's shape."""
    return tuple(int(d) for d in input_shape)


def fit_arrays(x, y):
    """An autoencoder learns to reconstruct the normal windows only."""
    normal = x[y == 0]
    return normal, normal


def window_scores(outputs, x):
    """Per window: the mean squared error between the reconstruction and the float input."""
    out = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    ref = np.asarray(x, np.float64).reshape(len(x), -1)
    with np.errstate(over="ignore", invalid="ignore"):
        return ((out - ref) ** 2).mean(axis=1)


def clip_scores(scores, labels, groups=None):
    """(score, label) per clip: the mean of its windows' scores (every window its own clip without groups).
    A NaN or inf window score counts as the worst score there is."""
    scores = np.asarray(scores, np.float64)
    finite = scores[np.isfinite(scores)]
    worst = 2.0 * float(finite.max()) + 1.0 if finite.size else 1.0
    scores = np.nan_to_num(scores, nan=worst, posinf=worst, neginf=0.0)
    if groups is None:
        return scores, np.asarray(labels)
    _, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    return np.bincount(inverse, scores) / np.bincount(inverse), np.asarray(labels)[first]


def roc(scores, labels):
    """(auc, pauc at FPR <= MAX_FPR)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)), float(roc_auc_score(labels, scores, max_fpr=MAX_FPR))


def metrics(outputs, x, labels, groups=None):
    """(one model's record on the test set, its window scores)."""
    scores = window_scores(outputs, x)
    clip, clip_labels = clip_scores(scores, labels, groups)
    auc, pauc = roc(clip, clip_labels)
    return {
        "auc": round(auc, 6), "pauc": round(pauc, 6), "max_fpr": MAX_FPR,
        "scored_by": "clip" if groups is not None else "window", "clips": int(len(clip)),
        "normal_clips": int((clip_labels == 0).sum()), "anomalous_clips": int((clip_labels == 1).sum()),
        "samples": int(len(scores)), "nonfinite_scores": int((~np.isfinite(scores)).sum()),
    }, scores


def correlation(a, b):
    """Pearson's correlation of two score vectors (1.0 when both are constant and equal)."""
    a, b = clip_scores(a, np.zeros(len(a)))[0], clip_scores(b, np.zeros(len(b)))[0]
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def compare(target, host, x, labels, groups=None):
    """A target's (dequantized) outputs against the host's on the same windows: its own AUC, the AUC
    difference and the correlation of the window scores. (record, the target's window scores)"""
    record, scores = metrics(target, x, labels, groups)
    host_record, host_scores = metrics(host, x, labels, groups)
    record.update(auc_vs_host=round(record["auc"] - host_record["auc"], 6),
                  score_correlation=round(correlation(scores, host_scores), 6))
    return record, scores


def _auc_check(name, record, cfg):
    return check(f"{name}", record["auc"], f">= {cfg.min_auc}", record["auc"] >= cfg.min_auc,
                 detail=f"pAUC (FPR <= {record['max_fpr']}) {record['pauc']:.4f}, {record['clips']} {record['scored_by']}s "
                        f"({record['anomalous_clips']} anomalous)")


def _drop_check(name, before, after, cfg, baseline=False):
    drop = round(before["auc"] - after["auc"], 6)
    return check(name, drop, f"<= {cfg.max_auc_drop}", drop <= cfg.max_auc_drop,
                 baseline=before["auc"] if baseline else None)


def gate_checks(manifest, cfg, baseline=None):
    """The AUC checks: each model's AUC against gate.min_auc, int8's drop against float and the
    baseline (gate.max_auc_drop), and each target's AUC and agreement with the host (AUC difference,
    score correlation). Bit-exactness, budgets and the model checks are the gate's shared ones."""
    m = manifest["metrics"]
    checks = []
    if manifest.get("kind") == "validation":
        reference, ours = None, m["host"]
        checks.append(_auc_check("AUC (host)", ours, cfg))
    else:
        reference, ours = m["float"], m["int8_host"]
        checks += [_auc_check("int8 AUC (host)", ours, cfg), _drop_check("int8 AUC drop vs float", reference, ours, cfg)]
        if "onnx_int8" in m:
            onnx = m["onnx_int8"]
            checks += [_auc_check("int8 ONNX AUC (host)", onnx, cfg),
                       _drop_check("int8 ONNX AUC drop vs float", reference, onnx, cfg),
                       check("int8 ONNX/TFLite score correlation", onnx["score_correlation_vs_int8_tflite"],
                             f">= {cfg.min_score_correlation}",
                             onnx["score_correlation_vs_int8_tflite"] >= cfg.min_score_correlation,
                             detail=f"{onnx['bitexact_fraction_vs_int8_tflite']:.4f} of outputs bit-exact")]
    for name, t in sorted((m.get("targets") or {}).items()):
        if t.get("refused"):
            continue  # the gate's shared "runs on target" check fails it
        diff = abs(t["auc_vs_host"])
        checks += [_auc_check(f"AUC ({name})", t, cfg),
                   check(f"host/target AUC difference ({name})", diff, f"<= {cfg.max_target_auc_diff}",
                         diff <= cfg.max_target_auc_diff),
                   check(f"host/target score correlation ({name})", t["score_correlation"],
                         f">= {cfg.min_score_correlation}", t["score_correlation"] >= cfg.min_score_correlation)]
    if baseline is not None:
        theirs = baseline["metrics"]["host" if baseline.get("kind") == "validation" else "int8_host"]
        checks.append(_drop_check("AUC drop vs baseline", theirs, ours, cfg, baseline=True))
        for name, t in sorted((m.get("targets") or {}).items()):
            bt = (baseline["metrics"].get("targets") or {}).get(name)
            if bt and not bt.get("refused") and not t.get("refused"):
                checks.append(_drop_check(f"AUC drop vs baseline ({name})", bt, t, cfg, baseline=True))
    return checks


def metric_cell(record):
    """A model's figure in the report's tables."""
    return f"AUC {record['auc']:.4f}, pAUC {record['pauc']:.4f}"


def roc_figure(curves, plt):
    """ROC curves of each model ({label: (clip scores, clip labels)}) and the score histograms of normal
    vs anomalous clips of the first two."""
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        auc, _ = roc(scores, labels)
        axes[0].plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})")
    axes[0].plot([0, 1], [0, 1], color="gray", linestyle=":")
    axes[0].axvline(MAX_FPR, color="gray", linewidth=0.6)
    axes[0].set_xlabel("false positive rate")
    axes[0].set_ylabel("true positive rate")
    axes[0].set_title("ROC over clips")
    axes[0].legend(fontsize=7)
    for label, (scores, labels) in list(curves.items())[:2]:
        for cls, name in ((0, "normal"), (1, "anomalous")):
            axes[1].hist(scores[labels == cls], bins=20, alpha=0.45, label=f"{label}: {name}")
    axes[1].set_xlabel("anomaly score (mean squared reconstruction error)")
    axes[1].set_title("score histograms")
    axes[1].legend(fontsize=7)
    return fig
