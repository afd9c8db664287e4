"""Running the on-device validator over a test set: `run_sharded` starts one long-lived validator
process per shard through the target's executor (`pipeline.device.executors`), gathers the outputs and
tells a refused model, a crashed runtime and a failed validator apart; `dump_tensors` keeps every tensor
of one sample (for the first difference between host and target)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pipeline.device import executors, targets
from pipeline.device.executors import container as in_container
from pipeline.device.environment import run_logged
from pipeline.device.executors.base import Executor, kernel_args
from pipeline.device.executors.ssh import LOST
from pipeline.engine.errors import InputError, ModelRefused, StageError


def executor_for(target, root, twin=False, container=None, log=print):
    """The executor of `target` (or of its x86_64 twin): in its OCI image with `container` = the cache
    directory that holds the image (a Linux board's own runs only; the twin runs on the host)."""
    if target.kind != "linux":
        module = targets.kind_module(target.kind)
        return Executor(target.kind, lambda args: module.launch(target, root, [str(a) for a in args], twin),
                        lambda: module.executor(target))
    if container is not None and not twin and target.emulated:
        return in_container.executor(target, container, log)
    return executors.linux(target, root, twin)


def run_sharded(target, root, model, x, work, shards, threads=None, batch=None, twin=False, container=None,
                bytecode=True, reference=0, boards=None, keep=None):
    """Run the validator over `x` in `shards` parallel long-lived processes (on the target, or on its
    x86 twin with `twin`; in the target's OCI image with `container` = the cache directory that holds
    it); returns (outputs, info). `bytecode=False` ignores the environment's compiled modules (every
    module compiled at start, as before set-up compiled them: for the benchmark). With `reference` = N,
    the same processes also run the first N inputs on the runtime's reference kernels and write those
    outputs to work/reference.npy (a TFLite runtime only; info["reference_samples"] says how many).
    With `boards` (one executor per board, `executors.ssh`), the samples are split over the boards, and a
    part whose board is lost (the connection fails or drops) runs again on another board
    (info["reruns"]); when no board is left, the run fails with each board's reason. With `keep` =
    (inputs, tensor indices or None), the first process also runs those inputs (of x's dtype and shape)
    one at a time with every tensor kept, after its part, into work/kept.npz (as `dump_tensors` does with
    `count`, without another process: an emulated start is about 1.5 s of CPU); when the runtime could not
    keep them, work/kept.failed holds its reason instead."""
    import numpy as np

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    pool = list(boards or [])
    parts = [p for p in np.array_split(np.arange(len(x)), max(1, min(len(pool) or shards, len(x)))) if len(p)]
    chosen = pool[:len(parts)] if pool else [executor_for(target, root, twin=twin, container=container)] * len(parts)
    procs, infos, arena, lost = [], [None] * len(parts), None, {}
    started = time.perf_counter()

    def start(i, idx, runner):
        kept = keep is not None and i == 0
        np.save(work / f"x{i}.npy", np.concatenate([x[idx], keep[0]]) if kept else x[idx])
        args = [model, work / f"x{i}.npy", work / f"y{i}.npy",
                "--batch", str(batch or target.batch_size), "--threads", str(threads or target.threads)]
        ref = max(0, min(len(idx), reference - int(idx[0])))
        args += kernel_args(target) + (["--reference", str(ref)] if ref else [])
        if kept:
            args += ["--keep-from", str(len(idx))]
            args += ["--dump-tensors", ",".join(map(str, sorted(keep[1])))] if keep[1] is not None else []
        cmd, env = runner.command(args)
        if runner.name != "container":
            # a runtime's own temporary files (onnxruntime's telemetry writes $TMPDIR/.ses at import) stay
            # in the stage's work directory, never in the machine's /tmp
            (work / f"tmp{i}").mkdir(exist_ok=True)
            env["TMPDIR"] = str(work / f"tmp{i}")
            if not bytecode:  # .pyc files are looked up under an empty prefix: none is found
                env["PYTHONPYCACHEPREFIX"] = str(work / "no-bytecode")
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(i, proc):
        """The part's info, or None when its board was lost (recorded in `lost`)."""
        nonlocal arena
        out, err = proc.communicate()
        used = ARENA.search(err or "")
        arena = int(used.group(1)) if used else arena
        if pool and proc.returncode == LOST:
            lost[i] = (err or "").strip().splitlines()[-1:] or ["connection lost"]
            return None
        if proc.returncode != 0:
            _failed(target, proc.returncode, out, err, twin)
        return json.loads(out.strip().splitlines()[-1])

    reruns = []
    try:  # every failure, starting the processes included, ends with none of them left running
        for i, idx in enumerate(parts):
            procs.append(start(i, idx, chosen[i]))
        for i, proc in enumerate(procs):
            infos[i] = finish(i, proc)
        dead = {chosen[i].describe()["board"]: lost[i][0] for i in lost}
        for i in sorted(lost):
            first = lost[i][0]  # why the part's own board was lost (a re-run lost too overwrites lost[i])
            for runner in pool:
                board = runner.describe()["board"]
                if board in dead:
                    continue
                procs.append(start(i, parts[i], runner))
                infos[i] = finish(i, procs[-1])
                if infos[i] is not None:
                    reruns.append({"part": i + 1, "samples": int(len(parts[i])), "lost_on": chosen[i].describe()["board"],
                                   "reason": first[:300], "ran_on": board})
                    break
                dead[board] = lost[i][0]
            else:
                raise StageError(f"target {target.name}: no board is left to run part {i + 1} of {len(parts)}; "
                                 + "; ".join(f"board {b}: {why[:200]}" for b, why in dead.items()))
    finally:
        stop(procs)
    wall = time.perf_counter() - started
    outputs = np.concatenate([np.load(work / f"y{i}.npy") for i in range(len(parts))])
    refs = [work / f"y{i}.ref.npy" for i, info in enumerate(infos) if info.get("reference_samples")]
    if refs:
        np.save(work / "reference.npy", np.concatenate([np.load(r) for r in refs]))
    kept = infos[0].get("kept") or {}
    if keep is not None and kept.get("samples"):
        os.replace(work / "y0.kept.npz", work / "kept.npz")
    elif keep is not None:
        (work / "kept.failed").write_text(kept.get("failed") or "the validator kept no tensors")
    slowest = max(i["inference_seconds"] for i in infos)
    return outputs, {
        "runtime": infos[0]["runtime"],
        "runtime_version": infos[0]["runtime_version"],
        "machine": infos[0]["machine"],
        "python": infos[0]["python"],
        "shards": len(parts),
        "batch": infos[0]["batch"],
        "threads": infos[0]["threads"],
        "wall_seconds": round(wall, 3),
        "inference_seconds": round(slowest, 4),
        "images_per_s": round(len(x) / slowest, 1) if slowest > 0 else None,
        "kernels": infos[0].get("kernels", "default"),
        "reference_samples": sum(i.get("reference_samples", 0) for i in infos),
        "latency": latency([i.get("invoke_ms") or [] for i in infos], infos[0]["batch"], infos[0]["threads"],
                           all(runner.device_latency for runner in chosen)),
        **({"arena_bytes": arena} if arena is not None else {}),
        **({"reruns": reruns} if reruns else {}),
    }


WARMUP = 3  # invokes of each validator process left out of the latency figures (caches, lazy set-up)


def latency(invokes, batch, threads, on_device):
    """Per-image invoke time over every validator process after its first WARMUP invokes: p50, p90, p99 (ms)
    and the count, at the run's batch and threads. `on_device`: the executor runs on the device itself (a
    board over SSH); an emulated target's or a twin's figures are the throughput of the emulation, never the
    device's latency."""
    import numpy as np

    kept = [ms for one in invokes for ms in one[WARMUP:]]
    if not kept:
        return None
    p50, p90, p99 = (round(float(v), 4) for v in np.percentile(kept, [50, 90, 99]))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "count": len(kept), "warmup_invokes": WARMUP,
            "batch": batch, "threads": threads, "measured_on": "device" if on_device else "emulation"}


