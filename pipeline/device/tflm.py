"""The `tflm` target kind: a microcontroller, validated on TensorFlow Lite Micro.

The validator runs the int8 `.tflite` on TFLM's Python interpreter (the `tflite-micro` package pinned
in the target file): the runtime and the reference kernels a Cortex-M firmware links, compiled for
the build host. It proves what TFLM computes and how much arena it needs (its recording allocator's
own figure); it does not emulate the Cortex-M instruction set, and optimized kernels (CMSIS-NN) need
a firmware build. Its x86 twin is LiteRT with its reference kernels (BUILTIN_REF) on the same
machine: TFLM's kernels are ported from those, so the two agree bit for bit unless one of them
departs, and the first op that does is named.
"""

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

from pipeline.engine.errors import InputError

FIELDS = ()  # its target-file fields besides targets.COMMON ([budget] and [tolerances] are optional tables)
PACKAGE = "tflite-micro"
WHAT_RUNS = ("TensorFlow Lite Micro's interpreter and reference kernels on the build host's CPU: the microcontroller's "
             "runtime and kernels, not its instruction set (the Cortex-M ISA is not emulated; CMSIS-NN kernels need a "
             "firmware build)")


def check(target):
    if target.runtime != PACKAGE:
        raise InputError(f"a {target.kind} target runs {PACKAGE}; {target.path} says runtime = {target.runtime!r}. "
                         f"Set runtime = \"{PACKAGE}\".")


def setup(target, cache_dir, log=print):
    """The pinned TFLM must be the one installed beside edgebuild (the README's install step pins it).
    Returns the directory the target's runs use (nothing is built there)."""
    have = check_pinned(target, PACKAGE, target.runtime_version, "runtime_version")
    root = Path(cache_dir) / "targets" / target.name
    root.mkdir(parents=True, exist_ok=True)
    ready = {"runtime": PACKAGE, "runtime_version": have, "machine": platform.machine(), "emulated": False}
    (root / "ready.json").write_text(json.dumps(ready))
    return root


def check_pinned(target, package, want, key):
    """The version of `package` installed beside edgebuild, which must be the one the target pins at `key`."""
    try:
        have = metadata.version(package)
    except metadata.PackageNotFoundError:
        have = None
    if have != want:
        raise InputError(f"target {target.name} pins {package} {want}; the build environment has {have or 'none'}. "
                         f"Run `make install` (it installs the pinned version), or set {key} = \"{have}\" in "
                         f"{target.path} if that one is intended.")
    return have


def _env():
    """A validator process's environment on the build host: one BLAS thread (shards run side by side)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def launch(target, root, args, twin=False):
    """(command, environment) of one validator process: TFLM, or LiteRT's reference kernels (the twin)."""
    from pipeline.device.targets import ONDEVICE

    extra = ["--kernels", "reference"] if twin else ["--runtime", PACKAGE]
    return [sys.executable, str(ONDEVICE), *args, *extra], _env()


def executor(target):
    """How the target ran, for its record."""
    return {"kind": "tflm", "runs": WHAT_RUNS}


def twin_kernels(target):
    return "LiteRT reference kernels (BUILTIN_REF) on the build host"


def finish(target, model_path, out_dir, work, log):
    """Nothing beyond the run: (record additions, files written to out_dir)."""
    return {}, []


def outputs(target):
    return ()


def measure_arena(model_path, work):
    """The tensor arena TFLM needs for the model, as its recording allocator measures it over one
    inference of a zero input: {"arena_bytes": N} or {"arena_bytes": None, "refused": TFLM's reason}.
    It runs in a child process: TFLM ends the process on some failures instead of raising."""
    import subprocess

    import numpy as np

    from pipeline.device import tflite_info
    from pipeline.device.fanout import ARENA, refusal_reason
    from pipeline.device.targets import ONDEVICE

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    inp = tflite_info.describe(model_path)["inputs"][0]
    np.save(work / "arena-x.npy", np.zeros([1, *inp["shape"][1:]], np.dtype(inp["dtype"])))
    cmd = [sys.executable, str(ONDEVICE), str(model_path), str(work / "arena-x.npy"), str(work / "arena-y.npy"),
           "--runtime", PACKAGE]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    used = ARENA.search(proc.stderr)
    if proc.returncode == 0 and used:
        return {"arena_bytes": int(used.group(1))}
    reason = refusal_reason(proc.stdout, proc.stderr) or \
        f"the TFLM interpreter exited {proc.returncode}: {' '.join(proc.stderr.split())[-200:]}"
    return {"arena_bytes": None, "refused": reason[:500]}
