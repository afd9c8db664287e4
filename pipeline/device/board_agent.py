"""The board side of the SSH executor: sent with every ssh command as `python3 -c <this file> COMMAND ...`,
so a board needs nothing of edgebuild installed. Python's standard library only.

Everything it writes stays in its cache directory ($EDGEBUILD_BOARD_CACHE, or ~/.cache/edgebuild-board):
`blobs/<sha256>` (the validator, models and inputs, content-addressed: sent once, reused while their hash
matches), `runs/<id>/` (one validator run's outputs, removed when they are fetched) and `envs/<key>/site`
(a target's pinned runtime, installed by `edgebuild board setup`).

    missing SHA...          which of these blobs the board lacks (a JSON list on stdout)
    put SHA...              store blobs read from stdin (each: 8-byte big-endian length, then the bytes);
                            each is checked against its sha256 before it is kept
    run ENV VALIDATOR RUN ARG...  run the validator blob with ARGs (@SHA: a blob's path, %NAME: a file of
                            the run's directory), with the environment ENV's packages first on the path
                            when it is installed ('-': the board's own), holding the board's lock (one run
                            at a time on a board), in a forked child (a board may run no other program
                            than this Python) that is killed when the connection closes; its stdout and
                            stderr are the validator's, and the last stderr line says how it ended
                            (STATUS {"exit": N} or {"signal": N}): a runtime that crashes is told from a
                            lost connection
    get RUN                 the run's files on stdout (each: name length, name, size, bytes), then removed
    identity ENV            what the board is (JSON): arch, OS, Python, CPU, governor, memory, runtimes
                            (those of ENV when it is installed)
    install ENV SHA         unpack the blob SHA (a tar of a target's site-packages) as environment ENV
"""

import hashlib
import json
import os
import sys

CACHE = os.environ.get("EDGEBUILD_BOARD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgebuild-board")
HEX = set("0123456789abcdef")
STATUS = "edgebuild-board-status "
sys.dont_write_bytecode = True  # nothing written outside the cache, not even __pycache__


def _fail(msg):
    sys.stderr.write(f"edgebuild board agent: {msg}\n")
    sys.exit(2)


def _hexname(value, length):
    if len(value) != length or not set(value) <= HEX:
        _fail(f"expected {length} hex digits, received {value[:80]!r}")
    return value


def _blob(sha):
    return os.path.join(CACHE, "blobs", _hexname(sha, 64))


def _run_dir(run):
    return os.path.join(CACHE, "runs", _hexname(run, 16))


def _use_env(env):
    """Put environment `env`'s packages first on the path when it is installed ('-': none); True if so."""
    if env == "-":
        return False
    site = os.path.join(CACHE, "envs", _hexname(env, 12), "site")
    if os.path.isdir(site):
        sys.path.insert(0, site)
        return True
    return False


def install(env, sha):
    import shutil
    import tarfile

    dest = os.path.join(CACHE, "envs", _hexname(env, 12))
    if os.path.isdir(dest):
        print(json.dumps({"installed": env, "new": False}))
        return
    tmp = f"{dest}.{os.getpid()}.tmp"
    os.makedirs(tmp)
    try:
        with tarfile.open(_blob(sha)) as tar:
            members = tar.getmembers()
            for m in members:  # regular files and directories under site/ only: nothing lands outside the cache
                parts = m.name.split("/")
                if m.name.startswith("/") or ".." in parts or parts[0] != "site" or not (m.isfile() or m.isdir()):
                    _fail(f"the environment archive holds {m.name[:80]!r}, which is not a file under site/")
            tar.extractall(tmp, members=members)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"installed": env, "new": True}))


def _read(stream, n):
    data = stream.read(n)
    if len(data) != n:
        _fail("the upload ended early (connection lost?)")
    return data


def missing(shas):
    print(json.dumps([sha for sha in shas if not os.path.isfile(_blob(sha))]))


def put(shas):
    os.makedirs(os.path.join(CACHE, "blobs"), exist_ok=True)
    stdin = sys.stdin.buffer
    for sha in shas:
        size = int.from_bytes(_read(stdin, 8), "big")
        tmp = f"{_blob(sha)}.{os.getpid()}.tmp"
        digest = hashlib.sha256()
        with open(tmp, "wb") as f:
            while size:
                chunk = _read(stdin, min(size, 1 << 20))
                digest.update(chunk)
                f.write(chunk)
                size -= len(chunk)
        if digest.hexdigest() != sha:
            os.unlink(tmp)
            _fail(f"blob {sha[:12]} arrived with another sha256 ({digest.hexdigest()[:12]}); nothing kept")
        os.replace(tmp, _blob(sha))


