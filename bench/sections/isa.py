"""`python -m bench --only isa` (also part of the whole run): the default build to export under several
XLA vector ISAs, and which artifacts stay byte-identical to the default's."""

import contextlib
import os

from pipeline.engine.fsutil import sha256_file

from bench.common import Section, edgebuild, fresh_cache, log, machine

ISA_SETTINGS = (  # XLA_FLAGS for the stage processes: edgebuild's default cap, an AVX2-only CPU, no cap
    ("default (edgebuild caps XLA at AVX2)", None),
    ("forced AVX2 (what an AVX2-only CPU compiles)", "--xla_cpu_max_isa=AVX2"),
    ("forced AVX-512 (no cap, on this CPU)", "--xla_cpu_max_isa=AVX512"),
)


def isa_reproducibility(work, targets_cache):
    """The default build (to export, fresh stage cache) under several XLA ISA settings: which artifacts
    are byte-identical to the default's."""
    runs = []
    for label, flags in ISA_SETTINGS:
        out, cache = work / f"isa{len(runs)}-out", fresh_cache(work, f"isa{len(runs)}", targets_cache)
        env_flags = {"XLA_FLAGS": flags} if flags else {}
        with _env(env_flags):
            edgebuild(["build", "--until", "export", "--set", f'build.out_dir="{out}"'], cache)
        files = {n: sha256_file(out / "digits" / n) for n in ("float.keras", "qat.keras", "model_int8.tflite",
                                                                "model_float.tflite", "model.onnx")}
        runs.append({"setting": label, "xla_flags": flags, "sha256": {k: v[:16] for k, v in files.items()}})
        log(f"isa {label}: int8 {files['model_int8.tflite'][:16]}")
    base = runs[0]["sha256"]
    for r in runs:
        r["identical_to_default"] = sorted(k for k in base if r["sha256"][k] == base[k])
    return {"cpu": machine().get("cpu"), "runs": runs}


@contextlib.contextmanager
def _env(values):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def isa_markdown(section):
    rows = ["| XLA setting | flags | int8 .tflite sha256 | byte-identical to the default |", "|---|---|---|---|"]
    for run in section["runs"]:
        same = run["identical_to_default"]
        rows.append(f"| {run['setting']} | `{run['xla_flags'] or '-'}` | `{run['sha256']['model_int8.tflite']}…` | "
                    f"{len(same)} of {len(run['sha256'])} ({', '.join(same) or 'none'}) |")
    return "\n".join(rows)


SECTION = Section("Vector ISA and reproducible bytes",
                  "the default build to export under several XLA vector ISAs: which artifacts stay byte-identical",
                  "isa_reproducibility", lambda args, work, tc: isa_reproducibility(work, tc), isa_markdown)
