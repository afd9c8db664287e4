"""Child-process entry point: `main(REQUEST.json)`, started by the engine's BOOTSTRAP (`python -P -c`).

Each stage runs in its own process so that it can choose its Keras backend (Keras fixes it at
import): the parent sets KERAS_BACKEND, this process runs one stage and writes a JSON result.
TensorFlow/XLA log spam goes to the stage's log file; progress bars go to the user's terminal.
"""

import importlib
import json
import os
import sys
import traceback
from pathlib import Path


def _redirect_output(log_path):
    """Point fds 1 and 2 at the log file; return a stream on the original stderr for progress."""
    progress_fd = os.dup(2)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    return os.fdopen(progress_fd, "w", buffering=1)


# XLA compiles JAX code for the widest vector ISA the CPU has; AVX-512 and AVX2 code sum in different
# orders, so the same train stage gave other weights on an AVX-512 Intel than on an AVX2 AMD machine.
# Capping it at AVX2 (x86-64-v3, what both have) makes the compiled code, and so the bytes, the same.
XLA_ISA_FLAG = "--xla_cpu_max_isa=AVX2"


def pin_xla_isa(environ):
    """Add XLA_ISA_FLAG to XLA_FLAGS (before JAX is imported) unless the user set an ISA cap."""
    flags = environ.get("XLA_FLAGS", "")
    if "xla_cpu_max_isa" not in flags:
        environ["XLA_FLAGS"] = f"{flags} {XLA_ISA_FLAG}".strip()
    return environ["XLA_FLAGS"]


def cpu_description():
    """The CPU a stage ran on: model name and the widest x86 vector extension it has."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": None, "vector_isa": None}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("sse4_2", "SSE4.2")) if flag in flags),
               None)
    return {"model": model, "vector_isa": isa}


def main(request_path):
    request = json.loads(Path(request_path).read_text())
    if os.environ.get("KERAS_BACKEND") == "jax":
        pin_xla_isa(os.environ)
    result_path = Path(request["result"])
    progress_stream = _redirect_output(request["log"])

    from pipeline.engine.codehash import loaded_toolchain
    from pipeline.engine.errors import EdgebuildError
    from pipeline.engine.progress import Progress
    from pipeline.engine.stage import StageContext, config_view

    try:
        cfg = config_view(request["config"])
        module = importlib.import_module(request["module"])
        inputs = {k: Path(v) for k, v in request["inputs"].items()}
        ctx = StageContext(Progress(progress_stream, request["quiet"]), request["cache_dir"], request["params"],
                           request.get("remote", ""))
        record = module.run(cfg, inputs, Path(request["out_dir"]), ctx)
        record["toolchain"] = loaded_toolchain()
        if os.environ.get("KERAS_BACKEND") == "jax":
            record["xla_flags"] = os.environ.get("XLA_FLAGS", "")
            record["cpu"] = cpu_description()
        import resource

        # peak resident memory of this stage's process, for the benchmarks
        record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result = {"ok": True, "record": record}
    except EdgebuildError as exc:
        result = {"ok": False, "exit_code": exc.exit_code, "message": str(exc),
                  "traceback": traceback.format_exc()}
    except Exception as exc:  # reported by the parent as a stage failure, traceback behind --debug
        from pipeline.engine.diagnose import explain
        from pipeline.engine.errors import disk_full

        full = disk_full(exc)
        result = {"ok": False, "exit_code": full.exit_code if full else None, "message": str(full or explain(exc)),
                  "traceback": traceback.format_exc()}
    traceback_text = result.get("traceback")
    if traceback_text:
        print(traceback_text, file=sys.stderr)
    tmp = result_path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps(result))
        os.replace(tmp, result_path)
    except OSError as exc:  # no room even for the result: the exit status says why
        sys.exit(exc.errno or 1)


if __name__ == "__main__":
    main(sys.argv[1])
