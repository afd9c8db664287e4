"""qemu user-mode: the target's own aarch64 Python and runtime, on its emulated root filesystem
(`pipeline.device.environment`), under Debian's static qemu-aarch64 with the target's CPU model."""

from pathlib import Path

from pipeline.device import targets
from pipeline.device.executors.base import Executor, quiet_env


def qemu_path(root):
    return Path(root) / "qemu" / "usr" / "bin" / "qemu-aarch64"


def executor(target, root):
    """`root`: the target's environment directory (None when only its description is asked for)."""
    def command(args):
        rootfs = Path(root) / "rootfs"
        cmd = [str(qemu_path(root)), "-L", str(rootfs), str(rootfs / "usr" / "bin" / "python3"),
               str(targets.ONDEVICE), *map(str, args)]
        return cmd, {**quiet_env(), "QEMU_CPU": target.cpu, "PYTHONPATH": str(Path(root) / "site")}

    return Executor("qemu-user", command, lambda: {"kind": "qemu-user", "cpu": target.cpu})
