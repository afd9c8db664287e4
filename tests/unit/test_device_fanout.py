"""The fan-out over validator processes (`pipeline.device.fanout`) on the build host's own target: real
validator processes running ai-edge-litert on the shipped self-test model."""

import subprocess

import numpy as np
import pytest

from pipeline.device import environment, fanout, onnx_info, targets


@pytest.fixture()
def host(tmp_path):
    target = targets.load_target("host")
    root = environment.setup(target, tmp_path / "cache", log=lambda _: None)
    model = targets.selftest_model(target)
    shape = onnx_info.describe(model)["inputs"][0]["shape"]
    return target, root, model, np.zeros([6, *shape[1:]], np.int8)


class Recorded(subprocess.Popen):
    """subprocess.Popen that remembers every process it started (the processes themselves are real)."""
    started = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Recorded.started.append(self)


def test_the_executors_run_the_validator_and_every_shard_s_outputs_come_back(host, tmp_path):
    target, root, model, x = host
    outputs, info = fanout.run_sharded(target, root, model, x, tmp_path / "work", shards=3)
    assert outputs.shape[0] == 6 and info["shards"] == 3 and info["runtime"] == target.runtime
    assert fanout.executor_for(target, root).describe() == {"kind": "host"}
    assert fanout.executor_for(target, root).device_latency is False


@pytest.mark.parametrize("failure", ["while starting", "while running"])
def test_every_child_is_stopped_and_reaped_on_any_failure(host, tmp_path, monkeypatch, failure):
    """A failure after the first validator started (the disk filling while the second shard's inputs are
    written, or a validator's output unreadable) leaves no validator running: each is terminated and
    waited for (regression: only a refused model used to stop the others)."""
    target, root, model, x = host
    Recorded.started = []
    monkeypatch.setattr(fanout.subprocess, "Popen", Recorded)
    if failure == "while starting":
        saves = []
        real_save = np.save

        def save(path, array, *a, **k):
            saves.append(path)
            if len(saves) == 2:
                raise OSError(28, "No space left on device")
            return real_save(path, array, *a, **k)

        monkeypatch.setattr(np, "save", save)
        with pytest.raises(OSError):
            fanout.run_sharded(target, root, model, x, tmp_path / "work", shards=3)
        assert len(Recorded.started) == 1
    else:
        def unreadable(text):
            raise ValueError("not JSON")

        monkeypatch.setattr(fanout.json, "loads", unreadable)
        with pytest.raises(ValueError):
            fanout.run_sharded(target, root, model, x, tmp_path / "work", shards=3)
        assert len(Recorded.started) == 3
    assert all(p.returncode is not None for p in Recorded.started), "a validator was left running"


def test_every_executor_describes_itself_without_an_environment():
    """What the manifest records about an executor needs no set-up environment (the target stage asks
    before and apart from running)."""
    for name in ("rpi4-bookworm-tflite", "rpi5-onnxruntime", "cortex-m-tflm", "ethos-u55-128", "host"):
        target = targets.load_target(name)
        description = fanout.executor_for(target, None).describe()
        assert description["kind"] and (description != {"kind": "qemu-user", "cpu": target.cpu} or target.emulated)
    rpi4 = targets.load_target("rpi4-bookworm-tflite")
    assert fanout.executor_for(rpi4, None).describe() == {"kind": "qemu-user", "cpu": rpi4.cpu}
    assert fanout.executor_for(rpi4, None, twin=True).name == "twin"
