"""What every benchmark section shares: where the checkout is, how to run the edgebuild CLI with a
stage cache of its own, medians with their spread, the machine's description, and `Section`, the
record each section module declares (bench/sections/__init__.py collects them)."""

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

REPO = Path(__file__).resolve().parent.parent
SIGNS = REPO.parent / "shared" / "datasets" / "sign-language-digits" / "Dataset"


class Section(NamedTuple):
    heading: str  # in bench/RESULTS.md
    what: str  # in --help
    key: str  # in results.json
    measure: Callable  # (args, work, targets_cache) -> the section's figures
    markdown: Callable  # the section's figures -> Markdown
    at: str | None = None  # what --at names, where the section needs it (in the usage error)
    replaces: tuple = ()  # older keys of results.json that this section's figures supersede (removed on write)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def edgebuild(args, cache, check=True, repo=REPO):
    """Run the CLI of the checkout `repo` (its `pipeline` comes first on sys.path, and its stage processes
    run the same code) with the stage cache `cache`; (CompletedProcess, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["EDGEBUILD_CACHE"] = str(cache)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--quiet", *args], cwd=repo, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if check and proc.returncode not in (0, 1):
        raise SystemExit(f"bench: edgebuild {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc, wall


def sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def median_spread(values):
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def fresh_cache(work, name, targets_cache):
    cache = work / name
    cache.mkdir()
    (cache / "targets").symlink_to(targets_cache)  # target environments are shared; stages are not
    return cache


def machine_targets():
    """The machine's own target environments (edgebuild's default cache), set up once and reused."""
    from pipeline.cli import default_cache_dir

    return default_cache_dir() / "targets"


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version()}


def spread_cell(d):
    """A median_spread as one table cell: median (min–max)."""
    return f"{d['median']:.1f} ({d['min']:.1f}–{d['max']:.1f})"
