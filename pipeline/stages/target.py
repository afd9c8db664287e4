"""target stage: run the deployed model on a device target (an emulated Linux board, a microcontroller's
runtime, an NPU's compiler) and compare it with the host.

Agreement is measured, not assumed: bit-exact fraction of the raw output elements, max |diff| (in
quantization steps for integer outputs), top-1 agreement and the ids of the samples whose top-1
differs from the host's. A target whose runtime is onnxruntime runs the build's int8 ONNX and is
compared with the host's onnxruntime; the others run the int8 .tflite. The same stage validates a
model file built elsewhere (`edgebuild validate MODEL`). A model the target's runtime refuses is
recorded with the runtime's reason (the gate fails that target; the other targets still run).
"""

import shutil
import tempfile
from pathlib import Path

import numpy as np

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset
from pipeline.device import environment, fanout, layer_error, oplint
from pipeline.device import targets as targets_mod
from pipeline.device import onnx_info, tflite_info
from pipeline.engine import text
from pipeline.engine.errors import InputError, ModelRefused, StageError
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.remote import remote_for
from pipeline.engine.stage import Stage
from pipeline.release import tasks
from pipeline.release.metrics import compare, finite_max, with_top_k


def deployed_model(config, target):
    """(the model file the target runs, the host's outputs it is compared with): a build's int8 export
    in the target's format, or the model file given to validate."""
    if config.validate.model:
        from pipeline.stages.model_file import copied_name

        return copied_name(config.validate.model), "host_output"
    if targets_mod.model_format(target) == "onnx":
        return "model_int8.onnx", "onnx_int8_output"
    return "model_int8.tflite", "host_output"


def board_target(config):
    """The target validate.boards run (None without boards): validate.board_target, else the one emulated
    Linux target of validate.targets."""
    if not config.validate.boards:
        return None
    if config.validate.board_target:
        if config.validate.board_target not in config.validate.targets:
            raise InputError(f"validate.board_target must be one of validate.targets ({', '.join(config.validate.targets)}); "
                             f"received {config.validate.board_target!r}. Add it to the targets (--target).")
        return config.validate.board_target
    linux = [n for n in config.validate.targets if targets_mod.load_target(n).kind == "linux"
             and targets_mod.load_target(n).emulated]
    if len(linux) != 1:
        raise InputError(f"validate.boards run one Linux target; validate.targets has {len(linux)} "
                         f"({', '.join(linux) or 'none'}). Set validate.board_target (or pass --target NAME with --board).")
    return linux[0]


def stage_name(target):
    return f"target:{target}"


def stages(config):
    """One stage per target of validate.targets; the target profile's content is an external input.
    Each can run in shards (`edgebuild validate BUILD --target T --shard i/N`, merged by `edgebuild merge`)."""
    out = []
    on_boards = board_target(config)
    for name in config.validate.targets:
        target = targets_mod.load_target(name)
        boards = {"boards": list(config.validate.boards), "ssh_config": config.validate.ssh_config,
                  "board_python": config.validate.board_python} if name == on_boards else {}
        model, reference = deployed_model(config, target)
        if model == "model_int8.onnx" and "onnx" not in config.export.formats:
            raise InputError(f"target {name} runs the int8 ONNX, and export.formats = {config.export.formats} makes none; "
                             f"received both in the config. Add \"onnx\" to export.formats, or remove {name} from "
                             "validate.targets.")
        made = targets_mod.kind_module(target.kind).outputs(target)  # a compiled model, for an NPU
        out.append(Stage(
            stage_name(name), __name__,
            config=("build.seed", "preprocess", "validate.sample", "validate.shards", "validate.executor",
                    "validate.isa_samples", "validate.kernels", "task.kind", "task.top_k"),
            inputs=(model, "dataset.npz", "predictions.npz", *LAYERS), outputs=(f"target-{name}.npz", *made),
            optional=made,
            # the int8 ONNX is absent when export's conversion failed: the target is refused, naming why; the
            # float references of the per-layer report are absent when no float model was given to validate
            optional_inputs=((model,) if model == "model_int8.onnx" else ()) + LAYERS,
            toolchain=("numpy", *HOST_READER[targets_mod.model_format(target)], *KIND_TOOLCHAIN.get(target.kind, ())),
            external=lambda config, name=name: _environment(name),
            group="targets", params={"target": name, "model": model, "reference": reference,
                                     "validation": bool(config.validate.model), **boards}, shardable=True,
            cacheable=not boards,  # a board run proves the board as it is now: never a cache hit
        ))
    return out


