"""Boards over SSH, against a real sshd on 127.0.0.1 (tests/sshboard.py) whose board runs the shipped
rpi5-litert environment's aarch64 Python and LiteRT under qemu user-mode: what is proved is the SSH path
(OpenSSH client, host-key checking, content-addressed upload, the validator run on the board, outputs
back, a pool that survives a lost board), not a real board's OS, libraries or latency."""

import json
import shutil
import threading
import time

import numpy as np
import pytest

import sshboard
from conftest import edgebuild, validate

TARGET = "rpi5-litert"


@pytest.fixture(scope="module")
def env_root(tiny_build, cache_dir):
    """The rpi5-litert environment the tiny build set up (its aarch64 root filesystem and LiteRT)."""
    from pipeline.device import environment, targets

    target = targets.load_target(TARGET)
    return environment.setup(target, cache_dir, log=lambda msg: None), target.cpu


def _copy(tiny_build, tmp_path):
    build = tmp_path / "build" / "tiny"
    shutil.copytree(tiny_build["dir"], build, ignore=shutil.ignore_patterns(".lock"))
    return build


def _validate(build, cache_dir, *boards, ssh_config, python):
    args = ["validate", str(build), "--target", TARGET, "--ssh-config", str(ssh_config), "--board-python", str(python)]
    for board in boards:
        args += ["--board", board]
    return edgebuild(*args, env={"EDGEBUILD_CACHE": str(cache_dir)})


def _outputs(build):
    with np.load(build / f"target-{TARGET}.npz") as f:
        return f["ids"], f["outputs"]


def test_a_bare_board_set_up_from_the_host_validates_a_build_as_its_emulation_does(tiny_build, env_root, cache_dir,
                                                                                   tmp_path):
    """A board with Python only: refused, set up from the host's pinned environment over SSH (no internet, no
    pip on the board), then the build's int8 model validated on it."""
    build = _copy(tiny_build, tmp_path)
    python = tmp_path / "board/bin/python3"
    with sshboard.board(tmp_path / "board", *env_root, runtime=False) as (alias, ssh_config, _, board_cache):
        check = ["board", "check", alias, "--ssh-config", str(ssh_config), "--python", str(python), "--target", TARGET]
        proc = edgebuild(*check)
        assert proc.returncode == 3 and "(not installed)" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        setup = ["board", "setup", alias, TARGET, "--ssh-config", str(ssh_config), "--python", str(python)]
        proc = edgebuild(*setup, env={"EDGEBUILD_CACHE": str(cache_dir)})
        assert proc.returncode == 0 and proc.stdout.strip().endswith("installed"), proc.stderr[-2000:]
        assert edgebuild(*setup, env={"EDGEBUILD_CACHE": str(cache_dir)}).stdout.strip().endswith("already there")
        check = edgebuild(*check)
        proc = _validate(build, cache_dir, alias, ssh_config=ssh_config, python=python)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # what reached the board: its cache only, and no run left behind
        assert sorted(p.name for p in board_cache.iterdir()) == ["blobs", "board.lock", "envs", "runs"]
        assert not list((board_cache / "runs").iterdir())
        proc = edgebuild("board", "check", alias, "--ssh-config", str(ssh_config), "--python", "/nope/python3")
        assert proc.returncode == 3 and "was reached, but its Python '/nope/python3' is not there" in proc.stderr
    on_board = (build / "manifest.json").read_text(), (build / "report.html").read_text()
    board_outputs = _outputs(build)
    # a board run is never a cache hit: with the board gone, validating on it again fails, in one line
    again = _validate(build, cache_dir, alias, ssh_config=ssh_config, python=python)
    assert again.returncode == 3 and "cannot be reached over ssh" in again.stderr.strip().splitlines()[-1], again.stderr
    emulated_again = edgebuild("validate", str(build), "--target", TARGET, env={"EDGEBUILD_CACHE": str(cache_dir)})
    assert emulated_again.returncode == 0, emulated_again.stderr[-2000:]  # boards are per run: emulated again
    assert json.loads((build / "manifest.json").read_text())["metrics"]["targets"][TARGET]["executor"]["kind"] == "qemu-user"
    assert check.returncode == 0 and "aarch64" in check.stdout and "ai-edge-litert 2.3.0" in check.stdout, check.stdout
    assert "emulated" in check.stdout and f"matches target {TARGET}" in check.stdout
    emulated_ids, emulated = _outputs(tiny_build["dir"])
    ids, outputs = board_outputs
    assert np.array_equal(ids, emulated_ids) and outputs.dtype == emulated.dtype
    assert outputs.tobytes() == emulated.tobytes(), "the board's outputs must be the emulated target's, byte for byte"
    written = "".join(on_board)
    assert "latency p50" in written and "an emulated board" in written  # the report says so too
    assert "PRIVATE KEY" not in written and "user_key" not in written, "no credential is recorded"
    record = json.loads(on_board[0])["metrics"]["targets"][TARGET]
    board = record["executor"]["boards"][0]
    assert record["executor"]["kind"] == "ssh" and board["board"] == alias
    identity = board["identity"]
    assert identity["arch"] == "aarch64" and identity["runtimes"]["ai-edge-litert"] == "2.3.0" and identity["emulated"]
    assert identity["environment"], "the runtime came from the environment board setup installed"
    latency = record["latency"]
    assert latency["measured_on"] == "emulation", "an emulated board's timings are never a device's latency"
    assert latency["count"] == record["samples"] - latency["warmup_invokes"] and 0 < latency["p50_ms"] <= latency["p99_ms"]
    assert record["bitexact_fraction"] == 1.0 and record["top1_agreement"] == 1.0
    # the emulated target's own figures stay the throughput of the emulation
    assert tiny_build["manifest"]["metrics"]["targets"][TARGET]["latency"]["measured_on"] == "emulation"


