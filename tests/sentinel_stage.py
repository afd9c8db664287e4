"""A stage module for the cache tests: it records every execution of its body in a counter file."""

from pathlib import Path


def run_stage(config, inputs, out_dir, progress, counter):
    with open(counter, "a") as f:
        f.write("ran\n")
    (Path(out_dir) / "out.txt").write_text(f"epochs={config.train.epochs}")
    return {"epochs": config.train.epochs}