def publish(records, config, build_dir):
    """The manifest's `metrics.targets` (each target's record) and each target's outputs (and its own
    artifact: an NPU's compiled model)."""
    from pipeline.release.manifest import artifact

    targets, artifacts = {}, {}
    for record in records.values():
        name = record["target"]
        targets[name] = {k: v for k, v in record.items() if k not in ("stage", "key", "outputs")}
        artifacts[f"target_{name}"] = artifact(build_dir, f"target-{name}.npz")
        for made in record.get("outputs") or {}:
            if made != f"target-{name}.npz":
                artifacts[f"compiled_{name}"] = artifact(build_dir, made, for_target=name)
    return {"metrics": {"targets": targets}, "artifacts": artifacts}


LAYERS = ("layers.npz",)  # the float model's activations the per-layer report compares with (layer_refs)

# what the kinds that run on the build host load there (a Linux target's runtime is pinned by its file)
# and what reads the model file on the build host (its ops and tensors) for every kind
HOST_READER = {"tflite": ("ai-edge-litert",), "onnx": ("onnx",)}
KIND_TOOLCHAIN = {"tflm": ("tflite-micro", "ai-edge-litert"), "ethos-u": ("tflite-micro", "ai-edge-litert", "ethos-u-vela")}


def _with_kernels(target, kernels):
    """The target with validate.kernels in place of its file's kernels, on a board whose TFLite runtime
    has them (a device build that uses other kernels than the target file says); others keep theirs."""
    import dataclasses

    if kernels and kernels in targets_mod.KERNELS.get((target.kind, target.runtime), ()):
        return dataclasses.replace(target, kernels=kernels)
    return target


def _environment(name):
    """The target file's content and how its environment is built (environment.SETUP_REVISION)."""
    target = targets_mod.load_target(name)
    return {"target": target.sha256, "environment": environment.env_key(target)}


def _samples(cfg, data):
    """Indices into the dataset of the samples this target runs (validate.sample of the test split)."""
    test = data["test"]
    subset = stratified_subset(data["y"][test], cfg.validate.sample, cfg.build.seed)
    return test[subset], subset


def run(cfg, inputs, out_dir, ctx):
    """The whole test set (merged from one part), or with ctx.params["shard"] = [i, n] the i-th of n
    contiguous parts, written to shard.npz for `merge`."""
    target = _with_kernels(targets_mod.load_target(ctx.params["target"]), cfg.validate.kernels)
    data = load_dataset(inputs["dataset.npz"])
    idx, subset = _samples(cfg, data)
    shard = ctx.params.get("shard")
    if shard:
        if shard[1] > len(idx):
            raise InputError(f"--shard i/N splits the {len(idx)} test samples into N parts, so N must be at most "
                             f"{len(idx)}; received {shard[0]}/{shard[1]}. Use fewer shards.")
        part = np.array_split(np.arange(len(idx)), shard[1])[shard[0] - 1]
        idx, subset = idx[part], subset[part]
    if ctx.params["model"] not in inputs:  # export made no int8 ONNX (the gate's "ONNX export" check says why)
        record = {"samples": int(len(idx)), "refused": "no int8 ONNX to run: export could not make it (see the "
                                                        "'ONNX export' check)"}
        arrays = {"ids": data["ids"][idx], "outputs": np.zeros((0,), np.float32)}
    else:
        host_out = flat(np.load(inputs["predictions.npz"])[ctx.params["reference"]][subset])
        layers = inputs.get("layers.npz") if not shard or shard[0] == 1 else None  # (one part reports them)
        record, arrays = _measure(cfg, target, inputs[ctx.params["model"]], data, idx, host_out, out_dir, ctx, layers)
    if shard:
        atomic_save_npz(out_dir / "shard.npz", **arrays)
        return record
    return merge(cfg, inputs, [(record, arrays)], out_dir, ctx)


