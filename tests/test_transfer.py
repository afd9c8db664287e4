"""Transfer learning (local pretrained weights, freeze and LoRA) and data-parallel training over two
CPU devices (keras.applications backbones: test_applications.py)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import SIGNS, TINY, edgebuild


def _build(out, cache_dir, *sets, env=None, until=None):
    args = ["--quiet", "build", "--config", str(TINY), "--set", f'build.out_dir="{out}"',
            "--set", f'data.calibration_file="{out}/calib.json"']
    if until:
        args += ["--until", until]
    for s in sets:
        args += ["--set", s]
    proc = edgebuild(*args, env={"EDGEBUILD_CACHE": str(cache_dir), **(env or {})})
    return proc, out / "tiny"


@pytest.fixture(scope="module")
def backbone_weights(tiny_build, tmp_path_factory):
    """The tiny digits model of the session build, saved as a .weights.h5 file: the pretrained
    backbone of another task."""
    path = tmp_path_factory.mktemp("pretrained") / "digits_backbone.weights.h5"
    code = ("import keras, sys; m = keras.models.load_model(sys.argv[1]); m.save_weights(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tiny_build["dir"] / "float.keras"), str(path)], check=True,
                   env={**os.environ, "KERAS_BACKEND": "jax"}, capture_output=True)
    return path


@pytest.mark.parametrize("mode", ["freeze", "lora"])
def test_transfer_digits_backbone_to_sign_language(mode, backbone_weights, tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp(f"transfer-{mode}")
    extra = ["train.unfreeze_top=2"] if mode == "freeze" else ["train.lora_rank=2"]
    # 300 photos, 60 in the test set (one sample is 1.7 pp): the gate here checks the wiring, not fine accuracy
    proc, d = _build(out, cache_dir, f'data.source="{SIGNS}"', "data.calibration_samples=100",
                     f'train.weights="{backbone_weights}"', f'train.finetune="{mode}"', "train.learning_rate=0.01",
                     "train.epochs=40", "train.batch_size=16", 'validate.targets=["rpi5-litert"]',
                     "gate.min_int8_accuracy=0.3", "gate.max_int8_drop=0.1", "gate.max_class_drop=0.5",
                     "gate.max_flip_rate=0.25", *extra)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((d / "manifest.json").read_text())
    train, met = m["train"], m["metrics"]
    assert train["finetune"] == mode and train["pretrained"]["sha256"] and train["pretrained"]["layers_loaded"] >= 3
    assert 0 < train["trainable_fraction"] < 1
    assert met["float"]["accuracy"] > 0.3, "transfer learned nothing"
    assert met["float"]["accuracy"] - met["int8_host"]["accuracy"] <= 0.1
    assert met["targets"]["rpi5-litert"]["top1_agreement"] >= 0.99
    assert "trainable parameters:" in (d / "logs" / "train.log").read_text()
    if mode == "lora":
        assert train["lora_merge"]["max_abs_output_diff"] <= 1e-5
        assert train["trainable_fraction"] < 0.5
        assert "lora" not in json.dumps(json.loads((d / "records" / "export.json").read_text())["int8"]["ops"]).lower()


def test_a_mismatched_weights_file_names_the_expected_layers(backbone_weights, tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, f'train.weights="{backbone_weights}"', "train.width=4",
                     "validate.targets=[]")
    assert proc.returncode == 3, proc.stderr
    assert "must hold every backbone layer" in proc.stderr and "conv0" in proc.stderr
    assert not (d / "float.keras").exists()


def test_data_parallel_over_two_cpu_devices_matches_one_device(tiny_build, tmp_path, cache_dir):
    proc, d = _build(tmp_path, cache_dir, "train.data_parallel=true", "validate.targets=[]",
                     env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, until="train")
    assert proc.returncode == 0, proc.stderr
    train = json.loads((d / "records" / "train.json").read_text())
    devices = train["devices"]
    assert (devices["count"], devices["platform"], devices["data_parallel"]) == (2, "cpu", True)
    assert devices["dropped_samples"] <= 2
    one = json.loads((tiny_build["dir"] / "records" / "train.json").read_text())["kept_val_accuracy"]
    assert abs(train["kept_val_accuracy"] - one) <= 0.02, (train["kept_val_accuracy"], one)
