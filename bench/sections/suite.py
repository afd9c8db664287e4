"""`python -m bench --only suite`: the whole test suite with 1 and 2 pytest-xdist workers."""

import statistics
import subprocess
import sys
import time

from bench.common import REPO, Section, log

SUITE_WORKERS = (1, 2)  # pytest alone, and `make test`'s pytest-xdist workers


def suite(repeats, workers=SUITE_WORKERS, timeout_s=3600):
    """The whole test suite, as `make test` runs it, with each number of pytest-xdist workers in one run
    (1 = no xdist: one process, as before), the order alternated between repeats so neither always
    runs on what the other left. The machine's cache is used as it is (target environments and JAX's
    compilation cache; its entry count is recorded before each run); each run gets a fresh stage
    cache. Wall seconds per run, pytest's summary line, and the median over the runs that passed."""
    from pipeline.cli import default_cache_dir

    jax_dir = default_cache_dir() / "jax"
    runs = []
    for i in range(repeats):
        for n in (workers if i % 2 == 0 else workers[::-1]):
            args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            if n > 1:
                args += ["-n", str(n), "--dist", "loadfile", "--no-loadscope-reorder"]  # as the Makefile's test
            entries = sum(1 for p in jax_dir.rglob("*") if p.is_file()) if jax_dir.exists() else 0
            log(f"test suite, {n} worker(s): {' '.join(args[1:])}")
            started = time.perf_counter()
            try:
                proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
                lines, code = proc.stdout.strip().splitlines(), proc.returncode
            except subprocess.TimeoutExpired:
                lines, code = [f"killed after {timeout_s} s"], None
            wall = round(time.perf_counter() - started, 1)
            summary = next((ln.strip("= ") for ln in reversed(lines) if " in " in ln and "passed" in ln),
                           lines[-1] if lines else "")
            runs.append({"workers": n, "wall_s": wall, "summary": summary, "exit_code": code,
                         "jax_entries_at_start": entries})
            log(f"  {wall} s: {summary}")
    passed = {str(n): [r["wall_s"] for r in runs if r["workers"] == n and r["exit_code"] == 0] for n in workers}
    median = {n: statistics.median(walls) if walls else None for n, walls in passed.items()}
    one = median[str(workers[0])]
    return {"runs": runs, "median_wall_s": median,
            "ratio_vs_1_worker": {n: round(v / one, 2) if one and v else None for n, v in median.items()}}


def suite_markdown(s):
    lines = [f"Test suite on {s['machine']['cpu']} ({s['machine']['cores']} cores), {s['date']}, in the order run:", "",
             "| pytest workers | wall (min) | JAX cache entries at start | exit | result |", "|---|---|---|---|---|"]
    for r in s["runs"]:
        lines.append(f"| {r['workers']} | {r['wall_s'] / 60:.1f} | {r['jax_entries_at_start']} | {r['exit_code']} | "
                     f"{r['summary']} |")
    medians = [f"{n} worker(s) {v / 60:.1f} min (× {s['ratio_vs_1_worker'][n]} of 1 worker)"
               for n, v in s["median_wall_s"].items() if v]
    lines += ["", f"Median wall of the passing runs: {', '.join(medians) or 'none passed'}."]
    return "\n".join(lines)


SECTION = Section("The test suite with 1 and 2 workers",
                  "the whole test suite with 1 and 2 pytest-xdist workers, alternated, --repeats times each (about "
                  "20 minutes a repeat on 2 cores)", "suite",
                  lambda args, work, tc: {"repeats": args.repeats, **suite(args.repeats)}, suite_markdown)
