"""keras.applications backbones through QAT to full-integer int8 (in a file of its own: the suite's
longest test, which pytest-xdist can then start first; see conftest.SLOWEST_FIRST)."""

import json

from conftest import TINY, edgebuild


def test_mobilenet_v3_small_converts_to_full_integer_int8(tmp_path, cache_dir):
    sets = ['train.recipe="mobilenet_v3_small"', "data.image_size=48", "data.channels=3", "data.max_samples=120",
            "data.calibration_samples=20", "train.epochs=1",
            "train.batch_size=128",  # one batch an epoch: one compile of the train step (10 s cold)
            "qat.epochs=0", "validate.targets=[]",
            'export.formats=["tflite"]',  # what is tested is the int8 .tflite (tf2onnx's two conversions: 6.5 s alone)
            f'build.out_dir="{tmp_path}"', f'data.calibration_file="{tmp_path}/calib.json"']
    proc = edgebuild("--quiet", "build", "--config", str(TINY), "--until", "export",
                     *[arg for s in sets for arg in ("--set", s)], env={"EDGEBUILD_CACHE": str(cache_dir)})
    d = tmp_path / "tiny"
    assert proc.returncode == 0, proc.stderr
    export = json.loads((d / "records" / "export.json").read_text())["int8"]
    record = json.loads((d / "records" / "export.json").read_text())
    assert record["quantization"] == "post-training" and not (d / "qat.keras").exists()  # qat.epochs = 0: PTQ
    ops = {op["name"] if isinstance(op, dict) else op for op in export["ops"]}
    assert {"HARD_SWISH", "DEPTHWISE_CONV_2D", "MUL"} <= ops, ops  # hard-swish and squeeze-excite survived as int8
    assert not export["float_ops"] and not export.get("custom_ops") and not export.get("flex_ops")
    assert export["inputs"][0]["dtype"] == export["outputs"][0]["dtype"] == "int8"
