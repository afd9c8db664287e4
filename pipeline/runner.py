"""Child-process entry point: `python -m pipeline.runner REQUEST.json`.

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


def main(request_path):
    request = json.loads(Path(request_path).read_text())
    result_path = Path(request["result"])
    progress_stream = _redirect_output(request["log"])

    from . import config as config_mod
    from .errors import EdgebuildError
    from .progress import Progress

    try:
        config = config_mod.from_dict(request["config"])
        if ":" in config.train.recipe and os.environ.get("KERAS_BACKEND"):
            from .usermodel import import_user_module

            import_user_module(config.train.recipe)  # registers the user's custom layers
        if request["module"] == "pipeline.stages.train" and os.environ.get("JAX_COORDINATOR_ADDRESS"):
            # Multi-host training: every host runs the same build with its own JAX_PROCESS_ID; JAX's
            # coordinator joins them, and keras.distribution.DataParallel spans all their devices.
            import jax

            jax.distributed.initialize(
                coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                process_id=int(os.environ["JAX_PROCESS_ID"]),
            )
        module = importlib.import_module(request["module"])
        inputs = {k: Path(v) for k, v in request["inputs"].items()}
        record = module.run_stage(
            config, inputs, Path(request["out_dir"]), Progress(progress_stream, request["quiet"]),
            **request.get("params", {}),
        )
        import resource

        # peak resident memory of this stage's process, for the benchmarks
        record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result = {"ok": True, "record": record}
    except EdgebuildError as exc:
        result = {"ok": False, "exit_code": exc.exit_code, "message": str(exc),
                  "traceback": traceback.format_exc()}
    except Exception as exc:  # reported by the parent as a stage failure, traceback behind --debug
        from .diagnose import explain

        result = {"ok": False, "exit_code": None, "message": explain(exc),
                  "traceback": traceback.format_exc()}
    traceback_text = result.get("traceback")
    if traceback_text:
        print(traceback_text, file=sys.stderr)
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, result_path)


if __name__ == "__main__":
    main(sys.argv[1])