def test_a_pool_of_two_boards_finishes_when_one_is_lost_mid_run(tiny_build, env_root, cache_dir, tmp_path):
    build = _copy(tiny_build, tmp_path)
    with sshboard.board(tmp_path / "b1", *env_root, alias="lab1") as (one, config1, _, _), \
            sshboard.board(tmp_path / "b2", *env_root, alias="lab2", client_key=tmp_path / "b1/user_key") \
            as (two, config2, server2, cache2):
        ssh_config = tmp_path / "ssh_config"
        ssh_config.write_text(config1.read_text() + config2.read_text())
        killed = []

        def kill_when_running():  # the board drops once its validator run has started
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not killed:
                if (cache2 / "runs").is_dir() and any((cache2 / "runs").iterdir()):
                    sshboard.stop(server2)
                    killed.append(True)
                time.sleep(0.02)

        watcher = threading.Thread(target=kill_when_running, daemon=True)
        watcher.start()
        proc = _validate(build, cache_dir, one, two, ssh_config=ssh_config, python=tmp_path / "b1/bin/python3")
        watcher.join(timeout=5)
    assert killed, "board lab2 was never seen running"
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((build / "manifest.json").read_text())["metrics"]["targets"][TARGET]
    assert [b["board"] for b in record["executor"]["boards"]] == [one, two]
    (rerun,) = record["reruns"]
    assert rerun["part"] == 2 and rerun["lost_on"] == two and rerun["ran_on"] == one and rerun["samples"] > 0
    emulated_ids, emulated = _outputs(tiny_build["dir"])
    ids, outputs = _outputs(build)
    assert np.array_equal(ids, emulated_ids) and outputs.tobytes() == emulated.tobytes(), "nothing lost"


def test_an_unknown_host_key_a_wrong_runtime_and_hostile_names_are_refused(tiny_build, env_root, cache_dir, tmp_path,
                                                                           outside):
    from pipeline.device import environment, targets

    build = _copy(tiny_build, tmp_path)
    python = tmp_path / "board/bin/python3"
    with sshboard.board(tmp_path / "board", *env_root) as (alias, ssh_config, _, board_cache):
        good = (tmp_path / "board/known_hosts").read_text()
        _, other = sshboard.keypair(tmp_path / "other_host_key")
        (tmp_path / "board/known_hosts").write_text(good.split(" ")[0] + " " + " ".join(other.read_text().split()[:2]) + "\n")
        proc = _validate(build, cache_dir, alias, ssh_config=ssh_config, python=python)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 3 and "Host key verification failed" in last and "known_hosts" in last, proc.stderr
        assert "Traceback" not in proc.stderr
        (tmp_path / "board/known_hosts").write_text(good)

        stranger, _ = sshboard.keypair(tmp_path / "stranger_key")  # a key the board does not authorize
        (tmp_path / "stranger_config").write_text(ssh_config.read_text().replace(str(tmp_path / "board/user_key"),
                                                                                   str(stranger)))
        proc = edgebuild("board", "check", alias, "--ssh-config", str(tmp_path / "stranger_config"), timeout=120)
        assert proc.returncode == 3 and "Permission denied" in proc.stderr, proc.stderr  # BatchMode: never a prompt

        pwned = tmp_path / "pwned"
        for hostile in ("-oProxyCommand=touch " + str(pwned), "board1;touch " + str(pwned), "$(touch " + str(pwned) + ")"):
            proc = edgebuild("board", "check", "--ssh-config", str(ssh_config), "--", hostile)
            assert proc.returncode == 3 and "a board is an ssh host name" in proc.stderr, proc.stderr
        proc = _validate(build, cache_dir, f"-oProxyCommand=touch {pwned}", ssh_config=ssh_config, python=python)
        assert proc.returncode == 3 and "validate.boards: a board is an ssh host name" in proc.stderr, proc.stderr[-2000:]
        proc = edgebuild("board", "check", alias, "--ssh-config", str(ssh_config), "--python", f"{python}; touch {pwned}")
        assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr  # one quoted word: no such program
        assert not pwned.exists(), "a config string reached a shell unquoted"
        assert not board_cache.exists() or not any(p.name.startswith("pwned") for p in board_cache.rglob("*"))

    rpi4 = targets.load_target("rpi4-bookworm-tflite")  # a board whose runtime is tflite-runtime, not LiteRT
    with sshboard.board(tmp_path / "rpi4", environment.setup(rpi4, cache_dir, log=lambda m: None), rpi4.cpu) \
            as (alias, ssh_config, _, _):
        proc = _validate(build, cache_dir, alias, ssh_config=ssh_config, python=tmp_path / "rpi4/bin/python3")
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert f"board {alias} has ai-edge-litert (not installed); target {TARGET} pins ai-edge-litert 2.3.0" in proc.stderr
        assert "Traceback" not in proc.stderr
        # the same board as what it is, an rpi4: its tflite-runtime 2.14 segfaults on this model (as emulated, see
        # test_validate_model.py): the target's failure (exit 1), never a lost board
        out, _ = outside
        proc = validate(out, cache_dir, "tokens_int8.tflite", "--out", str(tmp_path / "v"), "--set", "validate.targets=[]",
                        "--target", "rpi4-bookworm-tflite", "--board", alias, "--ssh-config", str(ssh_config),
                        "--set", f'validate.board_python="{tmp_path / "rpi4/bin/python3"}"', "--set", "gate.min_int8_accuracy=0")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    record = json.loads((tmp_path / "v" / "manifest.json").read_text())["metrics"]["targets"]["rpi4-bookworm-tflite"]
    assert record["refused"].startswith("the runtime crashed (SIGSEGV"), record["refused"]

