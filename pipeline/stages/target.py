"""target stage: run the deployed model on an emulated device and compare it with the host.

Agreement is measured, not assumed: bit-exact fraction of the raw output elements, max |diff| (in
quantization steps for integer outputs), top-1 agreement and the ids of the samples whose top-1
differs from the host's. A target whose runtime is onnxruntime runs the build's int8 ONNX and is
compared with the host's onnxruntime; the others run the int8 .tflite. The same stage validates a
model file built elsewhere (`edgebuild validate MODEL`). A model the target's runtime refuses is
recorded with the runtime's reason (the gate fails that target; the other targets still run).
"""

import shutil
import tempfile

import numpy as np

from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset
from pipeline.device import targets as targets_mod
from pipeline.device import onnx_info, tflite_info
from pipeline.engine.errors import ModelRefused
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.remote import remote_for
from pipeline.engine.stage import Stage
from pipeline.release.metrics import compare


def deployed_model(config, target):
    """(the model file the target runs, the host's outputs it is compared with): a build's int8 export
    in the target's format, or the model file given to validate."""
    if config.validate.model:
        from pipeline.stages.model_file import copied_name

        return copied_name(config.validate.model), "host_output"
    if targets_mod.model_format(target) == "onnx":
        return "model_int8.onnx", "onnx_int8_output"
    return "model_int8.tflite", "host_output"


def stages(config):
    """One stage per target of validate.targets; the target profile's content is an external input."""
    out = []
    for name in config.validate.targets:
        model, reference = deployed_model(config, targets_mod.load_target(name))
        out.append(Stage(
            f"target:{name}", __name__,
            config=("build.seed", "preprocess", "validate.sample", "validate.shards", "validate.executor"),
            inputs=(model, "dataset.npz", "predictions.npz"), outputs=(f"target-{name}.npz",),
            toolchain=("numpy",), external=lambda config, name=name: _environment(name),
            group="targets", params={"target": name, "model": model, "reference": reference},
        ))
    return out


def _environment(name):
    """The target file's content and how its environment is built (targets.SETUP_REVISION)."""
    target = targets_mod.load_target(name)
    return {"target": target.sha256, "environment": targets_mod.env_key(target)}


def run(cfg, inputs, out_dir, ctx):
    target = targets_mod.load_target(ctx.params["target"])
    pp, sample, shards, seed, progress = cfg.preprocess, cfg.validate.sample, cfg.validate.shards, cfg.build.seed, ctx.progress
    model_path, dataset_path, predictions_path = inputs[ctx.params["model"]], inputs["dataset.npz"], inputs["predictions.npz"]
    info = onnx_info.describe(model_path)
    record = {"target": target.name, "model": ctx.params["model"], "arch": target.arch, "cpu": target.cpu,
              "emulated": target.emulated, "target_sha256": target.sha256, "runtime": target.runtime, "runtime_version": target.runtime_version,
              "tolerances": target.tolerances.__dict__}
    data = load_dataset(dataset_path)
    preds = np.load(predictions_path)
    test = data["test"]
    subset = stratified_subset(data["y"][test], sample, seed)
    idx = test[subset]
    ids = data["ids"][idx]
    record.update(samples=int(len(idx)), sampled=bool(len(idx) < len(test)))
    bar = progress.bar(2, f"target {target.name}", unit="step")
    try:
        targets_mod.lint(target, info)
        root = targets_mod.setup(target, ctx.cache_dir, log=lambda msg: bar.set_postfix_str(msg[:60]),
                                 remote=remote_for(ctx.remote, progress.warn))
        bar.update(1)
        x = onnx_info.model_input(data["x"][idx], pp, info["inputs"][0])
        record["executor"] = _executor(target, cfg.validate.executor, ctx.cache_dir,
                                       log=lambda msg: bar.set_postfix_str(msg[:60]))
        container = ctx.cache_dir if cfg.validate.executor == "container" and target.emulated else None
        outputs, run_info = _run(target, root, model_path, x, out_dir, shards, container=container)
    except ModelRefused as exc:
        progress.warn(str(exc))
        record["refused"] = exc.reason
        atomic_save_npz(out_dir / f"target-{target.name}.npz", ids=ids, outputs=np.zeros((0,), np.float32))
        return record
    finally:
        bar.close()
    names = [str(c) for c in data["class_names"]]
    host_key = ctx.params["reference"]
    record.update(compare(outputs, preds[host_key][subset], data["y"][idx], ids, names))
    record.update(run_info)
    record["isa"] = _isa_agreement(target, root, model_path, x, outputs, data["y"][idx], ids, names, out_dir)
    record["first_difference"] = _first_difference(target, root, model_path, x, outputs, preds[host_key][subset],
                                                   ids, record["isa"], out_dir)
    atomic_save_npz(out_dir / f"target-{target.name}.npz", ids=ids, outputs=outputs)
    return record


