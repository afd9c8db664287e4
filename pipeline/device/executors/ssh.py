"""SSH: a real board on the shelf, reached with the system OpenSSH client, so the user's own keys, agent,
jump hosts, `~/.ssh/config` and `known_hosts` work as they do for `ssh`.

Every ssh command runs with BatchMode (no password prompt) and the user's host-key checking (a host whose
key is unknown or changed is refused, never accepted), reuses one connection per board (ControlMaster,
its socket in edgebuild's cache), and is built from quoted arguments (`shlex.quote`), never from a config
string pasted into a shell line. The board side is `board_agent.py`, sent with each command as
`python3 -c`: the validator, the model and the inputs go into the board's content-addressed cache
(sent once, reused while their sha256 matches), the outputs come back, and nothing is written on the
board outside that cache.

One validator process of a target is this module run as a program on the build host
(`python ssh.py BOARD CONFIG CONTROL PYTHON -- ARGS`): it sends what the board lacks, runs the validator
there and writes its outputs where the local validator would have; its stdout, stderr and exit status are
the validator's, so the fan-out treats a board like any other executor. A lost connection exits 255
(ssh's own status), which the fan-out tells apart from a validator's failure."""

import hashlib
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

AGENT = Path(__file__).resolve().parent.parent / "board_agent.py"
VALIDATOR = Path(__file__).resolve().parent.parent / "ondevice.py"
LOST = 255  # ssh's exit status when the connection fails or drops
STATUS = "edgebuild-board-status "  # the board agent's last stderr line after a run: how the validator ended
# a board as `ssh` names it: a ~/.ssh/config alias or [user@]host; never anything ssh reads as an option
BOARD = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}@)?[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}$")
OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "ServerAliveInterval=5",
           "-o", "ServerAliveCountMax=3", "-o", "ControlMaster=auto", "-o", "ControlPersist=120")


def check_board(board):
    """`board`, checked to be a host name ssh resolves (raises ValueError with the rule otherwise)."""
    if not isinstance(board, str) or not BOARD.match(board):
        raise ValueError(f"a board is an ssh host name or alias ([user@]host, letters, digits, '.', '_', '-', "
                         f"':'); received {board!r:.80}")
    return board


def ssh_argv(board, config, control, remote):
    """The ssh command line that runs `remote` (a list of arguments, each quoted) on the board."""
    return ["ssh", *OPTIONS, "-o", f"ControlPath={Path(control) / '%C'}", *(["-F", str(config)] if config else []),
            "--", check_board(board), " ".join(shlex.quote(str(a)) for a in remote)]


def ssh(board, config, control, remote, **run):
    """Run `remote` (a list of arguments) on the board through ssh; returns the CompletedProcess."""
    return subprocess.run(ssh_argv(board, config, control, remote), **run)


def agent(python, *args):
    return [python, "-B", "-c", AGENT.read_text(), *args]


def identity(board, config, control, python="python3", env="-", timeout=120):
    """What the board is (board_agent's `identity`; its runtimes those of environment `env` when the board has
    it), or raises RuntimeError with ssh's reason."""
    proc = ssh(board, config, control, agent(python, "identity", env), capture_output=True, text=True, timeout=timeout)
    if proc.returncode == 127:  # the shell on the board found no such program
        raise RuntimeError(f"board {board} was reached, but its Python {python!r} is not there "
                           f"({_reason(proc.stderr, proc.returncode)}). Pass the board's Python 3 (--python, "
                           "--board-python, validate.board_python)")
    if proc.returncode != 0:
        how = f"ssh -F {config} {board}" if config else f"ssh {board}"
        raise RuntimeError(f"board {board} cannot be reached over ssh without a prompt: {_reason(proc.stderr, proc.returncode)}"
                           f" Check that `{how} true` logs in with a key or an agent, and that the board's host key is "
                           "in known_hosts: edgebuild never accepts an unknown or changed host key")
    return _last_json(proc.stdout, board, python)


def _last_json(stdout, board, python):
    """The JSON line the board agent printed last; RuntimeError when the board's Python printed something else."""
    lines = (stdout or "").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"board {board}'s Python {python!r} did not answer as edgebuild's agent does (it printed "
                           f"{(lines[-1] if lines else 'nothing')[:120]!r}). Pass a Python 3 (--python, --board-python, "
                           "validate.board_python)") from None


