"""The executor protocol: how one validator process of a target runs.

An `Executor` has a `name`, a `command(args)` that gives the command line and environment of one
validator process with `args` (host paths: the model, the inputs, the outputs file and flags), a
`describe()` that gives what the manifest records about the run, and `device_latency`: whether its
timings are the device's own. An emulated target or a twin is never a device: its timings are the
throughput of the emulation."""

from dataclasses import dataclass
from typing import Callable

from pipeline.device import targets


@dataclass(frozen=True)
class Executor:
    name: str
    command: Callable  # args -> (command line, environment)
    describe: Callable  # () -> {"kind": ..., ...}: what the manifest records
    device_latency: bool = False


def kernel_args(target):
    """The validator's flag for a Linux target's kernels (none for its runtime's default): every executor
    of the target (qemu, the container, the twin, the tensor dumps) runs the same kernels."""
    flag = targets.KERNEL_FLAG.get(target.kernels, "default") if target.kind == "linux" else "default"
    return [] if flag == "default" else ["--kernels", flag]


def quiet_env():
    """The environment every validator process starts from. numpy's OpenBLAS starts (and spins) one
    thread per CPU at import; under emulation those spinning threads took the cores from the other
    shards, so 2 shards ran slower than 1."""
    return {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