def _measure(cfg, target, model_path, data, idx, host_out, out_dir, ctx, layers=None):
    """Run the target (and its x86 twin) on the samples `idx`: (what a part records, its arrays). The
    first difference is looked for within the part: against the twin when they differ, else the host.
    With `layers` (the float references), the per-layer report on the target too."""
    info = onnx_info.describe(model_path)
    ids = data["ids"][idx]
    record = {"samples": int(len(idx))}
    bar = ctx.progress.bar(2, f"target {target.name}", unit="step")
    try:
        oplint.lint(target, info)
        def said(msg):  # set-up steps (a root filesystem built, an environment restored) are lines in a CI log
            bar.set_postfix_str(msg[:60])
            ctx.progress.line(msg)

        root = environment.setup(target, ctx.cache_dir, log=said, remote=remote_for(ctx.remote, ctx.progress.warn))
        bar.update(1)
        x = onnx_info.model_input(data["x"][idx], cfg.preprocess, info["inputs"][0])
        boards = _boards(ctx.params.get("boards"), ctx.params.get("ssh_config"), ctx.params.get("board_python"),
                         target, said)
        record["executor"] = ({"kind": "ssh", "boards": [b.describe() for b in boards]} if boards else
                              _executor(target, cfg.validate.executor, ctx.cache_dir,
                                        log=lambda msg: bar.set_postfix_str(msg[:60])))
        container = ctx.cache_dir if record["executor"]["kind"] == "container" else None
        reference = _reference_samples(cfg, target, info)
        references = None if layers is None or onnx_info.is_onnx(model_path) else layer_error.load_references(layers)
        keep = _layer_inputs(references, x)
        outputs, record["run"], ref_out, kept = _run(target, root, model_path, x, out_dir, cfg.validate.shards,
                                                     container=container, reference=reference, boards=boards,
                                                     keep=keep)
        outputs, ref_out = flat(outputs), flat(ref_out)
    except ModelRefused as exc:
        ctx.progress.warn(str(exc))
        reason = exc.reason + (_crash_note(target, root, model_path, x, out_dir) if exc.crashed else "")
        return {**record, "refused": reason}, {"ids": ids, "outputs": np.zeros((0,), np.float32)}
    finally:
        bar.close()
    isa, twin_out, twin_ref = _isa_run(target, root, model_path, x, out_dir, cfg.validate.shards, reference)
    twin_out, twin_ref = flat(twin_out), flat(twin_ref)
    record["isa"] = isa
    lost = {r["lost_on"] for r in record["run"].get("reruns", [])}
    board = next((b for b in boards if b.describe()["board"] not in lost), None)  # one still reachable
    record["first_difference"] = _first_difference(target, root, model_path, x, outputs, host_out, ids, twin_out,
                                                   out_dir, board)
    if references is not None:
        record["layers"] = _layer_report(target, root, model_path, references, out_dir, board, kept)
    arrays = {"ids": ids, "outputs": outputs}
    if twin_out is not None:
        arrays["twin_outputs"] = twin_out
    if ref_out is not None and twin_ref is not None:
        arrays.update(reference_outputs=ref_out, twin_reference_outputs=twin_ref)
    return record, arrays


def _layer_inputs(references, x):
    """(the per-layer subset's inputs, the tensor indices to keep) for the run to keep every tensor of, in
    its first process; None when there is no report to make (`references` None: an .onnx, or no float
    model) or the subset is not the run's dtype and shape (then it runs in a process of its own)."""
    if references is None:
        return None
    subset, _, _, refs = references
    if subset.dtype != x.dtype or subset.shape[1:] != x.shape[1:]:
        return None
    return subset, set(refs)


def _layer_report(target, root, model_path, references, out_dir, board=None, kept=None):
    """The per-layer report on the target: the fixed subset (`references`, from layer_error.load_references)
    run on it with every tensor kept (its builtin kernels, or the reference ones it is set to; TFLM's own),
    against the float model's activations. `kept`: those tensors as the run kept them ({index: array}, or
    the runtime's reason when it could not); None: a run of their own."""
    x, input_snr, names, refs = references
    if kept is not None:
        dumps = kept
    else:
        work = tempfile.mkdtemp(dir=out_dir, prefix="layers-")
        try:
            dumps = fanout.dump_tensors(target, root, model_path, x, work, "target", runner=board, count=len(x),
                                        only=set(refs))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    where = f"{target.name}: {target.runtime} {target.runtime_version}, " + (
        "reference kernels" if target.kind != "linux" or target.kernels == "reference" else "builtin kernels")
    if dumps is None or isinstance(dumps, str):
        return {"samples": int(len(x)), "where": where, "tensors": [], "worst": [],
                "note": "the target could not keep every tensor" + (f": {text.clip(dumps, 300)}" if dumps else "")}
    return layer_error.summary(layer_error.report(model_path, dumps, refs, names, input_snr), int(len(x)), where)


