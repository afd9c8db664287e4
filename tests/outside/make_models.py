"""Make .tflite models the way a team outside edgebuild would: plain TensorFlow (no Keras, nothing
from edgebuild), trained on scikit-learn's digits, converted with tf.lite.TFLiteConverter.

    python tests/outside/make_models.py OUT_DIR

The models take the [-1, 1] input convention (pixel / 127.5 - 1), 8x8x1. Writes:
  test.npz            the held-out test set (x uint8 (N, 8, 8, 1), y, class_names)
  float.tflite        float32 in/out
  int8.tflite         full integer, int8 in/out
  uint8.tflite        full integer, uint8 in/out, a graph fixed to batch 1
  worse_int8.tflite   the same recipe, stopped after a few steps (a deliberately worse model)
  flex.tflite         float, with a select-TF op (FlexMatrixDeterminant)
  gelu_int8.tflite    full integer, int8 in/out, with a GELU on the logits: a builtin op LiteRT runs and
                      TensorFlow Lite Micro does not have
  tokens_int8.tflite  full integer, int8 in/out, token/FC style: the 8 image rows as 8 tokens, one dense
                      layer per token (FULLY_CONNECTED on a 3-D input), mean over tokens, logits (untrained:
                      a model tflite-runtime 2.14's optimized kernels crash on under qemu, issue 35 item 18)
  float_nchw.onnx     the float model through tf2onnx with its input channels first (N, 1, 8, 8), as a
                      PyTorch export has it
  qdq_nchw.onnx       that .onnx quantized by onnxruntime's own quantize_static: QDQ inside, float in/out
  expected.json       each model's test accuracy, computed here with TensorFlow's own interpreter (the
                      .onnx files with onnxruntime)
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
digits = load_digits()
pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
labels = digits.target.astype(np.int64)
rng = np.random.RandomState(7)
order = rng.permutation(len(labels))
test, train = order[:300], order[300:]
np.savez(out / "test.npz", x=pixels[test], y=labels[test], class_names=np.asarray([str(c) for c in range(10)]))


def to_model_input(p):
    return p.astype(np.float32) / 127.5 - 1.0


class Net(tf.Module):
    def __init__(self):
        init = tf.random_normal_initializer(stddev=0.2, seed=3)
        self.k = tf.Variable(init([3, 3, 1, 8]))
        self.b = tf.Variable(tf.zeros([8]))
        self.w = tf.Variable(init([4 * 4 * 8, 10]) * 0.3)
        self.c = tf.Variable(tf.zeros([10]))

    def logits(self, x, batch=-1):
        h = tf.nn.relu(tf.nn.conv2d(x, self.k, 1, "SAME") + self.b)
        h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        return tf.matmul(tf.reshape(h, [batch, 4 * 4 * 8]), self.w) + self.c

    def logits_batch1(self, x):  # a graph that only runs at batch 1, as many exported models do
        return self.logits(x, batch=1)


def fit(steps):
    net = Net()
    opt = tf.optimizers.Adam(0.01)
    x, y = to_model_input(pixels[train]), labels[train]
    for step in range(steps):
        idx = np.random.RandomState(step).choice(len(y), 128)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y[idx], net.logits(x[idx])))
        opt.apply_gradients(zip(tape.gradient(loss, net.trainable_variables), net.trainable_variables))
    return net


def convert(fn, integer=None):
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if integer is not None:
        calib = to_model_input(pixels[train[:200]])
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i : i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = integer
    return conv.convert()


class Tokens(tf.Module):
    def __init__(self):
        init = tf.random_normal_initializer(stddev=0.3, seed=5)
        self.w1, self.b1 = tf.Variable(init([8, 16])), tf.Variable(tf.zeros([16]))
        self.w2, self.b2 = tf.Variable(init([16, 10])), tf.Variable(tf.zeros([10]))

    def logits(self, x):
        tokens = tf.reshape(x, [-1, 8, 8])  # 8 tokens (the rows) of 8 features
        hidden = tf.nn.relu(tf.matmul(tokens, self.w1) + self.b1)  # one dense layer applied to every token
        return tf.matmul(tf.reduce_mean(hidden, axis=1), self.w2) + self.b2


spec = tf.TensorSpec([1, 8, 8, 1], tf.float32)
good, worse = fit(300), fit(4)
models = {
    "float": convert(tf.function(good.logits, input_signature=[spec])),
    "int8": convert(tf.function(good.logits, input_signature=[spec]), tf.int8),
    "uint8": convert(tf.function(good.logits_batch1, input_signature=[spec]), tf.uint8),
    "worse_int8": convert(tf.function(worse.logits, input_signature=[spec]), tf.int8),
    "gelu_int8": convert(tf.function(lambda x: tf.nn.gelu(good.logits(x)), input_signature=[spec]), tf.int8),
    "tokens_int8": convert(tf.function(Tokens().logits, input_signature=[spec]), tf.int8),
}


@tf.function(input_signature=[spec])
def with_flex(x):
    det = tf.linalg.det(tf.reshape(x[:, :2, :2, 0], [-1, 2, 2]))
    return good.logits(x) + 0.0 * det[:, None]


flex = tf.lite.TFLiteConverter.from_concrete_functions([with_flex.get_concrete_function()], good)
flex.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
(out / "flex.tflite").write_bytes(flex.convert())

expected = {}
for name, blob in models.items():
    (out / f"{name}.tflite").write_bytes(blob)
    interp = tf.lite.Interpreter(model_content=blob)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.allocate_tensors()
    correct = 0
    for p, y in zip(pixels[test], labels[test]):
        x = to_model_input(p[None])
        if inp["dtype"] != np.float32:
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        correct += int(interp.get_tensor(outp["index"])[0].argmax() == y)
    expected[name] = {"accuracy": correct / len(test), "input_dtype": np.dtype(inp["dtype"]).name,
                      "input_quantization": [float(v) for v in inp["quantization"]]}


# ONNX as a team deploying with onnxruntime makes it: channels first, quantized by onnxruntime itself.
import onnxruntime as ort  # noqa: E402
import tf2onnx  # noqa: E402
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static  # noqa: E402


@tf.function(input_signature=[tf.TensorSpec([None, 1, 8, 8], tf.float32, name="image")])
def nchw_logits(x):
    return good.logits(tf.transpose(x, [0, 2, 3, 1]))


tf2onnx.convert.from_function(nchw_logits, input_signature=nchw_logits.input_signature, opset=17,
                              output_path=str(out / "float_nchw.onnx"))
input_name = ort.InferenceSession(str(out / "float_nchw.onnx")).get_inputs()[0].name


class Calibration(CalibrationDataReader):
    def __init__(self):
        self.items = iter([{input_name: to_model_input(pixels[i : i + 1]).transpose(0, 3, 1, 2)} for i in train[:200]])

    def get_next(self):
        return next(self.items, None)


quantize_static(str(out / "float_nchw.onnx"), str(out / "qdq_nchw.onnx"), Calibration(), quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
for name in ("float_nchw", "qdq_nchw"):
    session = ort.InferenceSession(str(out / f"{name}.onnx"))
    logits = session.run(None, {input_name: to_model_input(pixels[test]).transpose(0, 3, 1, 2)})[0]
    expected[name] = {"accuracy": float((logits.argmax(1) == labels[test]).mean()), "input_dtype": "float32"}
(out / "expected.json").write_text(json.dumps(expected, indent=1))
print(json.dumps(expected))
