"""Regenerate pipeline/device/selftest_int8.tflite (a tiny full-integer model, 8x8x1 -> 4 classes) and
selftest_int8.onnx (the same model in QDQ form) that `edgebuild target setup` runs to prove a fresh
emulated environment works (the .onnx for an onnxruntime target).

    KERAS_BACKEND=tensorflow python tools/make_selftest_model.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.model import qat  # noqa: E402
from pipeline.device import tflite_info  # noqa: E402
from pipeline.model.convert import export_int8, export_int8_onnx  # noqa: E402

keras.utils.set_random_seed(0)
inp = keras.Input((8, 8, 1))
x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
x = keras.layers.GlobalAveragePooling2D()(x)
out = keras.layers.Dense(4)(x)
model = qat.quantize_model(keras.Model(inp, out))
data = np.random.RandomState(0).rand(16, 8, 8, 1).astype("float32")
model(data, training=True)
device = Path(__file__).resolve().parent.parent / "pipeline" / "device"
export_int8(model, data, device / "selftest_int8.tflite")
export_int8_onnx(device / "selftest_int8.tflite", device / "selftest_int8.onnx", 17,
                 tflite_info.describe(device / "selftest_int8.tflite"))
print("wrote pipeline/device/selftest_int8.tflite and selftest_int8.onnx")
