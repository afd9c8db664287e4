"""The stage process's start: where JAX's persistent compilation cache lives and what it keeps, and how
Keras is imported."""

import os
import subprocess
import sys

import pytest

from pipeline.engine import runner


def test_the_compilation_cache_goes_under_the_cache_and_keeps_every_computation(tmp_path):
    env = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2"}
    path = runner.use_compile_cache(env, tmp_path)
    assert path == env["JAX_COMPILATION_CACHE_DIR"]
    assert path.startswith(str(tmp_path / "jax") + "/") and len(path.rsplit("/", 1)[1]) == 16
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] == "0"
    assert env["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] == "none"  # no cache path inside the entries' keys
    # other XLA flags (another ISA cap) compile other code: another directory
    assert runner.use_compile_cache({"XLA_FLAGS": "--xla_cpu_max_isa=AVX512"}, tmp_path) != path


def test_a_users_own_compilation_cache_and_settings_are_kept(tmp_path):
    env = {"JAX_COMPILATION_CACHE_DIR": "/srv/jax", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}
    assert runner.use_compile_cache(env, tmp_path) == "/srv/jax"
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "2"
    assert env["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] == "none"
    empty = {}
    assert runner.use_compile_cache(empty, "") is None and empty == {}


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_keras_is_imported_without_its_unused_integrations_which_stay_importable(backend):
    code = """
import sys
from pipeline.engine import runner
keras = runner.import_keras()
print(sorted(n for n in runner.KERAS_SKIPS + runner.KERAS_SKIPS_BUT_JAX if n in sys.modules))
x = keras.ops.convert_to_numpy(keras.layers.Dense(2, kernel_initializer="ones")(keras.ops.ones((1, 3))))
print(x.tolist())
import sklearn.datasets, matplotlib.pyplot, jax.numpy  # a user's recipe module may use any
print(len(sklearn.datasets.load_digits().target), float(jax.numpy.ones(2).sum()))
"""
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = "['jax']" if backend == "jax" else "[]"
    assert proc.stdout.split("\n")[:3] == [imported, "[[3.0, 3.0]]", "1797 2.0"], proc.stdout
