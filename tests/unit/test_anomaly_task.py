"""The anomaly task's figures and gate checks, in process: window scores, clip means, ROC AUC and pAUC
as scikit-learn computes them, target agreement, and the gate's verdicts."""

import numpy as np
import pytest

from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.release import gate, tasks
from pipeline.release.tasks import anomaly


def test_a_window_scores_its_mean_squared_reconstruction_error_and_a_clip_the_mean_of_its_windows():
    x = np.zeros((4, 2, 3), np.float32)
    out = np.ones((4, 2, 3))
    out[1] *= 2.0
    assert anomaly.window_scores(out, x).tolist() == [1.0, 4.0, 1.0, 1.0]
    scores, labels = anomaly.clip_scores(np.asarray([1.0, 4.0, 2.0, np.nan]), np.asarray([0, 0, 1, 1]),
                                         np.asarray(["a", "a", "b", "b"]))
    assert scores.tolist() == [2.5, (2.0 + 9.0) / 2] and labels.tolist() == [0, 1]  # NaN: the worst score there is


def test_auc_and_the_partial_auc_are_scikit_learns_over_clips():
    from sklearn.metrics import roc_auc_score

    rng = np.random.RandomState(0)
    labels = np.repeat([0, 1], [30, 10])
    x = rng.normal(0, 1, (40, 8))
    out = x + rng.normal(0, 1, (40, 8)) * (1 + labels[:, None])  # anomalies reconstruct worse
    record, scores = anomaly.metrics(out, x, labels)
    assert record["auc"] == round(roc_auc_score(labels, scores), 6)
    assert record["pauc"] == round(roc_auc_score(labels, scores, max_fpr=0.1), 6)
    assert record["scored_by"] == "window" and (record["normal_clips"], record["anomalous_clips"]) == (30, 10)
    same, _ = anomaly.compare(out, out, x, labels)
    assert same["auc_vs_host"] == 0.0 and same["score_correlation"] == 1.0
    shuffled, _ = anomaly.compare(out[::-1], out, x, labels)
    assert shuffled["score_correlation"] < 0.9


def _manifest(float_auc, int8_auc, target_auc=None, correlation=1.0):
    def rec(auc):
        return {"auc": auc, "pauc": auc, "max_fpr": 0.1, "clips": 20, "scored_by": "clip", "anomalous_clips": 5}

    targets = {} if target_auc is None else {"t": {**rec(target_auc), "auc_vs_host": round(target_auc - int8_auc, 6),
                                                   "score_correlation": correlation}}
    return {"kind": "build", "config": {"task": {"kind": "anomaly"}},
            "metrics": {"float": rec(float_auc), "int8_host": rec(int8_auc), "targets": targets}}


def test_the_gate_holds_the_auc_its_drop_and_each_targets_agreement():
    cfg = config_mod.load(None, ["gate.min_auc=0.8"]).gate

    def failed(manifest):
        return [c["name"] for c in anomaly.gate_checks(manifest, cfg) if not c["passed"]]

    assert failed(_manifest(0.95, 0.94, 0.94)) == []
    assert failed(_manifest(0.95, 0.90)) == ["int8 AUC drop vs float"]
    assert failed(_manifest(0.85, 0.79)) == ["int8 AUC (host)", "int8 AUC drop vs float"]
    assert failed(_manifest(0.95, 0.94, 0.92, correlation=0.9)) == [
        "host/target AUC difference (t)", "host/target score correlation (t)"]
    assert failed({**_manifest(0.95, 0.94)}) == []
    assert tasks.kind({"config": {}}) == "classification"


def test_a_baseline_of_another_task_is_refused():
    ours = _manifest(0.95, 0.94)
    theirs = {"config": {"task": {"kind": "classification"}}, "class_names": ["a", "b"]}
    with pytest.raises(InputError, match="same task; the baseline was made with task.kind = 'classification', this build with 'anomaly'"):
        gate.check_baseline_compatible(ours, theirs)
