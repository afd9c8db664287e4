import hashlib, json, sys
from pathlib import Path
import numpy as np

manifest_path = Path(sys.argv[1] if len(sys.argv) > 1 else "build/digits/manifest.json")
m = json.loads(manifest_path.read_text())
assert m["schema_version"] == 1, f"unknown manifest schema {m['schema_version']}"
assert m["gate"]["verdict"] == "pass", "gate failed: do not flash"
art = m["artifacts"]["int8_tflite"]
model = manifest_path.parent / art["path"]
assert hashlib.sha256(model.read_bytes()).hexdigest() == art["sha256"], f"{model} changed since the build"
inp = art["input"]  # manifests older than from_pixel always meant pixel / 255
assert "from_feature" not in inp, f"a feature model: its input is {inp['formula']}, not pixels"
fp = inp.get("from_pixel") or {"pixel_scale": 1 / 255, "pixel_offset": 0.0, "mean": [0.0], "std": [1.0]}

def to_int8(pixels):  # uint8 camera pixels (H, W, C) -> the model's int8 input tensor
    x = (pixels * fp["pixel_scale"] + fp["pixel_offset"] - np.array(fp["mean"])) / np.array(fp["std"])
    return np.clip(np.round(x / inp["scale"]) + inp["zero_point"], -128, 127).astype(np.int8)

print(f"flash {model}: input scale {inp['scale']} zero_point {inp['zero_point']}")
print(f"pixel 0 -> {to_int8(np.zeros((1, 1, len(fp['mean'])), np.uint8)).ravel().tolist()}, "
      f"pixel 255 -> {to_int8(np.full((1, 1, len(fp['mean'])), 255, np.uint8)).ravel().tolist()}")