def _crash_note(target, root, model_path, x, out_dir):
    """After the runtime crashed on a Linux board: whether its reference kernels run the same model (one
    sample), which tells a crash in the optimized kernels from one in the interpreter, and gives the user a
    way to validate meanwhile."""
    import dataclasses

    if target.kind != "linux" or target.kernels == "reference" or \
            "reference" not in targets_mod.KERNELS.get((target.kind, target.runtime), ()):
        return ""
    try:
        _run(dataclasses.replace(target, kernels="reference"), root, model_path, x[:1], out_dir, 1)
    except (ModelRefused, StageError):
        return "; it crashes on the runtime's reference kernels too"
    return f"; its reference kernels run it, its {target.kernels} kernels do not (validate.kernels = \"reference\")"


def _reference_samples(cfg, target, info):
    """How many samples the ISA check runs on reference kernels: validate.isa_samples on a Linux board
    whose TFLite runtime has other production kernels and that has an x86 twin (0 otherwise: onnxruntime
    has no reference kernels, and a microcontroller's kernels are the reference ones already)."""
    production = target.kind == "linux" and target.kernels != "reference" and targets_mod.model_format(target) == "tflite"
    return cfg.validate.isa_samples if production and target.has_twin and info.get("format") == "tflite" else 0


def merge(cfg, inputs, parts, out_dir, ctx):
    """The target's record and output file from its parts [(record, arrays)], in order: they must
    cover the test samples exactly once. Agreement is computed over the whole set, as one run would."""
    target = _with_kernels(targets_mod.load_target(ctx.params["target"]), cfg.validate.kernels)
    data = load_dataset(inputs["dataset.npz"])
    idx, subset = _samples(cfg, data)
    ids = data["ids"][idx]
    _check_parts(target, parts)
    got = np.concatenate([arrays["ids"] for _, arrays in parts])
    if len(got) != len(ids) or not np.array_equal(got, ids):
        have = {str(i) for i in got}
        missing, extra = [str(i) for i in ids if str(i) not in have], len(got) - len(set(have))
        raise InputError(
            f"the shards of target {target.name} must cover its {len(ids)} test samples exactly once, in order; "
            f"they hold {len(got)} ({len(missing)} missing, {extra} repeated). Run every shard i/N of one N.")
    record = {"target": target.name, "kind": target.kind, "model": ctx.params["model"], "arch": target.arch,
              "cpu": target.cpu, "emulated": target.emulated, "target_sha256": target.sha256, "runtime": target.runtime,
              "runtime_version": target.runtime_version, "kernels": target.kernels,
              "tolerances": target.tolerances.__dict__, "budget": dict(target.budget),
              "samples": int(len(idx)), "sampled": bool(len(idx) < len(data["test"]))}
    if target.kind != "linux" and targets_mod.model_format(target) == Path(ctx.params["model"]).suffix.lstrip("."):
        work = Path(tempfile.mkdtemp(dir=out_dir, prefix="finish-"))
        try:
            extra, _ = targets_mod.kind_module(target.kind).finish(target, inputs[ctx.params["model"]], out_dir, work,
                                                                   ctx.progress.line)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        refused = (extra.get("npu") or {}).get("refused")
        if refused and ctx.params.get("validation"):  # a file given to validate: the user's input is refused
            raise InputError(f"target {target.name}: Vela refuses the model: {refused} Change the model or the "
                             "target's NPU configuration.")
        record.update(extra)
    if len(parts) > 1:
        record["parts"] = [{"samples": r["samples"], **{k: r["run"][k] for k in ("wall_seconds", "inference_seconds",
                                                                                  "images_per_s")}}
                           for r, _ in parts if "run" in r]
    refused = next((r["refused"] for r, _ in parts if "refused" in r), None)
    if refused is not None:
        record["refused"] = refused
        atomic_save_npz(out_dir / f"target-{target.name}.npz", ids=ids, outputs=np.zeros((0,), np.float32))
        return record
    first = parts[0][0]
    outputs = np.concatenate([arrays["outputs"] for _, arrays in parts])
    host_out = flat(np.load(inputs["predictions.npz"])[ctx.params["reference"]][subset])
    if outputs.shape != host_out.shape:
        raise InputError(f"the shards of target {target.name} must hold one output per class for each test sample "
                         f"{host_out.shape}; they hold {outputs.shape}. Run the shards again.")
    names = [str(c) for c in data["class_names"]]
    labels = data["y"][idx]
    record.update(compare(outputs, host_out, labels, ids, names))
    with_top_k(record, outputs, labels, cfg.task.top_k)  # (raw outputs: dequantizing keeps their order)
    scores = None
    task = tasks.get(cfg.task.kind)
    if task:  # the task's own figures replace top-1 accuracy and agreement
        scores = _task_compare(task, record, inputs[ctx.params["model"]], data, idx, outputs,
                               host_out, cfg)
    record["executor"] = first["executor"]
    record.update(_merged_run([r["run"] for r, _ in parts], len(idx)))
    record["kernels"] = target.kernels  # (the run's own "kernels" is the validator's flag)
    record["isa"] = dict(first["isa"])
    twin_out = None
    if all("twin_outputs" in arrays for _, arrays in parts):
        twin_out = np.concatenate([arrays["twin_outputs"] for _, arrays in parts])
        agreement = compare(outputs, twin_out, labels, ids, names)
        shared = ("bitexact_fraction", "max_abs_diff") + (("top1_agreement", "flipped_ids") if scores is None else ())
        record["isa"].update({k: agreement[k] for k in shared})
    if all("reference_outputs" in arrays for _, arrays in parts):
        mine = np.concatenate([arrays["reference_outputs"] for _, arrays in parts])
        theirs = np.concatenate([arrays["twin_reference_outputs"] for _, arrays in parts])
        same = mine.reshape(len(mine), -1) == theirs.reshape(len(theirs), -1)
        wide = np.abs(mine.astype(np.float64) - theirs.astype(np.float64))
        record["isa"]["reference"] = {"kernels": "reference", "samples": int(len(mine)),
                                      "bitexact_fraction": round(float(same.mean()), 6) if same.size else 1.0,
                                      "max_abs_diff": finite_max(wide)}
    record["first_difference"] = _first_of([r["first_difference"] for r, _ in parts], outputs, twin_out, host_out)
    if "layers" in first:
        record["layers"] = first["layers"]
    atomic_save_npz(out_dir / f"target-{target.name}.npz", ids=ids, outputs=outputs,
                    **({} if scores is None else {"scores": scores}))
    return record


