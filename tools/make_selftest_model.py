"""Regenerate pipeline/selftest_int8.tflite: a tiny full-integer model (8x8x1 -> 4 classes) that
`edgebuild target setup` runs to prove a fresh emulated environment works.

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
from pipeline.model.convert import export_int8  # noqa: E402

keras.utils.set_random_seed(0)
inp = keras.Input((8, 8, 1))
x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
x = keras.layers.GlobalAveragePooling2D()(x)
out = keras.layers.Dense(4)(x)
model = qat.quantize_model(keras.Model(inp, out))
data = np.random.RandomState(0).rand(16, 8, 8, 1).astype("float32")
model(data, training=True)
export_int8(model, data, Path(__file__).resolve().parent.parent / "pipeline" / "selftest_int8.tflite")
print("wrote pipeline/selftest_int8.tflite")