def run(env, validator, run_id, args):
    import fcntl
    import runpy
    import signal
    import threading

    _use_env(env)
    path = _blob(validator)
    work = _run_dir(run_id)
    os.makedirs(work)
    resolved = []
    for arg in args:
        if arg.startswith("@"):
            resolved.append(_blob(arg[1:]))
        elif arg.startswith("%"):
            name = arg[1:]
            if not name or "/" in name or name.startswith("."):
                _fail(f"an output is a plain file name; received {name[:80]!r}")
            resolved.append(os.path.join(work, name))
        else:
            resolved.append(arg)
    scratch = os.path.join(work, "tmp")
    os.makedirs(scratch)
    os.environ["TMPDIR"] = scratch  # the runtime's own temporary files stay in the run's directory
    os.chdir(work)
    lock = open(os.path.join(CACHE, "board.lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # one validator at a time on a board: runs never time each other
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        sys.argv = [path, *resolved]
        try:
            runpy.run_path(path, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def kill_when_closed():  # the connection closed (the build stopped this part): stop the validator
        sys.stdin.buffer.read()
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    threading.Thread(target=kill_when_closed, daemon=True).start()
    _, status = os.waitpid(child, 0)
    ended = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
    sys.stderr.write(f"\n{STATUS}{json.dumps(ended)}\n")
    sys.stderr.flush()
    os._exit(0)


def get(run_id):
    import shutil

    work = _run_dir(run_id)
    out = sys.stdout.buffer
    for name in sorted(os.listdir(work)) if os.path.isdir(work) else []:
        path = os.path.join(work, name)
        if name.startswith(".") or not os.path.isfile(path):  # the validator's outputs only
            continue
        encoded = name.encode()
        out.write(len(encoded).to_bytes(2, "big") + encoded + os.path.getsize(path).to_bytes(8, "big"))
        with open(path, "rb") as f:
            shutil.copyfileobj(f, out)
    out.flush()
    shutil.rmtree(work, ignore_errors=True)


def _text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").replace("\x00", "").strip()
    except OSError:
        return None


def identity(env="-"):
    import platform
    from importlib import metadata

    installed = _use_env(env)
    cpuinfo = _text("/proc/cpuinfo") or ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name") or fields.get("Hardware") or fields.get("Model") or (
        f"CPU implementer {fields['CPU implementer']} part {fields.get('CPU part')}" if "CPU implementer" in fields
        else None)
    machine = platform.machine()
    # user-mode emulation (qemu-user) fakes uname and /proc/cpuinfo for the emulated arch, but not the
    # kernel's own CPU type in sysfs: an x86 kernel under an ARM Python is an emulated board
    kernel_cpu = (_text("/sys/devices/system/cpu/modalias") or "").partition("type:")[2].partition(":")[0]
    emulated = bool(kernel_cpu) and machine.startswith(("aarch64", "arm")) and not kernel_cpu.startswith(("aarch64", "arm"))
    memory = next((int(line.split()[1]) * 1024 for line in (_text("/proc/meminfo") or "").splitlines()
                   if line.startswith("MemTotal:")), None)
    runtimes = {}
    for dist in ("ai-edge-litert", "tflite-runtime", "onnxruntime", "numpy"):
        try:
            runtimes[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    print(json.dumps({
        "arch": machine, "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "python_path": sys.executable, "cpu": cpu, "model": _text("/proc/device-tree/model"),
        "governor": _text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"), "memory_bytes": memory,
        "cpus": os.cpu_count(), "runtimes": runtimes, "emulated": emulated, "environment": env if installed else None,
    }))


def main(argv):
    if not argv:
        _fail("no command")
    command, args = argv[0], argv[1:]
    os.makedirs(CACHE, exist_ok=True)
    if command == "missing":
        missing(args)
    elif command == "put":
        put(args)
    elif command == "run" and len(args) >= 3:
        run(args[0], args[1], args[2], args[3:])
    elif command == "get" and len(args) == 1:
        get(args[0])
    elif command == "identity" and len(args) <= 1:
        identity(*args)
    elif command == "install" and len(args) == 2:
        install(*args)
    else:
        _fail(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
