"""The SSH executor's rules, in process: board names, the ssh command line, the board agent's cache and
the latency figures (the real sshd is tests/test_boards.py's)."""

import io
import json
import shlex
import subprocess
import sys

import pytest

from pipeline.device import board_agent, fanout
from pipeline.device.executors import ssh


@pytest.mark.parametrize("name", ["rpi5-lab-1", "pi@rpi5-lab-1", "pi@192.168.1.20", "board_2.local"])
def test_ssh_host_names_and_aliases_are_accepted(name):
    assert ssh.check_board(name) == name


@pytest.mark.parametrize("name", ["-oProxyCommand=touch x", "a;b", "$(id)", "a b", "", "pi@", "@host", "a/b", "`id`"])
def test_anything_ssh_could_read_as_an_option_or_a_shell_word_is_refused(name):
    with pytest.raises(ValueError, match="a board is an ssh host name"):
        ssh.check_board(name)


def test_the_ssh_command_is_batch_mode_with_host_keys_checked_and_quoted_arguments(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: seen.setdefault("cmd", cmd))
    ssh.ssh("pi@lab", "", tmp_path, ["python3", "-c", "print('a b')", "x; rm -rf /", "$(id)"])
    cmd = seen["cmd"]
    assert cmd[0] == "ssh" and "BatchMode=yes" in cmd and not any("StrictHostKeyChecking" in c for c in cmd)
    assert cmd[-3:-1] == ["--", "pi@lab"], "the host comes after --: never an option"
    assert shlex.split(cmd[-1]) == ["python3", "-c", "print('a b')", "x; rm -rf /", "$(id)"]  # each one word


def _agent(monkeypatch, tmp_path, argv, stdin=b""):
    monkeypatch.setattr(board_agent, "CACHE", str(tmp_path / "cache"))
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, write_through=True))
    code = 0
    try:
        board_agent.main(argv)
    except SystemExit as exc:
        code = exc.code
    sys.stdout.flush()
    return code, out.getvalue()


def test_the_board_keeps_blobs_by_content_and_refuses_a_damaged_one(monkeypatch, tmp_path):
    import hashlib

    data = b"model bytes"
    sha = hashlib.sha256(data).hexdigest()
    code, out = _agent(monkeypatch, tmp_path, ["missing", sha])
    assert code == 0 and json.loads(out) == [sha]
    code, _ = _agent(monkeypatch, tmp_path, ["put", sha], len(data).to_bytes(8, "big") + data)
    assert code == 0 and (tmp_path / "cache/blobs" / sha).read_bytes() == data
    assert json.loads(_agent(monkeypatch, tmp_path, ["missing", sha])[1]) == []
    wrong = hashlib.sha256(b"other").hexdigest()
    code, _ = _agent(monkeypatch, tmp_path, ["put", wrong], len(data).to_bytes(8, "big") + data)
    assert code == 2 and not (tmp_path / "cache/blobs" / wrong).exists() and not list((tmp_path / "cache/blobs").glob("*.tmp"))


@pytest.mark.parametrize("argv, said", [
    (["missing", "../../etc/passwd"], "expected 64 hex digits"), (["get", "../x"], "expected 16 hex digits"),
    (["run", "-", "a" * 64, "../x"], "expected 16 hex digits"),
    (["run", "-", "a" * 64, "0123456789abcdef", "%../escape"], "an output is a plain file name"),
    (["run", "-", "a" * 64, "0123456789abcdef", "@../escape"], "expected 64 hex digits"),
    (["run", "../../x", "a" * 64, "0123456789abcdef"], "expected 12 hex digits"),
    (["install", "a" * 12, "../x"], "expected 64 hex digits")])
def test_the_board_agent_writes_nowhere_outside_its_cache(monkeypatch, tmp_path, capsys, argv, said):
    code, _ = _agent(monkeypatch, tmp_path, argv)
    assert code == 2 and said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_latency_is_per_image_after_warm_up_and_says_where_it_was_measured():
    runs = [[50.0, 9.0, 9.0, 1.0, 2.0, 3.0], [40.0, 9.0, 9.0, 4.0]]
    got = fanout.latency(runs, batch=1, threads=2, on_device=True)
    assert got["count"] == 4 and got["p50_ms"] == 2.5 and got["p99_ms"] <= 4.0 and got["measured_on"] == "device"
    assert fanout.latency(runs, 1, 2, on_device=False)["measured_on"] == "emulation"
    assert fanout.latency([[1.0, 2.0]], 1, 1, True) is None  # nothing after warm-up: no figure


def test_an_emulated_board_is_told_by_its_kernel_not_its_python(monkeypatch, tmp_path, capsys):
    texts = {"/sys/devices/system/cpu/modalias": "cpu:type:x86,ven0002:feature:,0000"}
    monkeypatch.setattr(board_agent, "_text", lambda path: texts.get(path))
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    board_agent.identity()
    assert json.loads(capsys.readouterr().out)["emulated"] is True
    texts["/sys/devices/system/cpu/modalias"] = "cpu:type:aarch64:feature:,0000,0001"
    board_agent.identity()
    assert json.loads(capsys.readouterr().out)["emulated"] is False


def test_an_environment_archive_unpacks_under_its_site_only(monkeypatch, tmp_path):
    import hashlib
    import tarfile

    def archive(name, members):
        path = tmp_path / name
        with tarfile.open(path, "w") as tar:
            for member in members:
                info = tarfile.TarInfo(member)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
        data = path.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        assert _agent(monkeypatch, tmp_path, ["put", sha], len(data).to_bytes(8, "big") + data)[0] == 0
        return sha

    bad = archive("bad.tar", ["site/ok.py", "site/../../escape.py"])
    code, _ = _agent(monkeypatch, tmp_path, ["install", "a" * 12, bad])
    assert code == 2 and not (tmp_path / "escape.py").exists() and not (tmp_path / "cache/envs/" / ("a" * 12)).exists()
    good = archive("good.tar", ["site/pkg/__init__.py"])
    code, out = _agent(monkeypatch, tmp_path, ["install", "b" * 12, good])
    assert code == 0 and json.loads(out)["new"] is True
    assert (tmp_path / "cache/envs" / ("b" * 12) / "site/pkg/__init__.py").read_bytes() == b"ok"
    assert not [p for p in (tmp_path / "cache/envs").iterdir() if p.name.endswith(".tmp")]