def ask(board, config, python="python3", env="-", origin="board"):
    """`identity` of a board named by the user (`origin`: where the name came from), every failure one
    InputError line: a name ssh could read as an option, a board it cannot reach, a missing Python, no answer."""
    from pipeline.engine.errors import InputError

    try:
        check_board(board)
        return identity(board, config, control_dir(), python, env)
    except ValueError as exc:
        raise InputError(f"{origin}: {exc}. Name the board as ssh does (a ~/.ssh/config alias).") from None
    except RuntimeError as exc:
        raise InputError(f"{exc}.") from None
    except subprocess.TimeoutExpired:
        raise InputError(f"board {board} did not answer within 120 s over ssh. Check that `ssh {board} true` works "
                         "(edgebuild never answers a prompt).") from None


def mismatch(board, identity, target, runtime=True):
    """Why the board cannot run `target` (its arch and Python version, and with `runtime` the pinned
    runtime's version), one line naming both sides and the fix; None when it can."""
    if identity.get("arch") != target.arch or not str(identity.get("python", "")).startswith(f"{target.python}."):
        return (f"board {board} runs Python {identity.get('python')} on {identity.get('arch')}; target {target.name} is "
                f"Python {target.python} on {target.arch}, which its runtime's wheels are built for. If the board has "
                "another Python, pass it (--python, --board-python, validate.board_python); else use the target file "
                "that matches the board")
    have = (identity.get("runtimes") or {}).get(target.runtime)
    if runtime and have != target.runtime_version:
        return (f"board {board} has {target.runtime} {have or '(not installed)'}; target {target.name} pins "
                f"{target.runtime} {target.runtime_version}. Install it there (edgebuild board setup {board} "
                f"{target.name}), or use the target file that matches the board")
    return None


def _reason(stderr, returncode):
    lines = [line for line in (stderr or "").strip().splitlines() if line.strip()]
    said = lines[-1].strip() if lines else f"exit status {returncode}"
    return said[:300].rstrip(".") + "."


def _sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def send(board, config, control, python, paths):
    """Put the files `paths` into the board's blob cache unless it has them; returns {path: sha256}."""
    shas = {p: _sha(p) for p in paths}
    proc = ssh(board, config, control, agent(python, "missing", *sorted(set(shas.values()))),
               capture_output=True, text=True)
    if proc.returncode != 0:
        return shas, proc
    lacking = _last_json(proc.stdout, board, python)
    if lacking:
        by_sha = {sha: p for p, sha in shas.items()}

        def stream():
            for sha in lacking:
                data = Path(by_sha[sha]).read_bytes()
                yield len(data).to_bytes(8, "big") + data

        proc = ssh(board, config, control, agent(python, "put", *lacking), input=b"".join(stream()),
                   capture_output=True)
    return shas, proc


def fetch(board, config, control, python, run_id, into):
    """The run's output files, written into the directory `into` (atomically each)."""
    proc = ssh(board, config, control, agent(python, "get", run_id), capture_output=True)
    if proc.returncode != 0:
        return proc
    data, at = proc.stdout, 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 2], "big")
        name = data[at + 2:at + 2 + n].decode()
        size = int.from_bytes(data[at + 2 + n:at + 10 + n], "big")
        body = data[at + 10 + n:at + 10 + n + size]
        at += 10 + n + size
        if "/" in name or name.startswith(".") or len(body) != size:
            raise RuntimeError(f"the board sent a damaged or unsafe output file ({name[:60]!r})")
        tmp = Path(into) / f".{name}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, Path(into) / name)
    return proc


