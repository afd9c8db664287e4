"""Bring your own model: user functions and .keras files, the serialization preflight, and QAT of
custom layers, through the real chain."""

import json
import os
import subprocess
import sys

import pytest

from conftest import TINY, edgebuild

BAD = "tests.user_models.bad_models"


@pytest.mark.parametrize("recipe, expected", [
    (f"{BAD}:forgets_argument", ["layer 'drop' (ForgetfulDropout)", "`rate` is missing from get_config",
                                 "trained with 0.3, reloads as 0.5", "Add `rate` to get_config"]),
    (f"{BAD}:unregistered", ["layer 'my_relu' (Unregistered)", "@keras.saving.register_keras_serializable"]),
    (f"{BAD}:with_lambda", ["layer 'lam' (Lambda)", "safe_mode refuses it"]),
])
def test_preflight_refuses_unportable_layers(recipe, expected, tmp_path):
    proc = edgebuild("check-model", "--config", str(TINY), "--recipe", recipe)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    for text in expected:
        assert text in proc.stdout
    assert "Traceback" not in proc.stderr
    if recipe != f"{BAD}:forgets_argument":
        return  # the build runs the same preflight: one case shows it refuses before training
    # the build refuses it before training, and writes no artifact
    out = tmp_path / "out"
    proc = edgebuild("build", "--config", str(TINY), "--set", f'train.recipe="{recipe}"',
                     "--set", f'build.out_dir="{out}"', "--set", f'data.calibration_file="{tmp_path}/c.json"',
                     "--set", "validate.targets=[]")
    assert proc.returncode == 3 and "serialization preflight" in proc.stderr, proc.stderr
    assert expected[0] in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "tiny" / "float.keras").exists() and not list(out.rglob("*.tflite"))


def test_a_model_with_two_outputs_is_refused_before_training():
    proc = edgebuild("check-model", "--config", str(TINY), "--recipe", f"{BAD}:two_outputs")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "one input and one output; it has 1 input(s) and 2 output(s)" in proc.stderr and "Traceback" not in proc.stderr


def test_check_model_lists_the_layers_qat_has_no_rule_for_before_any_training():
    proc = edgebuild("check-model", "--config", str(TINY), "--recipe", f"{BAD}:custom_weights")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "✗ layer 'learned_scale' (LearnedScale) is a custom layer with weights" in proc.stdout
    assert "qat.enabled = false" in proc.stderr and "Traceback" not in proc.stderr
    proc = edgebuild("check-model", "--config", str(TINY), "--recipe", f"{BAD}:custom_weights", "--set", "qat.enabled=false")
    assert proc.returncode == 0 and "QAT rule" not in proc.stdout, proc.stdout + proc.stderr  # PTQ: no QAT rewrite


def test_a_correct_custom_layer_passes_preflight():
    proc = edgebuild("check-model", "--config", str(TINY), "--recipe", "examples.custom_model:build")
    assert proc.returncode == 0 and "round-trip" in proc.stdout, proc.stdout + proc.stderr
    assert "✓ every layer has an int8 QAT rule" in proc.stdout


def _build(tmp_path, cache_dir, *sets, targets="[]"):
    out = tmp_path / "out"
    args = ["--quiet", "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"',
            "--set", f'data.calibration_file="{tmp_path}/c.json"', "--set", f"validate.targets={targets}"]
    for s in sets:
        args += ["--set", s]
    proc = edgebuild(*args, env={"EDGEBUILD_CACHE": str(cache_dir)})
    return proc, out / "tiny"


def test_user_function_with_a_custom_layer_builds_qats_and_exports(tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, 'train.recipe="examples.custom_model:build"')
    assert proc.returncode == 0, proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    met = m["metrics"]
    assert met["float"]["accuracy"] > 0.85
    assert met["float"]["accuracy"] - met["int8_host"]["accuracy"] <= 0.015
    assert not m["artifacts"]["int8_tflite"]["float_ops"]
    assert any("scaled_re_lu" in k for k in m["qat"]["ranges"]), "the custom layer's output is quantized"


