"""engine.fsutil: atomic writes leave the old file or the new one, and .npz bytes depend on data only."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.engine.fsutil import atomic_save_npz, atomic_write_bytes, atomic_write_text, file_lock, sha256_file


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, 123)  # fails while writing the temporary file
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_the_same_arrays_give_the_same_npz_bytes_at_any_time(tmp_path):
    arrays = {"x": np.arange(12, dtype=np.uint8).reshape(3, 4), "names": np.asarray(["a", "b"])}
    atomic_save_npz(tmp_path / "one.npz", **arrays)
    time.sleep(2.1)  # zip timestamps have a 2-second resolution
    atomic_save_npz(tmp_path / "two.npz", **arrays)
    assert sha256_file(tmp_path / "one.npz") == sha256_file(tmp_path / "two.npz")
    with np.load(tmp_path / "two.npz") as f:
        assert (f["x"] == arrays["x"]).all() and f["names"].tolist() == ["a", "b"]
    atomic_save_npz(tmp_path / "three.npz", **{**arrays, "x": arrays["x"] + 1})
    assert sha256_file(tmp_path / "three.npz") != sha256_file(tmp_path / "one.npz")


def test_atomic_create_never_replaces_a_file_that_is_there(tmp_path):
    from pipeline.engine.fsutil import atomic_create

    (tmp_path / "a").write_text("first")
    (tmp_path / "b").write_text("second")
    assert atomic_create(tmp_path / "a", tmp_path / "pinned.json") is True
    assert atomic_create(tmp_path / "b", tmp_path / "pinned.json") is False
    assert (tmp_path / "pinned.json").read_text() == "first"
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "pinned.json"]


def test_a_file_lock_waits_for_the_process_that_holds_it(tmp_path):
    lock, released = tmp_path / "env.lock", tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, pathlib, sys, time; f = open(sys.argv[1], 'a'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(1.0); "
         "pathlib.Path(sys.argv[2]).touch(); fcntl.flock(f, fcntl.LOCK_UN); time.sleep(1.0)", str(lock), str(released)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waited = []
    with file_lock(lock, lambda holder: waited.append(released.exists())):
        got_it_after_release = released.exists()
    holder.wait()
    assert waited == [False], "on_wait is called once, while the other process holds the lock"
    assert got_it_after_release, "the lock was taken before the holder let it go"
    with file_lock(lock, lambda holder: waited.append("again")):
        pass
    assert waited == [False], "a free lock is taken without waiting"
