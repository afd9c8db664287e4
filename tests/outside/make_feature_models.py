"""Make a keyword-spotting .tflite the way a team outside edgebuild would: plain TensorFlow (no Keras,
nothing from edgebuild), trained on MFCC features, converted with tf.lite.TFLiteConverter to full
integer (int8 in and out).

    python tests/outside/make_feature_models.py FEATURES.npz OUT_DIR

FEATURES.npz holds x (N, 49, 10) float32 MFCCs, y and class_names. Writes:
  test.npz           the held-out test set: x float32 (N, 49, 10), y, class_names
  test_int8.npz      the same features already quantized with the model's input scale and zero point
                     (int8), as an embedded runner feeds them
  kws_int8.tflite    full integer, int8 in/out
  expected.json      its test accuracy computed here with TensorFlow's own interpreter
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tfconvert import full_integer, run_int8  # noqa: E402

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
with np.load(source) as f:
    x, y, names = f["x"].astype(np.float32), f["y"].astype(np.int64), f["class_names"]
order = np.random.RandomState(3).permutation(len(y))
test, train = order[: len(y) // 4], order[len(y) // 4:]
np.savez(out / "test.npz", x=x[test], y=y[test], class_names=names)
mean, std = float(x[train].mean()), float(x[train].std())


class Net(tf.Module):
    def __init__(self, classes):
        init = tf.random_normal_initializer(stddev=0.1, seed=5)
        self.k = tf.Variable(init([5, 3, 1, 12]))
        self.b = tf.Variable(tf.zeros([12]))
        self.w = tf.Variable(init([25 * 5 * 12, classes]) * 0.3)
        self.c = tf.Variable(tf.zeros([classes]))

    def logits(self, features, batch=-1):
        h = tf.reshape((features - mean) / std, [batch, 49, 10, 1])
        h = tf.nn.relu(tf.nn.conv2d(h, self.k, 2, "SAME") + self.b)
        return tf.matmul(tf.reshape(h, [batch, 25 * 5 * 12]), self.w) + self.c


net = Net(len(names))
opt = tf.optimizers.Adam(0.01)
rng = np.random.RandomState(0)
for step in range(300):
    batch = rng.choice(train, 64)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[batch], net.logits(x[batch])))
    opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))


@tf.function(input_signature=[tf.TensorSpec([1, 49, 10], tf.float32)])
def serve(features):
    return net.logits(features, batch=1)


(out / "kws_int8.tflite").write_bytes(full_integer(serve, net, x[train[:200]]))
quantized, outputs = run_int8(out / "kws_int8.tflite", x[test])
np.savez(out / "test_int8.npz", x=quantized, y=y[test], class_names=names)
top1 = [int(o.argmax()) for o in outputs]
accuracy = float((np.asarray(top1) == y[test]).mean())
(out / "expected.json").write_text(json.dumps({"kws_int8.tflite": accuracy, "top1": top1}))
print(f"kws_int8.tflite: {accuracy:.4f} on {len(test)} test samples (TensorFlow's interpreter)")
