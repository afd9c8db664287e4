"""Export's checks on what tf2onnx and the TFLite converter produce."""

import json
import os
import subprocess
import sys
from pathlib import Path

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


NATIVE_GELU = """
import json, keras, numpy as np, sys
from pathlib import Path
from pipeline.device import tflite_info
from pipeline.model import convert, qat
out = Path(sys.argv[1])
inp = keras.Input((8, 8, 1))
x = keras.layers.Dense(16, activation="gelu")(keras.layers.Flatten()(inp))
x = keras.ops.gelu(keras.layers.Dense(16)(x), approximate=True)
model = keras.Model(inp, keras.layers.Dense(3)(x))
q = qat.quantize_model(model, gelu="native")
data = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
qat.init_ranges(q, data)
convert.export_int8(q, data, out / "int8.tflite")
info = tflite_info.describe(out / "int8.tflite")
convert.export_int8_onnx(out / "int8.tflite", out / "int8.onnx", 17, info)
print(json.dumps([op["name"] for op in info["ops"]]))
"""


def test_the_native_gelu_of_a_qat_model_becomes_int8_gelu_and_int8_onnx(tmp_path):
    # qat.gelu = "native" (LiteRT targets only): LiteRT's int8 GELU, both forms, which tf2onnx writes with
    # edgebuild's handler as ops onnxruntime runs (the int8 ONNX is checked to load)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", NATIVE_GELU, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ops.count("GELU") == 1 and "LOGISTIC" not in ops and "DEQUANTIZE" not in ops, ops
    assert (tmp_path / "int8.onnx").stat().st_size > 0