def flat(outputs):
    """Outputs as (samples, values): a model whose output has more axes (an autoencoder's (N, 5, 128)
    reconstruction) is compared value by value, as a classifier's (N, classes) is; None stays None."""
    return None if outputs is None else outputs.reshape(len(outputs), -1)


def _task_compare(task, record, model_path, data, idx, outputs, host_out, cfg):
    """A task other than classification: its figures (from the dequantized outputs and the float inputs)
    replace the record's top-1 ones; returns the target's per-sample scores."""
    info = onnx_info.describe(model_path)
    x = preprocess.float_input(data["x"][idx], cfg.preprocess, info["inputs"][0])
    out_q = info["outputs"][0]
    figures, scores = task.compare(preprocess.dequantize(outputs, out_q), preprocess.dequantize(host_out, out_q), x,
                                   data["y"][idx], data["groups"][idx] if "groups" in data else None)
    for key in ("accuracy", "per_class", "top1_agreement", "flipped_ids"):
        record.pop(key, None)
    record.update(figures)
    return scores


RUN_NUMBERS = ("shards", "batch", "threads", "wall_seconds", "inference_seconds")
RUN_TEXT = ("runtime", "runtime_version", "machine", "python")


def _check_parts(target, parts):
    """Each part holds what a shard run writes, with the types and shapes merge reads: a crafted or damaged
    part is refused in one line (exit 3), never a traceback."""
    def part_ok(record, arrays):
        ids, outputs = arrays.get("ids"), arrays.get("outputs")
        if not (isinstance(record.get("samples"), int) and isinstance(ids, np.ndarray) and ids.ndim == 1
                and ids.dtype.kind in "US" and isinstance(outputs, np.ndarray)):
            return False
        if "refused" in record:
            return isinstance(record["refused"], str)
        run = record.get("run")
        if not (isinstance(run, dict) and all(isinstance(run.get(k), (int, float)) and not isinstance(run.get(k), bool)
                                              for k in RUN_NUMBERS) and all(isinstance(run.get(k), str) for k in RUN_TEXT)
                and isinstance(record.get("executor"), dict) and isinstance(record.get("isa"), dict)
                and isinstance(record.get("first_difference"), (dict, type(None)))):
            return False
        same = [arrays[k] for k in ("twin_outputs", "reference_outputs", "twin_reference_outputs") if k in arrays]
        return outputs.ndim == 2 and len(outputs) == len(ids) == record["samples"] and all(
            isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[1] == outputs.shape[1] for a in same)

    bad = [i for i, (record, arrays) in enumerate(parts, 1) if not part_ok(record, arrays)]
    shapes = {(arrays["outputs"].dtype.str, arrays["outputs"].shape[1:]) for i, (record, arrays) in enumerate(parts, 1)
              if "refused" not in record and i not in bad}
    if bad or len(shapes) > 1:
        raise InputError(f"every shard of target {target.name} must hold what edgebuild's shard runs write (ids, "
                         f"outputs of one dtype and shape, the run's record); part {bad[0] if bad else 'shapes'} does "
                         "not. Run the shards again.")


