"""Training in two JAX processes on localhost (jax.distributed with a local coordinator, CPU
collectives over gloo) under keras.distribution.DataParallel: each process feeds its own half of every
batch; both end with the same model, as good as the one-process build's."""

import json
import os
import socket
import subprocess
import sys

from conftest import REPO, TINY, edgebuild, own_cache

# Batches of 128 (the tiny config's are 64): half as many steps, each a gloo all-reduce between the processes
# (most of the time of a run), and the one-process build it is compared with trains at the same size.
BATCH = "train.batch_size=128"


def test_two_processes_train_one_model_as_good_as_one_process(tiny_build, tmp_path, cache_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calib = tiny_build["out"] / "calib.json"
    procs = []
    for i in range(2):
        env = {**os.environ, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i), "EDGEBUILD_CACHE": str(own_cache(tmp_path / f"cache{i}"))}
        env.pop("KERAS_BACKEND", None)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pipeline", "build", "--config", str(TINY), "--until", "train",
             "--set", f'build.out_dir="{tmp_path / f"p{i}"}"', "--set", f'data.calibration_file="{calib}"',
             "--set", "train.data_parallel=true", "--set", BATCH],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = edgebuild("--quiet", "build", "--config", str(TINY), "--until", "train", "--set", BATCH,
                       "--set", f'build.out_dir="{tmp_path / "single"}"', "--set", f'data.calibration_file="{calib}"',
                       env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert single.returncode == 0, single.stderr[-3000:]
    model = [(tmp_path / f"p{i}" / "tiny" / "float.keras").read_bytes() for i in range(2)]
    assert model[0] == model[1], "both processes must hold the same (replicated) weights"
    records = [json.loads((tmp_path / f"p{i}" / "tiny" / "records" / "train.json").read_text()) for i in range(2)]
    for i, record in enumerate(records):
        assert record["devices"] == {"count": 2, "platform": "cpu", "data_parallel": True, "processes": 2,
                                     "process_index": i, "dropped_samples": record["devices"]["dropped_samples"]}
        assert record["key_parts"]["external"]["jax_processes"] == "2"  # never a cache hit for one process
    one, two = _test_accuracy(tmp_path / "single" / "tiny", tmp_path / "p0" / "tiny")
    assert two >= 0.9 and abs(two - one) <= 0.03, (one, two)  # 359 test images: 0.03 is 11 of them


def _test_accuracy(*build_dirs):
    """Each float model's accuracy on its build's test split, measured in a fresh Keras process."""
    code = f"""
import keras, numpy as np
from pipeline.data.splits import load_dataset, split_arrays
from pipeline.engine.config import load
for d in {[str(d) for d in build_dirs]!r}:
    model = keras.saving.load_model(d + "/float.keras")
    x, y = split_arrays(load_dataset(d + "/dataset.npz"), "test", load({str(TINY)!r}, []).preprocess)
    print(float((model.predict(x, verbose=0).argmax(1) == y).mean()))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [float(line) for line in proc.stdout.strip().splitlines()[-len(build_dirs):]]
