"""`python -m bench --only bytecode --at BUILD_DIR`: each emulated target of a finished build with and
without its environment's compiled bytecode."""

import statistics
import tempfile
from pathlib import Path

from bench.common import Section, log, median_spread


def emulated_bytecode(build_dir, repeats, cache_dir):
    """Each emulated target of a finished build, validating its model on the whole test set as the
    target stage does (validate.shards processes), with the environment's ahead-of-time compiled
    bytecode and without it (every module compiled at start, as before), interleaved; outputs checked
    byte-identical to each other and to the build's own target-NAME.npz."""
    import numpy as np

    import pipeline.stages  # noqa: F401 (declares the sections of declared stages the build may have)
    from pipeline.data.splits import load_dataset
    from pipeline.device import environment, fanout, onnx_info, targets
    from pipeline.engine import config as config_mod
    from pipeline.release import manifest as manifest_mod

    build_dir = Path(build_dir)
    manifest = manifest_mod.read(build_dir / "manifest.json")
    cfg = config_mod.from_dict(manifest["config"], f"{build_dir}/manifest.json")
    data = load_dataset(build_dir / "dataset.npz")
    images = data["x"][data["test"]]
    rows = {}
    for name, rec in sorted(manifest["metrics"]["targets"].items()):
        target = targets.load_target(name)
        if not target.emulated or rec.get("refused") or rec.get("sampled"):
            continue
        root = environment.setup(target, cache_dir, log=log)
        model = build_dir / rec.get("model", "model_int8.tflite")
        x = onnx_info.model_input(images, cfg.preprocess, onnx_info.describe(model)["inputs"][0])
        runs = {True: [], False: []}
        outputs = {}
        for _ in range(repeats):
            for bytecode in (False, True):
                with tempfile.TemporaryDirectory() as work:
                    out, info = fanout.run_sharded(target, root, model, x, work, cfg.validate.shards, bytecode=bytecode)
                runs[bytecode].append(info)
                outputs.setdefault(bytecode, out)
                assert np.array_equal(out, outputs[bytecode])
        built = np.load(build_dir / f"target-{name}.npz")["outputs"]
        before, after = (median_spread([i["wall_seconds"] for i in runs[b]]) for b in (False, True))
        rows[name] = {
            "images": int(len(x)), "shards": cfg.validate.shards,
            "wall_s_without_bytecode": before, "wall_s_with_bytecode": after,
            "ratio": round(after["median"] / before["median"], 3),
            "images_per_s_per_process": {
                "without_bytecode": statistics.median(i["images_per_s"] for i in runs[False]),
                "with_bytecode": statistics.median(i["images_per_s"] for i in runs[True])},
            "outputs_identical": bool(np.array_equal(outputs[False], outputs[True])),
            "identical_to_the_builds_outputs": bool(np.array_equal(outputs[True], built)),
        }
        log(f"{name}: wall {before['median']:.2f} s -> {after['median']:.2f} s with bytecode")
    return {"build": str(build_dir), "repeats": repeats, "targets": rows}


def _measure(args, work, targets_cache):
    from pipeline.cli import default_cache_dir

    return emulated_bytecode(args.at, args.repeats, default_cache_dir())


def emulated_bytecode_markdown(e):
    lines = ["| target | images | wall without bytecode (s) | with (s) | ratio | outputs identical |", "|---|---|---|---|---|---|"]
    for name, r in e["targets"].items():
        a, b = r["wall_s_without_bytecode"], r["wall_s_with_bytecode"]
        lines.append(f"| {name} | {r['images']} | {a['median']:.2f} ({a['min']:.2f}–{a['max']:.2f}) | "
                     f"{b['median']:.2f} ({b['min']:.2f}–{b['max']:.2f}) | {r['ratio']:.2f} | "
                     f"{'yes' if r['outputs_identical'] and r['identical_to_the_builds_outputs'] else 'NO'} |")
    return "\n".join(lines)


SECTION = Section("Emulated targets with and without compiled bytecode",
                  "each emulated target of the finished build --at with and without its compiled bytecode",
                  "emulated_bytecode", _measure, emulated_bytecode_markdown, at="BUILD_DIR")
