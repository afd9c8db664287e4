"""target stage: run the int8 artifact on an emulated device and compare it with the host.

Agreement is measured, not assumed: bit-exact fraction of int8 output elements, max |diff| in int8
steps, top-1 agreement and the ids of the samples whose top-1 differs from the host's.
"""

import shutil
import tempfile

import numpy as np

from .. import preprocess
from .. import targets as targets_mod
from .. import tflite_info
from .data import load_dataset
from .evaluate import accuracy_record


def stratified_subset(labels, n, seed):
    """At most n indices into `labels`, the same share of every class, in a fixed order."""
    if not n or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    per = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    chosen = []
    while len(chosen) < n:
        for c in classes:
            if per[c] and len(chosen) < n:
                chosen.append(per[c].pop(0))
    return np.sort(np.asarray(chosen))


def compare(target_out, host_out, labels, ids, class_names):
    diff = np.abs(target_out.astype(np.int32) - host_out.astype(np.int32))
    t1, h1 = target_out.argmax(1), host_out.argmax(1)
    rec = accuracy_record(t1, labels, class_names)
    rec.update(
        bitexact_fraction=round(float((diff == 0).mean()), 6),
        max_abs_diff=int(diff.max()) if diff.size else 0,
        top1_agreement=round(float((t1 == h1).mean()), 6),
        flipped_ids=[str(s) for s in ids[t1 != h1]],
    )
    return rec


def run(target_name, pp, sample, shards, seed, model_path, dataset_path, predictions_path, out_dir, cache_dir, progress):
    target = targets_mod.load_target(target_name)
    info = tflite_info.describe(model_path)
    targets_mod.lint(target, info)
    bar = progress.bar(2, f"target {target.name}", unit="step")
    root = targets_mod.setup(target, cache_dir, log=lambda msg: bar.set_postfix_str(msg[:60]))
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
    record.update(
        target=target.name,
        arch=target.arch,
        cpu=target.cpu,
        emulated=target.emulated,
        target_sha256=target.sha256,
        samples=int(len(idx)),
        sampled=bool(len(idx) < len(test)),
        tolerances=target.tolerances.__dict__,
    )
    np.savez(out_dir / f"target-{target.name}.npz", ids=ids, outputs=outputs)
    return record


def run_stage(config, inputs, out_dir, progress, target, cache_dir):
    return run(
        target, config.preprocess, config.validate.sample, config.validate.shards, config.build.seed, inputs["model_int8.tflite"], inputs["dataset.npz"],
        inputs["predictions.npz"], out_dir, cache_dir, progress,
    )
