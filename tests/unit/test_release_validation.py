"""Validation manifests (a model file built elsewhere) through the schema, the gate and the
summary, in process: tests/unit/data/tiny-validation.json is a real `edgebuild validate` of a
TensorFlow-converted int8 model (refresh with `python tools/refresh_test_manifest.py`)."""

import copy
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import preprocess
from pipeline.engine import config as config_mod
from pipeline.engine.errors import InputError
from pipeline.release import gate, manifest as manifest_mod, report

HERE = Path(__file__).resolve().parent
VALIDATION = manifest_mod.read(HERE / "data" / "tiny-validation.json")
BUILD = manifest_mod.read(HERE / "data" / "tiny-manifest.json")
CFG = config_mod.load(None).gate


def failed(result):
    return {c["name"] for c in result["checks"] if not c["passed"]}


def test_a_validation_manifest_says_what_it_is():
    assert VALIDATION["kind"] == "validation" and VALIDATION["built_here"] is False
    assert set(VALIDATION["artifacts"]) == {"model"} and "int8_host" not in VALIDATION["metrics"]
    art = VALIDATION["artifacts"]["model"]
    assert art["input"]["dtype"] == "int8" and art["input"]["zero_point"] == -1  # the file's, not ours
    assert VALIDATION["preprocess"]["pixel_range"] == [-1.0, 1.0]


def test_validation_gate_passes_itself_and_fails_a_worse_model():
    assert gate.evaluate(VALIDATION, CFG)["verdict"] == "pass"
    assert gate.evaluate(VALIDATION, CFG, baseline=copy.deepcopy(VALIDATION))["verdict"] == "pass"
    worse = copy.deepcopy(VALIDATION)
    top1 = worse["metrics"]["host"]["top1"]
    for i in range(0, len(top1), 10):  # every tenth prediction wrong
        top1[i] = (top1[i] + 1) % len(worse["class_names"])
    worse["metrics"]["host"]["accuracy"] = round(VALIDATION["metrics"]["host"]["accuracy"] - 0.1, 6)
    assert {"accuracy drop vs baseline", "regressed samples baseline->model"} <= failed(gate.evaluate(worse, CFG, baseline=VALIDATION))


def test_a_baseline_of_other_classes_or_test_set_is_refused():
    with pytest.raises(InputError, match="same classes"):
        gate.evaluate(VALIDATION, CFG, baseline={**BUILD, "class_names": ["a", "b"]})
    other = copy.deepcopy(VALIDATION)
    other["test_set"]["fingerprint"] = "0" * 64
    with pytest.raises(InputError, match="same test set") as refused:
        gate.evaluate(VALIDATION, CFG, baseline=other)
    assert "Loaded differently" not in str(refused.value)  # the loading settings are the same
    mine = copy.deepcopy(VALIDATION)
    mine["config"]["data"]["resize"], other["config"]["data"]["resize"] = "pillow", "keras"
    with pytest.raises(InputError, match=r"Loaded differently: data.resize = 'keras' in the baseline, 'pillow' here\."):
        gate.evaluate(mine, CFG, baseline=other)


def test_a_target_that_refuses_the_model_fails_its_check_only():
    for m in (copy.deepcopy(VALIDATION), copy.deepcopy(BUILD)):
        name = "rpi4-bookworm-tflite"
        m["metrics"]["targets"][name] = {"target": name, "runtime": "tflite-runtime", "runtime_version": "2.14.0",
                                         "refused": "Didn't find op for builtin opcode 'X' version '9'"}
        manifest_mod.validate(m)
        result = gate.evaluate(m, CFG)
        assert failed(result) == {f"runs on target ({name})"}
        assert "refused: Didn't find op" in report.summary(m)


@pytest.mark.parametrize("dtype, scale, zp", [("int8", 1.0, -128), ("uint8", 1.0, 0), ("uint8", 1 / 127.5, 127)])
def test_pixels_become_the_input_tensor_the_file_describes(dtype, scale, zp):
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    pp = config_mod.load(None, ["preprocess.pixel_range=[0, 255]" if scale == 1.0 else "preprocess.pixel_range=[-1, 1]"]).preprocess
    q = preprocess.to_input(pixels, pp, {"dtype": dtype, "scale": scale, "zero_point": zp})
    assert q.dtype == np.dtype(dtype)
    if scale == 1.0:  # scale 1: the pixel itself, shifted by the zero point
        assert np.array_equal(q.astype(int).ravel(), np.arange(256) + zp)
    else:
        x = np.arange(256) / 127.5 - 1.0
        expect = np.clip(np.round(x / scale) + zp, 0, 255)  # ties at .5 may round either way in float
        assert np.abs(q.astype(int).ravel() - expect).max() <= 1 and (q.astype(int).ravel() == expect).mean() > 0.9
    f = preprocess.to_input(pixels, pp, {"dtype": "float32", "scale": None, "zero_point": None})
    assert f.dtype == np.float32
    with pytest.raises(InputError, match="float32, int8, uint8 or int16"):
        preprocess.to_input(pixels, pp, {"dtype": "int32", "scale": 1.0, "zero_point": 0})
    # an int16 input (LiteRT's 16x8 mode) is quantized with its own scale, to int16's range
    q16 = preprocess.to_input(pixels, pp, {"dtype": "int16", "scale": 1 / 32767, "zero_point": 0})
    assert q16.dtype == np.int16 and q16.min() >= -32768 and q16.max() == 32767


def test_a_baseline_whose_figures_contradict_its_predictions_is_refused(tmp_path):
    for m in (copy.deepcopy(VALIDATION), copy.deepcopy(BUILD)):
        manifest_mod.write(tmp_path / "ok.json", m)
        assert manifest_mod.read_baseline(tmp_path / "ok.json")["_file"]["sha256"]
        key = "host" if m.get("kind") == "validation" else "int8_host"
        m["metrics"][key]["accuracy"] = round(m["metrics"][key]["accuracy"] - 0.05, 6)
        manifest_mod.write(tmp_path / "edited.json", m)  # re-sealed, as someone who knew the seal would
        with pytest.raises(InputError, match="contradict"):
            manifest_mod.read_baseline(tmp_path / "edited.json")
