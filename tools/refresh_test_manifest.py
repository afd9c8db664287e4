"""Refresh the real manifests the unit tests read (run after a change to the manifest schema):
`python tools/refresh_test_manifest.py`.

- tests/unit/data/tiny-manifest.json: a build of tests/tiny.toml;
- tests/unit/data/tiny-validation.json: `edgebuild validate` of the int8 model that
  tests/outside/make_models.py converts with TensorFlow (host only)."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "unit" / "data"

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pipeline", "--quiet", "build", "--config", str(REPO / "tests" / "tiny.toml"),
                    "--set", f'build.out_dir="{tmp}"', "--set", f'data.calibration_file="{tmp}/calib.json"'],
                   cwd=REPO, check=True)
    shutil.copy(Path(tmp) / "tiny" / "manifest.json", DATA / "tiny-manifest.json")
    subprocess.run([sys.executable, str(REPO / "tests" / "outside" / "make_models.py"), tmp], check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "pipeline", "--quiet", "validate", "int8.tflite", "--data", "test.npz",
                    "--set", "preprocess.pixel_range=[-1, 1]", "--set", "validate.targets=[]", "--out", "v"],
                   cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    shutil.copy(Path(tmp) / "v" / "manifest.json", DATA / "tiny-validation.json")
print("wrote tests/unit/data/tiny-manifest.json and tiny-validation.json")
