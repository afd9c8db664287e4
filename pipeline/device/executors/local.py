"""Processes on the build host: a target that is the host itself (not emulated), and the x86_64 twin of
an emulated target (the host's Python without its site-packages, on the twin's own wheels: the same
runtime, version and kernels as the target, so what differs is the instruction set)."""

import os
import sys
from pathlib import Path

from pipeline.device import targets
from pipeline.device.executors.base import Executor, quiet_env


def host(target, root):
    def command(args):
        return ([sys.executable, str(targets.ONDEVICE), *map(str, args)],
                {**quiet_env(), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})

    return Executor("host", command, lambda: {"kind": "host"})


def twin(target, root):
    def command(args):
        return ([sys.executable, "-S", str(targets.ONDEVICE), *map(str, args)],
                {**quiet_env(), "PYTHONPATH": str(Path(root) / "twin-site")})

    return Executor("twin", command, lambda: {"kind": "x86_64 twin"})
