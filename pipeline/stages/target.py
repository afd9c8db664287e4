"""target stage: run the int8 artifact on an emulated device and compare it with the host.

Agreement is measured, not assumed: bit-exact fraction of int8 output elements, max |diff| in int8
steps, top-1 agreement and the ids of the samples whose top-1 differs from the host's.
"""

import shutil
import tempfile

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset
from pipeline.device import targets as targets_mod
from pipeline.device import tflite_info
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.release.metrics import compare


def stages(config):
    """One stage per target of validate.targets; the target profile's content is an external input."""
    return [
        Stage(
            f"target:{name}", __name__, config=("build.seed", "preprocess", "validate.sample", "validate.shards"),
            inputs=("model_int8.tflite", "dataset.npz", "predictions.npz"), outputs=(f"target-{name}.npz",),
            toolchain=("numpy",), external=lambda config, name=name: {"target": targets_mod.load_target(name).sha256},
            group="targets", params={"target": name},
        )
        for name in config.validate.targets
    ]


def run(cfg, inputs, out_dir, ctx):
    target = targets_mod.load_target(ctx.params["target"])
    pp, sample, shards, seed, progress = cfg.preprocess, cfg.validate.sample, cfg.validate.shards, cfg.build.seed, ctx.progress
    model_path, dataset_path, predictions_path = inputs["model_int8.tflite"], inputs["dataset.npz"], inputs["predictions.npz"]
    info = tflite_info.describe(model_path)
    targets_mod.lint(target, info)
    bar = progress.bar(2, f"target {target.name}", unit="step")
    root = targets_mod.setup(target, ctx.cache_dir, log=lambda msg: bar.set_postfix_str(msg[:60]))
    bar.update(1)

    data = load_dataset(dataset_path)
    preds = np.load(predictions_path)
    test = data["test"]
    subset = stratified_subset(data["y"][test], sample, seed)
    idx = test[subset]
    qin = info["inputs"][0]
    x = preprocess.to_int8(data["x"][idx], pp, qin["scale"], qin["zero_point"])
    work = tempfile.mkdtemp(dir=out_dir, prefix="work-")
    try:
        outputs, run_info = targets_mod.run_sharded(target, root, model_path, x, work, shards=shards)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bar.update(1)
    bar.close()
    ids = data["ids"][idx]
    record = compare(outputs, preds["int8_output"][subset], data["y"][idx], ids, [str(c) for c in data["class_names"]])
    record.update(run_info)
    record.update({
        "target": target.name, "arch": target.arch, "cpu": target.cpu, "emulated": target.emulated,
        "target_sha256": target.sha256, "samples": int(len(idx)), "sampled": bool(len(idx) < len(test)),
        "tolerances": target.tolerances.__dict__,
    })
    atomic_save_npz(out_dir / f"target-{target.name}.npz", ids=ids, outputs=outputs)
    return record