def test_custom_layer_with_weights_is_named_at_qat(tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, f'train.recipe="{BAD}:custom_weights"', "train.epochs=1")
    assert proc.returncode == 3, proc.stderr
    assert "layer 'learned_scale' (LearnedScale) is a custom layer with weights" in proc.stderr
    assert "Traceback" not in proc.stderr and not (d / "qat.keras").exists()


def test_a_keras_file_trained_elsewhere_goes_through_qat_export_and_validation(tiny_build, tmp_path, cache_dir):
    elsewhere = tmp_path / "trained_elsewhere.keras"
    elsewhere.write_bytes((tiny_build["dir"] / "float.keras").read_bytes())
    proc, d = _build(tmp_path, cache_dir, f'train.recipe="{elsewhere}"', "train.epochs=0", targets='["rpi5-litert"]')
    assert proc.returncode == 0, proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    # epochs = 0: the file's model is used as is, so its float accuracy is the original build's
    assert m["metrics"]["float"]["accuracy"] == tiny_build["manifest"]["metrics"]["float"]["accuracy"]
    assert m["metrics"]["float"]["accuracy"] - m["metrics"]["int8_host"]["accuracy"] <= 0.015
    assert m["metrics"]["targets"]["rpi5-litert"]["samples"] > 0


def test_a_keras_file_with_a_lambda_is_refused_by_safe_mode(tmp_path):
    code = (
        "import keras\n"
        "i = keras.Input((16, 16, 1)); x = keras.layers.Lambda(lambda t: t * 2.0)(i)\n"
        "x = keras.layers.GlobalAveragePooling2D()(x); o = keras.layers.Dense(10)(x)\n"
        f"keras.Model(i, o).save({str(tmp_path / 'lam.keras')!r})\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "KERAS_BACKEND": "jax"})
    out = tmp_path / "out"
    proc = edgebuild("build", "--config", str(TINY), "--set", f'train.recipe="{tmp_path}/lam.keras"',
                     "--set", f'build.out_dir="{out}"', "--set", "validate.targets=[]",
                     "--set", f'data.calibration_file="{tmp_path}/c.json"')
    assert proc.returncode == 3 and "Lambda layer" in proc.stderr and "safe_mode" in proc.stderr, proc.stderr
    assert not (out / "tiny" / "float.keras").exists()


def test_bad_recipe_strings_are_one_line_errors(tmp_path):
    proc = edgebuild("build", "--config", str(TINY), "--set", 'train.recipe="small_cnnn"')
    assert proc.returncode == 3 and "Did you mean 'small_cnn'?" in proc.stderr
    proc = edgebuild("build", "--config", str(TINY), "--set", 'train.recipe="no_such_module:build"',
                     "--set", f'build.out_dir="{tmp_path}"', "--set", "validate.targets=[]",
                     "--set", f'data.calibration_file="{tmp_path}/c.json"')
    assert proc.returncode == 3 and "cannot be imported" in proc.stderr, proc.stderr


def test_a_model_whose_int8_conversion_needs_flex_ops_is_refused(tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, f'train.recipe="{BAD}:needs_flex"', "train.epochs=1", "qat.epochs=1")
    assert proc.returncode == 3, proc.stderr
    assert "int8 conversion needs every op to be a TFLite builtin int8 op" in proc.stderr, proc.stderr
    assert "Erfinv" in proc.stderr and "Traceback" not in proc.stderr
    assert not (d / "model_int8.tflite").exists() and not (d / "manifest.json").exists()


def test_a_model_that_fails_to_trace_under_jax_gets_a_readable_error(tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, f'train.recipe="{BAD}:python_control_flow"', "train.epochs=1")
    assert proc.returncode == 4, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) <= 2, err
    assert "likely cause: Python control flow" in err and "BranchOnValue.call()" in err, err
    assert not (d / "float.keras").exists()