def install(board, config, control, python, env, site, workdir):
    """Install a target's site-packages directory `site` on the board as environment `env` (a
    deterministic tar sent content-addressed, unpacked in the board's cache); returns what the board said."""
    import tarfile

    archive = Path(workdir) / "site.tar"

    def clean(info):
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(site).rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue
            tar.add(path, arcname=f"site/{path.relative_to(site)}", recursive=False, filter=clean)
    shas, proc = send(board, config, control, python, [str(archive)])
    if proc.returncode == 0:
        proc = ssh(board, config, control, agent(python, "install", env, shas[str(archive)]), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(_reason(proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes)
                                   else proc.stderr, proc.returncode))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def main(argv):
    """One validator process on the board: send, run, fetch. Exit status: the validator's, or 255 when
    the connection is lost (with ssh's reason on stderr)."""
    board, config, control, python, env = argv[:5]
    args = argv[6:] if argv[5] == "--" else argv[5:]
    model, inputs, out = args[0], args[1], Path(args[2])
    shas, proc = send(board, config, control, python, [str(VALIDATOR), model, inputs])
    if proc.returncode != 0:
        sys.stderr.write(f"board {board}: sending the model and inputs failed: "
                         f"{_reason(proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors='replace'), proc.returncode)}\n")
        return LOST if proc.returncode == LOST else 1
    run_id = secrets.token_hex(8)
    remote = agent(python, "run", env, shas[str(VALIDATOR)], run_id, f"@{shas[model]}", f"@{shas[inputs]}",
                   f"%{out.name}", *args[3:])
    returncode, stdout, stderr = _run_held(board, config, control, remote)
    ended = None
    for line in stderr.splitlines():
        if line.startswith(STATUS):
            ended = json.loads(line[len(STATUS):])
    sys.stdout.write(stdout)
    sys.stderr.write("".join(line + "\n" for line in stderr.splitlines() if not line.startswith(STATUS)))
    sys.stdout.flush()
    sys.stderr.flush()
    if ended is None:  # the agent never said how the validator ended: the connection was lost, or it failed
        return LOST if returncode == LOST else returncode or 1
    got = fetch(board, config, control, python, run_id, out.parent)
    if got.returncode != 0:
        sys.stderr.write(f"board {board}: fetching the outputs failed: "
                         f"{_reason(got.stderr.decode(errors='replace'), got.returncode)}\n")
        return LOST if got.returncode == LOST else 1
    if "signal" in ended:  # the runtime died of a signal on the board: so does this process, as a local run would
        import signal

        signal.signal(ended["signal"], signal.SIG_DFL)
        os.kill(os.getpid(), ended["signal"])
    return ended["exit"]


def _run_held(board, config, control, remote):
    """Run `remote` with ssh's stdin held open until it ends (the board agent stops the validator when it
    closes), and stop ssh when this process is told to stop: a stopped part leaves nothing running on
    the board. Returns (exit status, stdout, stderr)."""
    import signal
    import threading

    proc = subprocess.Popen(ssh_argv(board, config, control, remote), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)

    def stop(signum, frame):
        proc.kill()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    streams = {}
    readers = [threading.Thread(target=lambda name=name: streams.__setitem__(name, getattr(proc, name).read()))
               for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    returncode = proc.wait()
    proc.stdin.close()
    return returncode, streams["stdout"].decode(errors="replace"), streams["stderr"].decode(errors="replace")



def control_dir():
    """Where the ControlMaster sockets live: short (a socket path has at most 107 bytes) and the user's own."""
    import tempfile

    import stat

    path = Path(tempfile.gettempdir() if len(tempfile.gettempdir()) < 20 else "/tmp") / f"edgebuild-ssh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()  # a directory someone else made or can write could hold a planted master socket
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise RuntimeError(f"{path} must be a directory of yours that only you can use (ssh's connection sockets "
                           "live there); remove it and run again")
    return path


def executor(target, board, config="", python="python3", identity=None, env="-"):
    """The executor of `target` on the board `board` (an ssh host); `identity`: what the board said it is
    (board_agent's identity), recorded with every result; `env`: the target's environment key, used when
    the board has it installed (edgebuild board setup). Its timings are the device's own unless the board
    is itself emulated (identity["emulated"])."""
    from pipeline.device.executors.base import Executor

    control = control_dir()

    def command(args):
        passed = {k: v for k, v in os.environ.items() if k in ("HOME", "USER", "LOGNAME", "SSH_AUTH_SOCK", "PATH")}
        return [sys.executable, str(Path(__file__).resolve()), board, str(config or ""), str(control), python,
                env, "--", *map(str, args)], {**passed, "PYTHONDONTWRITEBYTECODE": "1"}

    emulated = bool((identity or {}).get("emulated"))
    return Executor("ssh", command, lambda: {"kind": "ssh", "board": board, "identity": identity},
                    device_latency=not emulated)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
