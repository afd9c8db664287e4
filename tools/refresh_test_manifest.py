"""Refresh tests/unit/data/tiny-manifest.json from a real build of tests/tiny.toml (run after a
change to the manifest schema): `python tools/refresh_test_manifest.py`."""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([sys.executable, "-m", "pipeline", "--quiet", "build", "--config", str(REPO / "tests" / "tiny.toml"),
                    "--set", f'build.out_dir="{tmp}"', "--set", f'data.calibration_file="{tmp}/calib.json"'],
                   cwd=REPO, check=True)
    shutil.copy(Path(tmp) / "tiny" / "manifest.json", REPO / "tests" / "unit" / "data" / "tiny-manifest.json")
print("wrote tests/unit/data/tiny-manifest.json")
