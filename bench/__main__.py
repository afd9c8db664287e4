"""`python -m bench` (or `make bench`): what edgebuild costs and what it buys, measured side by
side in one run on this machine. Writes bench/results.json and prints Markdown tables.

Sections of the whole run (bench/full.py runs them): build time per stage cold vs warm (with peak memory
and the JAX compile share), artifact sizes and host/target agreement, and reproducibility (two clean builds,
every sha256) in bench/sections/build.py; on-target validation cost (emulated aarch64 vs the host
interpreter, 1 vs 2 shards) in validation.py; accuracy float vs post-training int8 vs edgebuild QAT int8
(same splits, same calibration set) in accuracy.py; a model trained elsewhere in byo.py; and two of the
sections below, isa and formats. Alone, one module each in bench/sections/ (listed in
bench/sections/__init__.py in the order of bench/RESULTS.md): --only isa (vector-ISA reproducibility),
--only formats --at BUILD_DIR (TFLite and ONNX side by side), --only speed --at BEFORE (the default build
per stage, cold, at an earlier revision vs now), --only bytecode --at BUILD_DIR (emulated targets with and
without their compiled bytecode), --only ci (a fresh CI runner with a warm remote cache vs fully cold, and a
large test set validated in 1 vs 2 shards run as separate invocations and merged), --only suite (the test
suite with 1 and 2 pytest-xdist workers), --only fit (does each bundled model fit the devices: arena, MACs,
Vela's figures, and each target stage's time), --only transformers (vit_tiny beside the CNNs: float,
post-training and QAT int8), --only quantization (per case: float, post-training int8, QAT int8 and 16x8,
with paired flips, sizes and the per-layer report's worst layer).
Timings are medians of --repeats runs, with their min-max spread; nothing here is asserted.
"""

import argparse
import datetime
import json
import shutil
import tempfile
from pathlib import Path

from bench import full
from bench.common import REPO, log, machine
from bench.sections import ONLY


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per timing (median reported)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    parser.add_argument("--work", help="scratch directory (default: a temporary one, removed after)")
    parser.add_argument("--only", choices=sorted(ONLY), help="measure one section alone and add it to the results "
                        "file: " + "; ".join(f"{name}: {section.what}" for name, section in sorted(ONLY.items())))
    parser.add_argument("--at", metavar="REV_OR_BUILD_DIR", help="what --only speed (a git revision to compare with), "
                        "--only bytecode and --only formats (a finished build directory, e.g. build/digits) measure")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="edgebuild-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        targets_cache = work / "targets"
        targets_cache.mkdir(exist_ok=True)
        if args.only:
            section = ONLY[args.only]
            if section.at and not args.at:
                parser.error(f"--only {args.only} needs --at {section.at}")
            if args.at and not section.at:
                parser.error(f"--only {args.only} takes no --at")
            result = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
            for key in section.replaces:
                result.pop(key, None)
            result[section.key] = {"date": datetime.date.today().isoformat(), "machine": machine(),
                                   **section.measure(args, work, targets_cache)}
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
            print(section.markdown(result[section.key]))
            return
        result = full.run(args, work, targets_cache)
        result["markdown"] = full.markdown(result)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(result["markdown"])
        log(f"wrote {args.out}")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
