"""Make a float Keras model and its int8 .tflite the way a team outside edgebuild would: Keras 3 on
the TensorFlow backend, trained on scikit-learn's digits, exported with `model.export` and quantized
by tf.lite.TFLiteConverter (post-training, full integer). Then plant a bad layer: the int8 output
range of the layer `mix` made 64 times too wide (its scale edited in the flatbuffer, as a broken
calibration would leave it), so the runtime runs it with a 64 times coarser step.

    python tests/outside/make_keras_pair.py OUT_DIR

Writes test.npz (x uint8 (N, 8, 8, 1), y, class_names; the input is pixel / 255), float.keras,
int8.tflite, planted.tflite and planted.json ({"layer", "tensor"}).
"""

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import flatbuffers  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
digits = load_digits()
pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
labels = digits.target.astype(np.int64)
order = np.random.RandomState(7).permutation(len(labels))
train, test = order[:1400], order[1400:]
np.savez(out / "test.npz", x=pixels[test], y=labels[test], class_names=np.asarray([str(c) for c in range(10)]))
x = pixels.astype(np.float32) / 255.0

keras.utils.set_random_seed(3)
inp = keras.Input((8, 8, 1), name="pixels")
y = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inp)
y = keras.layers.BatchNormalization(name="stem_bn")(y)
y = keras.layers.ReLU(name="stem_relu")(y)
y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="mix")(y)
y = keras.layers.Conv2D(4, 1, activation="relu", name="squeeze")(y)
y = keras.layers.Flatten(name="flat")(y)
y = keras.layers.Dense(10, name="head")(y)
model = keras.Model(inp, y, name="team_cnn")
model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
model.fit(x[train], labels[train], epochs=12, batch_size=64, verbose=0)
model.save(out / "float.keras")

with tempfile.TemporaryDirectory() as saved:
    model.export(saved, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i : i + 1]] for i in train[:200])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    blob = converter.convert()
(out / "int8.tflite").write_bytes(blob)

m = schema.ModelT.InitFromPackedBuf(blob, 0)
graph = m.subgraphs[0]
ops = {o.outputs[0]: m.operatorCodes[o.opcodeIndex].builtinCode for o in graph.operators}
planted = [t for t, tensor in enumerate(graph.tensors)
           if "mix" in tensor.name.decode() and t in ops and ops[t] == schema.BuiltinOperator.CONV_2D]
assert len(planted) == 1, [graph.tensors[t].name for t in planted]
tensor = graph.tensors[planted[0]]
tensor.quantization.scale = [float(tensor.quantization.scale[0]) * 64]
builder = flatbuffers.Builder(1024)
builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
(out / "planted.tflite").write_bytes(builder.Output())
(out / "planted.json").write_text(json.dumps({"layer": "mix", "tensor": tensor.name.decode()}))
