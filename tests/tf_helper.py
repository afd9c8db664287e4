"""Run under KERAS_BACKEND=tensorflow by the tests: load a QAT .keras file, report what survived
the save/load, and convert it twice with different representative datasets.

    python tests/tf_helper.py QAT.keras DATASET.npz OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.model import qat  # noqa: E402
from pipeline.device import tflite_info  # noqa: E402
from pipeline.model.convert import export_int8  # noqa: E402

qat_path, dataset_path, out = sys.argv[1:4]
out = Path(out)
model = keras.models.load_model(qat_path)
data = np.load(dataset_path)
x = data["x"][data["test"]].astype("float32") / 255.0
np.save(out / "tf_logits.npy", model.predict(x, verbose=0))
layers = [type(l).__name__ for l in model._flatten_layers(include_self=False, recursive=True)]

calib = data["x"][data["train"][:64]].astype("float32") / 255.0
export_int8(model, calib, out / "a.tflite")
# Very different "calibration" data: if the converter used calibration for activation ranges,
# the scales would change; with QAT ranges they must not.
export_int8(model, np.clip(calib * 0.25, 0, 1), out / "b.tflite")
scales = {}
for name in ("a", "b"):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(out / f"{name}.tflite"))
    scales[name] = sorted(
        float(t["quantization"][0]) for t in interp.get_tensor_details()
        if t["dtype"] == np.int8 and t["quantization"][0] > 0
    )
print(json.dumps({
    "layers": layers,
    "backend": keras.backend.backend(),
    "ranges": qat.activation_ranges(model),
    "scales": scales,
    "describe": tflite_info.describe(out / "a.tflite"),
}))