def _first_difference(target, root, model_path, x, outputs, host_out, ids, isa, out_dir):
    """Where the target first departs from its twin (an ISA difference) or, when it matches its twin,
    from the build host (runtime drift): the first sample whose outputs differ, run again on both sides
    with every tensor kept, and the first op (in execution order) whose output tensor differs."""
    twin_out = isa.pop("_outputs", None)
    if twin_out is not None and not np.array_equal(outputs, twin_out):
        against, reference = "twin", twin_out
    elif not np.array_equal(outputs, host_out):
        against, reference = "host", host_out
    else:
        return None
    rows = np.flatnonzero((outputs.reshape(len(outputs), -1) != reference.reshape(len(reference), -1)).any(1))
    i = int(rows[0])
    if onnx_info.is_onnx(model_path):
        return {"against": against, "sample": str(ids[i]), "samples_differing": int(len(rows)), "op": None,
                "float_outputs": outputs.dtype.kind == "f",
                "note": "tensors are kept for .tflite models only; the first op is not named for .onnx"}
    work = tempfile.mkdtemp(dir=out_dir, prefix="dump-")
    try:
        mine = targets_mod.dump_tensors(target, root, model_path, x[i : i + 1], work, "target")
        theirs = targets_mod.dump_tensors(target, root, model_path, x[i : i + 1], work, against)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    found = {"against": against, "sample": str(ids[i]), "samples_differing": int(len(rows)),
             "kernels": "builtin (default delegates off, every tensor kept)", "float_outputs": outputs.dtype.kind == "f"}
    if mine is None or theirs is None:
        return {**found, "op": None, "note": "the tensors could not be kept on one side"}
    for index, op, tensors in tflite_info.op_outputs(model_path):
        for t, name in tensors:
            a, b = mine.get(t), theirs.get(t)
            if a is None or b is None or a.shape != b.shape or np.array_equal(a, b):
                continue
            wide = np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64
            diff = np.abs(a.astype(wide) - b.astype(wide))
            return {**found, "op_index": index, "op": op, "tensor": name, "max_abs_diff": diff.max().item(),
                    "fraction_differing": round(float((diff > 0).mean()), 6)}
    return {**found, "op": None, "note": "with the builtin kernels every tensor is equal: the difference comes "
                                         "from a delegate's kernels (XNNPACK)"}


def _run(target, root, model_path, x, out_dir, shards, twin=False, container=None):
    work = tempfile.mkdtemp(dir=out_dir, prefix="work-")
    try:
        return targets_mod.run_sharded(target, root, model_path, x, work, shards=shards, twin=twin, container=container)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _executor(target, kind, cache_dir, log):
    """How the target ran: qemu user-mode on its root filesystem, or its OCI image under podman (the
    image name and id). The twin and the tensor dumps always run outside a container."""
    if not target.emulated:
        return {"kind": "host"}
    if kind == "container":
        from pipeline.device import image

        return image.describe(target, cache_dir, log)
    return {"kind": "qemu-user", "cpu": target.cpu}


def _isa_agreement(target, root, model_path, x, outputs, labels, ids, names, out_dir):
    """Target vs its x86_64 twin (the same runtime, version and numpy, run on the build host): what the
    ARM instruction set changes, apart from runtime-version drift. None-like record without a twin."""
    if not target.twin_platforms:
        return {"twin": None, "note": f"no x86_64 twin: {target.path} pins no twin wheels (twin_platforms), so ISA "
                                      "and runtime-version differences are not told apart"}
    try:
        twin_out, twin_info = _run(target, root, model_path, x, out_dir, 1, twin=True)
    except ModelRefused as exc:
        return {"twin": None, "refused": exc.reason}
    agreement = compare(outputs, twin_out, labels, ids, names)
    return {
        "twin": {k: twin_info[k] for k in ("runtime", "runtime_version", "machine", "python")},
        **{k: agreement[k] for k in ("bitexact_fraction", "max_abs_diff", "top1_agreement", "flipped_ids")},
        "_outputs": twin_out,  # for _first_difference; not recorded
    }