def _rows_differing(a, b):
    """Per sample, whether any output differs (a NaN where the other side has NaN too is no difference)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    differ = a != b
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        differ &= ~(np.isnan(a.astype(np.float64)) & np.isnan(b.astype(np.float64)))
    return differ.any(1)


def _merged_run(runs, samples):
    """The run figures of the parts: one part's as they are; parts run side by side (separate
    invocations, usually on other machines) take as long as the slowest, and their images/s are summed."""
    if len(runs) == 1:
        return runs[0]
    merged = {k: runs[0][k] for k in ("runtime", "runtime_version", "machine", "python", "batch", "threads")}
    arenas = [r["arena_bytes"] for r in runs if "arena_bytes" in r]
    if arenas:
        merged["arena_bytes"] = max(arenas)
    merged.update(shards=sum(r["shards"] for r in runs), shard_runs=len(runs),
                  wall_seconds=max(r["wall_seconds"] for r in runs),
                  inference_seconds=max(r["inference_seconds"] for r in runs),
                  images_per_s=round(sum(r["images_per_s"] or 0 for r in runs), 1))
    return merged


def _first_of(found, outputs, twin_out, host_out):
    """The whole set's first difference from the parts' (each looked for it within its part): against
    the twin when any part differs from it, else against the host; its count is over the whole set."""
    for against, reference in (("twin", twin_out), ("host", host_out)):
        candidates = [f for f in found if f and f["against"] == against]
        if candidates:
            rows = _rows_differing(outputs, reference)
            return {**candidates[0], "samples_differing": int(rows.sum())}
    return None


def _first_difference(target, root, model_path, x, outputs, host_out, ids, twin_out, out_dir, board=None):
    """Where the target first departs from its twin (an ISA difference) or, when it matches its twin,
    from the build host (runtime drift): the first sample whose outputs differ, run again on both sides
    with every tensor kept, and the first op (in execution order) whose output tensor differs."""
    if twin_out is not None and _rows_differing(outputs, twin_out).any():
        against, reference = "twin", twin_out
    elif _rows_differing(outputs, host_out).any():
        against, reference = "host", host_out
    else:
        return None
    rows = np.flatnonzero(_rows_differing(outputs, reference))
    i = int(rows[0])
    if onnx_info.is_onnx(model_path):
        return {"against": against, "sample": str(ids[i]), "samples_differing": int(len(rows)), "op": None,
                "float_outputs": outputs.dtype.kind == "f",
                "note": "tensors are kept for .tflite models only; the first op is not named for .onnx"}
    work = tempfile.mkdtemp(dir=out_dir, prefix="dump-")
    try:
        mine = fanout.dump_tensors(target, root, model_path, x[i : i + 1], work, "target", runner=board)
        theirs = fanout.dump_tensors(target, root, model_path, x[i : i + 1], work, against)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if target.kind != "linux":
        kernels = f"TFLM vs LiteRT {'reference' if against == 'twin' else 'builtin'} kernels, every tensor kept"
    else:
        kernels = f"{'reference' if target.kernels == 'reference' else 'builtin'} (default delegates off, every tensor kept)"
    found = {"against": against, "sample": str(ids[i]), "samples_differing": int(len(rows)),
             "kernels": kernels, "float_outputs": outputs.dtype.kind == "f"}
    if mine is None or theirs is None:
        return {**found, "op": None, "note": "the tensors could not be kept on one side"}
    for index, op, tensors in tflite_info.op_outputs(model_path):
        for t, name in tensors:
            a, b = mine.get(t), theirs.get(t)
            if a is None or b is None or a.shape != b.shape or not _rows_differing(a[None], b[None]).any():
                continue
            wide = np.int64 if np.issubdtype(a.dtype, np.integer) else np.float64
            diff = np.abs(a.astype(wide) - b.astype(wide))
            return {**found, "op_index": index, "op": op, "tensor": name, "max_abs_diff": finite_max(diff),
                    "fraction_differing": round(float((diff > 0).mean()), 6)}
    return {**found, "op": None, "note": "with the builtin kernels every tensor is equal: the difference comes "
                                         "from a delegate's kernels (XNNPACK)"}


def _run(target, root, model_path, x, out_dir, shards, twin=False, container=None, reference=0, boards=None,
         keep=None):
    """(outputs, run info, the reference kernels' outputs of the first `reference` samples or None, and with
    `keep` (inputs, tensor indices) every kept tensor of those inputs, {index: array}, or the runtime's
    reason when it could not keep them; None without `keep`)."""
    work = Path(tempfile.mkdtemp(dir=out_dir, prefix="work-"))
    try:
        outputs, info = fanout.run_sharded(target, root, model_path, x, work, shards=shards, twin=twin,
                                           container=container, reference=reference, boards=boards, keep=keep)
        ref = np.load(work / "reference.npy") if info.get("reference_samples") else None
        kept = None
        if (work / "kept.npz").exists():
            with np.load(work / "kept.npz") as f:
                kept = {int(k[1:]): f[k] for k in f.files}
        elif (work / "kept.failed").exists():
            kept = (work / "kept.failed").read_text()
        return outputs, info, ref, kept
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boards(names, ssh_config, python, target, said):
    """One SSH executor per board of validate.boards (none when it is empty), each board checked to be what
    the target file says: its arch and its runtime's version (a board that differs is refused, naming both)."""
    from pipeline.device.executors import ssh

    if not names:
        return []
    if target.kind != "linux" or not target.emulated:
        raise InputError(f"validate.boards runs a Linux board's target over SSH; target {target.name} is "
                         f"{'a ' + target.kind if target.kind != 'linux' else 'the build host'}. Pass the board's target "
                         "(--target) alone with --board.")
    found = []
    for board in names:
        said(f"asking board {board} what it is")
        identity = ssh.ask(board, ssh_config, python, environment.env_key(target), origin="validate.boards")
        problem = ssh.mismatch(board, identity, target)
        if problem:
            raise InputError(f"{problem}.")
        found.append(ssh.executor(target, board, ssh_config, python, identity=identity, env=environment.env_key(target)))
    return found


