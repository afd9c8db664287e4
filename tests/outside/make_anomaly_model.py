"""Make a machine-sound anomaly detector the way a team outside edgebuild would: a dense autoencoder in
plain TensorFlow (no Keras, nothing from edgebuild), trained on normal log-mel windows only, converted
with tf.lite.TFLiteConverter to full integer (int8 in and out).

    python tests/outside/make_anomaly_model.py WINDOWS.npz OUT_DIR

WINDOWS.npz holds x (N, 640) float32 log-mel windows, y (0 normal, 1 anomaly) and group (the clip).
Writes:
  test.npz             the held-out clips (whole): x, y, group
  anomaly_int8.tflite  full integer, int8 in/out
  expected.json        its ROC AUC and pAUC (FPR <= 0.1) over clips, computed here with TensorFlow's own
                       interpreter and scikit-learn: a window's score is the mean squared error between
                       its float features and the dequantized reconstruction, a clip's the mean over its
                       windows
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from tfconvert import full_integer, run_int8  # noqa: E402

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with np.load(source) as f:
    x, y, group = f["x"].astype(np.float32), f["y"].astype(np.int64), f["group"]
clips = np.unique(group)
held = set(np.random.RandomState(4).permutation(clips)[: len(clips) // 3].tolist())
test = np.flatnonzero([g in held for g in group])
train = np.flatnonzero([g not in held and label == 0 for g, label in zip(group, y)])
np.savez(out / "test.npz", x=x[test], y=y[test], group=group[test])
mean, std = x[train].mean(0), x[train].std(0) + 1e-3


class AutoEncoder(tf.Module):
    def __init__(self, sizes=(640, 64, 8, 64, 640)):
        init = tf.random_normal_initializer(stddev=0.05, seed=9)
        self.w = [tf.Variable(init([a, b])) for a, b in zip(sizes, sizes[1:])]
        self.b = [tf.Variable(tf.zeros([b])) for b in sizes[1:]]

    def __call__(self, window):
        h = (window - mean) / std
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            h = tf.matmul(h, w) + b
            if i < len(self.w) - 1:
                h = tf.nn.relu(h)
        return h * std + mean


net = AutoEncoder()
opt = tf.optimizers.Adam(0.003)
rng = np.random.RandomState(0)
for step in range(600):
    batch = x[rng.choice(train, 64)]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square((net(batch) - batch) / std))
    opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))


@tf.function(input_signature=[tf.TensorSpec([1, 640], tf.float32)])
def serve(window):
    return net(window)


(out / "anomaly_int8.tflite").write_bytes(full_integer(serve, net, x[train[:300]]))
_, reconstructions = run_int8(out / "anomaly_int8.tflite", x[test])
scores = np.mean((reconstructions - x[test].astype(np.float64)) ** 2, axis=1)
names, inverse = np.unique(group[test], return_inverse=True)
clip_scores = np.bincount(inverse, scores) / np.bincount(inverse)
clip_labels = np.zeros(len(names), np.int64)
clip_labels[inverse] = y[test]
expected = {"auc": float(roc_auc_score(clip_labels, clip_scores)),
            "pauc": float(roc_auc_score(clip_labels, clip_scores, max_fpr=0.1)), "clips": int(len(names))}
(out / "expected.json").write_text(json.dumps(expected))
print(f"anomaly_int8.tflite: AUC {expected['auc']:.4f}, pAUC {expected['pauc']:.4f} over {len(names)} clips "
      "(TensorFlow's interpreter)")
