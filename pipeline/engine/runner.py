"""Child-process entry point: `serve(LOG, CACHE_DIR)`, started by the engine's BOOTSTRAP (`python -P -c`).

Each stage runs in its own process so that it can choose its Keras backend (Keras fixes it at
import): the parent sets KERAS_BACKEND, this process imports Keras, reads the path of its request
(REQUEST.json) from stdin, runs one stage and writes a JSON result. The engine starts the process of
the next stage while the current one runs, so that the import (4-12 s) overlaps the work; a process
that gets no request (its stage was a cache hit) exits. TensorFlow/XLA log spam goes to the stage's
log file; progress bars go to the user's terminal.
"""

import importlib
import json
import os
import sys
import tempfile
import time
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


def use_compile_cache(environ, cache_dir):
    """Point JAX's persistent compilation cache (before JAX is imported) at <cache>/jax/<machine key>,
    unless the user chose one (JAX_COMPILATION_CACHE_DIR). JAX keys each entry by the computation, the
    compile options, jaxlib's version and XLA_FLAGS; the directory adds what JAX's key leaves out, the CPU
    model and its widest vector ISA, so a cache shared between machines never hands one CPU code compiled
    for another. A hit loads the executable a miss would have compiled: a speed-up only (bench
    --only speed checks the artifacts byte-identical with and without it)."""
    if not environ.get("JAX_COMPILATION_CACHE_DIR"):
        if not cache_dir:
            return None
        import hashlib
        import platform

        machine = json.dumps([cpu_description(), platform.machine(), environ.get("XLA_FLAGS", "")], sort_keys=True)
        environ["JAX_COMPILATION_CACHE_DIR"] = str(Path(cache_dir) / "jax" / hashlib.sha256(machine.encode()).hexdigest()[:16])
    # a build compiles about 70 small computations (0.1-0.4 s each): JAX's defaults keep none of them
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    # JAX also turns on a GPU autotuning cache inside this directory and puts its path in every entry's
    # key: a cache copied to another path (a CI runner's restored cache) would never hit. CPU has none.
    environ.setdefault("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES", "none")
    return environ["JAX_COMPILATION_CACHE_DIR"]


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


# Optional integrations that importing Keras imports whenever they are installed, and no stage uses:
# scikit-learn (for Keras's scikit-learn wrappers; it brings scipy.stats) and matplotlib.pyplot (for its
# image-gallery plot), and, with TensorFlow, JAX (for the TFLite converter's from-JAX path; the export
# converts Keras models). They were 0.9 of the 1.9 s (JAX) and 1.2 of the 3.4 s (TensorFlow) that
# importing Keras took. In a stage process, Keras's scikit-learn wrappers and image-gallery plot (and
# TFLite's from-JAX converter) therefore act as if those were not installed.
KERAS_SKIPS = ("sklearn", "matplotlib.pyplot")
KERAS_SKIPS_BUT_JAX = ("jax",)


def import_keras():
    """Import Keras (with the process's backend) as if KERAS_SKIPS (and, but with JAX, KERAS_SKIPS_BUT_JAX)
    were not installed; afterwards they import as usual, for the stage's own code (a user's recipe
    module), and only the references taken while Keras was imported stay unset."""
    skips = KERAS_SKIPS + (KERAS_SKIPS_BUT_JAX if os.environ.get("KERAS_BACKEND") != "jax" else ())
    blocked = [name for name in skips if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # `import name` raises ImportError, which Keras handles as "not installed"
    try:
        return importlib.import_module("keras")
    finally:
        for name in blocked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def serve(log_path, cache_dir):
    """Send output to the stage's log, set JAX's flags and compilation cache (before JAX is imported),
    import Keras with the process's backend, then run the request whose path arrives on stdin; an empty
    stdin (the stage turned out a cache hit, or the build stopped) ends the process."""
    if os.environ.get("KERAS_BACKEND") == "jax":
        pin_xla_isa(os.environ)
        use_compile_cache(os.environ, cache_dir)
    started = time.perf_counter()
    progress_stream = _redirect_output(log_path)
    if os.environ.get("KERAS_BACKEND"):
        import_keras()
    imported = time.perf_counter()
    request_path = sys.stdin.readline().strip()
    if request_path:
        waited = time.perf_counter() - imported
        main(request_path, progress_stream, {"import_s": round(imported - started, 2), "waited_s": round(waited, 2)})


def main(request_path, progress_stream, process):
    """Run the stage of the request; `process`: how long this process took to import Keras and then
    waited for its request (a process started ahead of its stage waits when its import is done first)."""
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result"])
    # every temporary file of the stage and of the processes it starts (onnxruntime writes $TMPDIR/.ses
    # when imported) goes to its staging directory, removed with it
    scratch = Path(request["out_dir"]) / ".tmp"
    scratch.mkdir(exist_ok=True)
    os.environ["TMPDIR"] = str(scratch)
    tempfile.tempdir = None

    from pipeline.engine.codehash import loaded_toolchain
    from pipeline.engine.errors import EdgebuildError
    from pipeline.engine.progress import Progress
    from pipeline.engine.stage import StageContext, config_view

    try:
        module = importlib.import_module(request["module"])  # first: its package registers stage-declared sections
        cfg = config_view(request["config"])
        inputs = {k: Path(v) for k, v in request["inputs"].items()}
        ctx = StageContext(Progress(progress_stream, request["quiet"]), request["cache_dir"], request["params"],
                           request.get("remote", ""))
        record = module.run(cfg, inputs, Path(request["out_dir"]), ctx)
        record["toolchain"] = loaded_toolchain()
        record["process"] = process
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
        from pipeline.engine.errors import disk_full, unwritable

        full = disk_full(exc) or unwritable(exc)
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
    serve(*sys.argv[1:3])
