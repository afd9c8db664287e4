"""Export's checks on what tf2onnx and the TFLite converter produce."""

import os
import subprocess
import sys

import pytest

from pipeline.engine.errors import InputError
from pipeline.model.convert import check_onnx_loads

GELU = """
import keras, numpy as np, sys
inp = keras.Input((8, 8, 1))
x = keras.layers.Dense(16, activation="gelu")(keras.layers.Flatten()(inp))
model = keras.Model(inp, keras.layers.Dense(3)(x))
model(np.zeros((1, 8, 8, 1), np.float32))
model.export(sys.argv[1], format="onnx", verbose=False)
"""


def test_an_onnx_file_onnxruntime_cannot_load_is_refused_with_the_op(tmp_path):
    # tf2onnx writes GELU as Erfc, which onnxruntime has no kernel for
    path = tmp_path / "gelu.onnx"
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", GELU, str(path)], env=env, check=True, capture_output=True, timeout=300)
    with pytest.raises(InputError, match="must load in onnxruntime.*Erfc.*nothing was published") as err:
        check_onnx_loads(path)
    assert len(str(err.value).splitlines()) == 1
