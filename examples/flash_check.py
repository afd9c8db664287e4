import hashlib, json, sys
from pathlib import Path

manifest_path = Path(sys.argv[1] if len(sys.argv) > 1 else "build/digits/manifest.json")
m = json.loads(manifest_path.read_text())
assert m["schema_version"] == 1, f"unknown manifest schema {m['schema_version']}"
assert m["gate"]["verdict"] == "pass", "gate failed: do not flash"
art = m["artifacts"]["int8_tflite"]
model = manifest_path.parent / art["path"]
assert hashlib.sha256(model.read_bytes()).hexdigest() == art["sha256"], f"{model} changed since the build"
print(f"flash {model}: input scale {art['input']['scale']} zero_point {art['input']['zero_point']}")