def _executor(target, kind, cache_dir, log):
    """What the manifest records about how the target ran (its executor's own description): qemu user-mode
    on its root filesystem, its OCI image under podman (the image name and id), or a kind's own executor
    (TFLM, Vela). The twin and the tensor dumps always run outside a container."""
    return fanout.executor_for(target, None, container=cache_dir if kind == "container" else None, log=log).describe()


def _isa_run(target, root, model_path, x, out_dir, shards, reference=0):
    """Run the target's x86_64 twin (the same runtime, version, numpy and kernels, on the build host) on the
    same inputs, to tell what the ARM instruction set changes apart from runtime-version drift: (what is
    recorded of it, its outputs or None, its reference kernels' outputs or None)."""
    if not target.has_twin:
        return {"twin": None, "note": f"no x86_64 twin: {target.path} pins no twin wheels (twin_platforms), so ISA "
                                      "and runtime-version differences are not told apart"}, None, None
    try:
        # a Linux board's twin runs its optimized kernels natively (one process is fastest); a microcontroller's
        # twin runs reference kernels, as slow as the target's own, so it gets the target's shards
        twin_out, twin_info, twin_ref, _ = _run(target, root, model_path, x, out_dir,
                                                1 if target.kind == "linux" else shards, twin=True, reference=reference)
    except ModelRefused as exc:
        return {"twin": None, "refused": exc.reason}, None, None
    twin = {k: twin_info.get(k) for k in ("runtime", "runtime_version", "machine", "python")}
    twin["kernels"] = target.kernels if target.kind == "linux" else twin_info.get("kernels")  # (the file's name)
    return {"twin": twin}, twin_out, twin_ref
