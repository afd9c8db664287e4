"""A real SSH server on localhost standing in for a board on the shelf: OpenSSH's sshd (from the install
step's openssh-server), started on a free port with throwaway host and user keys, and an ssh client config
and known_hosts of its own (the user's ~/.ssh is never read or written). Nothing is assumed running.

The "board" behind it runs aarch64 for real: its `python3` (first on the session's PATH) is the aarch64
Python of a shipped target's emulated root filesystem under qemu user-mode, with that target's pinned
runtime, so the SSH path executes the real arm64 runtime. Its cache directory is the test's own."""

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keypair(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgebuild-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path, Path(f"{path}.pub")


def board_python(work, root, cpu, runtime=True):
    """A `python3` that is the target environment `root`'s aarch64 Python under qemu user-mode, with the
    target's runtime on its path (`runtime`), or bare: the root filesystem's own Python only."""
    bin_dir = Path(work) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "python3"
    shim.write_text(f"""#!/bin/sh
export QEMU_CPU={cpu} {f"PYTHONPATH={root}/site " if runtime else ""}PYTHONDONTWRITEBYTECODE=1 OPENBLAS_NUM_THREADS=1
exec {root}/qemu/usr/bin/qemu-aarch64 -L {root}/rootfs {root}/rootfs/usr/bin/python3 "$@"
""")
    shim.chmod(0o755)
    return bin_dir


@contextmanager
def board(work, root, cpu, alias="board1", client_key=None, runtime=True):
    """Start sshd for one board (`root`: a target's environment directory; `runtime`: its Python has the
    target's runtime, else none until `edgebuild board setup`); yield (alias, ssh config file, the sshd
    process, the board's cache directory). The server stops on exit."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    host_key, host_pub = keypair(work / "host_key")
    if client_key is None:
        client_key, _ = keypair(work / "user_key")
    (work / "authorized_keys").write_text(Path(f"{client_key}.pub").read_text())
    cache = work / "board-cache"
    port = _free_port()
    bin_dir = board_python(work, root, cpu, runtime)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    (work / "sshd_config").write_text(f"""ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile {work / 'sshd.pid'}
AuthorizedKeysFile {work / 'authorized_keys'}
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel ERROR
SetEnv PATH={bin_dir}:/usr/bin:/bin EDGEBUILD_BOARD_CACHE={cache}
""")
    (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub.read_text().split(' ', 2)[0]} "
                                      f"{host_pub.read_text().split(' ', 2)[1]}\n")
    (work / "ssh_config").write_text(f"""Host {alias}
  HostName 127.0.0.1
  Port {port}
  User {os.environ.get('USER') or 'root'}
  IdentityFile {client_key}
  IdentitiesOnly yes
  UserKnownHostsFile {work / 'known_hosts'}
  GlobalKnownHostsFile /dev/null
""")
    log = open(work / "sshd.log", "w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(work / "sshd_config")], stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not start: {(work / 'sshd.log').read_text()[-2000:]}") from None
                time.sleep(0.1)
        yield alias, work / "ssh_config", server, cache
    finally:
        stop(server)
        log.close()


def _descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(server):
    """Stop the board's sshd and every session it serves, the validator under them included (a board lost
    mid-run)."""
    for pid in [server.pid, *_descendants(server.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.wait()
