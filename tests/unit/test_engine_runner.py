"""The stage process's JAX settings: where the persistent compilation cache lives and what it keeps."""

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