def stop(procs):
    """Terminate every process still running (SIGTERM, then SIGKILL after 5 s) and wait for each."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# What TFLM's recording allocator prints after the first invoke (ondevice.py asks it to).
ARENA = re.compile(r"Arena allocation total (\d+) bytes")


def _failed(target, returncode, out, err, twin):
    """Raise what a validator's non-zero exit means: the runtime refused the model (ModelRefused, naming
    the op the runtime lacks when it said so on stderr), or the validator itself failed (StageError)."""
    refused = refusal_reason(out, err)
    if refused is not None:
        m = re.search(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'", refused)
        fix = (f"Use a runtime that has op {m.group(1)} version {m.group(2)} in the target file, or avoid "
               "that op." if m else "")
        where = f"the x86_64 twin of target {target.name}" if twin else f"target {target.name}"
        raise ModelRefused(f"{where} ({target.runtime} {target.runtime_version})", refused, fix)
    where = f"the x86_64 twin of target {target.name}" if twin else f"target {target.name}"
    crash = crashed(returncode, err)
    if crash:  # the runtime died running the model: that target's failure, and the other targets go on
        raise ModelRefused(f"{where} ({target.runtime} {target.runtime_version})", crash,
                           "Report it to the runtime with the model, or try other kernels (validate.kernels).",
                           crashed=True)
    msg = (err or out).strip().splitlines()[-1:] or ["no output"]
    if returncode < 0:  # stopped from outside (SIGKILL, SIGTERM): not the model's doing, and never cached
        msg = [f"killed by signal {-returncode}" + (f" after: {msg[0]}" if msg[0] != "no output" else "")]
    raise StageError(f"the on-target validator failed on {target.name} (exit {returncode}): {msg[0][:300]}")


# qemu user-mode's words when the emulated program dies of a signal (it then dies of the same signal)
QEMU_SIGNAL = re.compile(r"qemu: uncaught target signal (\d+) \(([^)]*)\)")


# The signals a program dies of when its own code faults (a crash), not when it is stopped from outside
# (SIGKILL by the out-of-memory killer, SIGTERM or SIGINT by a cancelled job: the validator's failure).
CRASH_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")


def crashed(returncode, stderr):
    """'the runtime crashed (SIGSEGV, ...) ...' when a validator died of a fault (natively, or under qemu),
    else None."""
    import signal as signals

    m = QEMU_SIGNAL.search(stderr or "")
    number = int(m.group(1)) if m else (-returncode if returncode < 0 else None)
    try:
        name = signals.Signals(number).name if number is not None else None
    except ValueError:
        name = None
    if name not in CRASH_SIGNALS:
        return None
    return f"the runtime crashed ({name}{', ' + m.group(2) if m else ''}) running the model (no op named: no per-op trace)"


def dump_tensors(target, root, model, x, work, side, runner=None, count=None, only=None):
    """Every tensor of the single sample `x` (shape (1, ...)) on the target, its x86 twin or the build
    host ('target', 'twin', 'host'), builtin kernels; returns {tensor index: array}, or None when that
    side cannot run the dump (the reason is in work/dump.log). With `count`, of the first `count`
    samples of `x`, each array stacked over them (one run of the validator); with `only`, of those tensor
    indices alone."""
    import numpy as np

    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / f"{side}-x.npy", x)
    args = [model, work / f"{side}-x.npy", work / f"{side}.npz", "--dump", "0",
            *(["--dump-count", str(count)] if count else []),
            *(["--dump-tensors", ",".join(map(str, sorted(only)))] if only is not None else []),
            *([] if side == "host" else kernel_args(target))]
    if side == "host":
        cmd = [sys.executable, str(targets.ONDEVICE), *map(str, args)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1"}
    else:
        cmd, env = (runner if runner is not None and side == "target" else
                    executor_for(target, root, twin=side == "twin")).command(args)
    env["TMPDIR"] = str(work)
    try:
        run_logged(cmd, f"keeping every tensor on {side}", work / "dump.log", env=env)
    except (StageError, InputError):
        return None
    with np.load(work / f"{side}.npz") as f:
        return {int(k[1:]): f[k] for k in f.files}


def refusal_reason(stdout, stderr):
    """The runtime's reason for refusing a model, from the validator's {"refused": ...} line, led by the
    line naming the op it lacks when the runtime said so only on stderr (TFLM does); None if not refused."""
    refused = _refusal(stdout)
    if refused is None:
        return None
    named = re.search(r"(Didn't find op for builtin opcode '\w+'[^\n]*|Failed to get registration from op "
                      r"code [^\n]*)", stderr or "")
    return f"{named.group(1).strip()}; {refused}" if named and named.group(1) not in refused else refused


def _refusal(stdout):
    """The runtime's reason from the validator's {"refused": ...} line, or None."""
    for line in reversed((stdout or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "refused" in value:
            return str(value["refused"])
    return None

