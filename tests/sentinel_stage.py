"""A stage module for the cache tests: it records every execution of its body in a counter file."""

from pathlib import Path


def run(cfg, inputs, out_dir, ctx):
    with open(ctx.params["counter"], "a") as f:
        f.write("ran\n")
    (Path(out_dir) / ctx.params.get("out", "out.txt")).write_text(f"epochs={cfg.train.epochs}")
    return {"epochs": cfg.train.epochs}
