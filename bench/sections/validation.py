"""The whole run's on-target validation cost (`python -m bench`): the default build's int8 model on the
host interpreter and the emulated aarch64 targets, 1 vs 2 shards."""

import json

from bench.common import log, median_spread, spread_cell

RUNTIMES = ("host", "rpi4-bookworm-tflite", "rpi5-litert")


def validation_cost(build_dir, repeats, targets_cache, work):
    from pipeline.data import preprocess
    from pipeline.device import tflite_info
    from pipeline.device import environment, fanout
    from pipeline.device import targets as targets_mod
    from pipeline.engine.config import PreprocessConfig
    from pipeline.data.splits import load_dataset

    model = build_dir / "model_int8.tflite"
    info = tflite_info.describe(model)
    q = info["inputs"][0]
    data = load_dataset(build_dir / "dataset.npz")
    pp = PreprocessConfig(**json.loads((build_dir / "manifest.json").read_text())["config"]["preprocess"])
    x = preprocess.to_int8(data["x"][data["test"]], pp, q["scale"], q["zero_point"])
    result = {"test_images": int(len(x))}
    for name in RUNTIMES:
        target = targets_mod.load_target(name)
        root = environment.setup(target, targets_cache.parent, log=lambda m: None)
        row = {"runtime": f"{target.runtime} {target.runtime_version}", "cpu": target.cpu}
        for shards in (1, 2):
            ips, walls = [], []
            for r in range(repeats):
                _, run_info = fanout.run_sharded(target, root, model, x, work / f"v-{name}-{shards}-{r}", shards)
                ips.append(run_info["images_per_s"])
                walls.append(run_info["wall_seconds"])
            row[f"shards{shards}_images_per_s"] = median_spread(ips)
            row[f"shards{shards}_wall_s"] = median_spread(walls)
        # wall time includes starting the interpreter (under qemu: seconds of Python and numpy imports)
        row["sharding_speedup_wall"] = round(row["shards1_wall_s"]["median"] / row["shards2_wall_s"]["median"], 3)
        row["sharding_speedup_throughput"] = round(
            row["shards2_images_per_s"]["median"] / row["shards1_images_per_s"]["median"], 3)
        result[name] = row
        log(f"validation {name}: {row['shards1_images_per_s']['median']:.0f} / {row['shards2_images_per_s']['median']:.0f} img/s")
    host = result["host"]["shards1_images_per_s"]["median"]
    for name in RUNTIMES[1:]:
        result[name]["fraction_of_host"] = round(result[name]["shards1_images_per_s"]["median"] / host, 4)
    return result


def validation_markdown(v):
    out = [f"On-target validation of the {v['test_images']} test images (int8, batch 1). Images/s counts "
           "inference only (all shards together); wall time includes starting the interpreter:", "",
           "| runtime | images/s, 1 shard | images/s, 2 shards | wall s, 1 shard | wall s, 2 shards | 2 shards: throughput × | 2 shards: wall × | 1 shard vs host |",
           "|---|---|---|---|---|---|---|---|"]
    for name in RUNTIMES:
        x = v[name]
        out.append(f"| {name} ({x['runtime']}) | {spread_cell(x['shards1_images_per_s'])} | {spread_cell(x['shards2_images_per_s'])} | "
                   f"{spread_cell(x['shards1_wall_s'])} | {spread_cell(x['shards2_wall_s'])} | {x['sharding_speedup_throughput']:.2f}× | "
                   f"{x['sharding_speedup_wall']:.2f}× | "
                   f"{100 * x.get('fraction_of_host', 1):.2f}% |")
    return "\n".join(out)
