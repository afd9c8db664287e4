"""host stage (validation of a model file): run `model.tflite` on the build host with ai-edge-litert
on the whole test set. Pixels become the model's input through the preprocessing contract and the
input tensor's own dtype and quantization; accuracy comes from the dequantized outputs, and the raw
outputs are kept in `predictions.npz` for the targets' bit-exact comparison."""

import hashlib
from importlib import metadata

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset
from pipeline.device import tflite_info
from pipeline.device.runtimes import run_tflite
from pipeline.engine.errors import InputError, ModelRefused
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.engine.text import clip
from pipeline.model import usermodel
from pipeline.release.metrics import accuracy_record

STAGE = Stage(
    "host", __name__, config=("preprocess",), inputs=("model.tflite", "dataset.npz"), outputs=("predictions.npz",),
    toolchain=("ai-edge-litert", "numpy"),
)


def check_fits(info, images, class_names, origin):
    """The test images must have the model's input shape, and the output one score per class."""
    want, have = info["inputs"][0]["shape"][1:], list(images.shape[1:])
    if want != have:
        raise InputError(
            f"{origin}'s input is {want} (height, width, channels) per image; the test images are {have}. Set "
            f"data.image_size = {want[0]} and data.channels = {want[-1]} (edgebuild validate does unless you set them)."
        )
    out = info["outputs"][0]["shape"]
    if len(out) != 2 or out[-1] != len(class_names):
        raise InputError(
            f"{origin} must output one score per class, shape [batch, {len(class_names)}] for the "
            f"{len(class_names)} classes of the test set; its output shape is {out}. Check the test set's classes."
        )


def run(cfg, inputs, out_dir, ctx):
    model, pp = inputs["model.tflite"], cfg.preprocess
    info = tflite_info.describe(model)
    data = load_dataset(inputs["dataset.npz"])
    idx = data["test"]
    images, labels, ids = data["x"][idx], data["y"][idx], data["ids"][idx]
    class_names = [str(c) for c in data["class_names"]]
    check_fits(info, images, class_names, "the model")
    x = preprocess.to_input(images, pp, info["inputs"][0])
    version = metadata.version("ai-edge-litert")
    bar = ctx.progress.bar(1, "host", unit="model")
    try:
        raw = run_tflite(model, x)
    except Exception as exc:  # the runtime's own reason, on one line
        raise ModelRefused(f"the host runtime (ai-edge-litert {version})", clip(exc, 500) or type(exc).__name__) from None
    finally:
        bar.close()
    top1 = preprocess.dequantize(raw, info["outputs"][0]).argmax(1)
    # A model fed the wrong input convention scores near chance: stop with the setting that fits
    # (measured on at most 500 test images, stratified, under each common convention).
    few = stratified_subset(labels, 500, 0)
    usermodel.check_input_convention(
        lambda c: run_tflite(model, preprocess.to_input(images[few], c, info["inputs"][0])),
        images[few], labels[few], pp, images.shape[-1], "the model")
    metrics = accuracy_record(top1, labels, class_names)
    metrics.update(top1=[int(v) for v in top1], runtime="ai-edge-litert",
                   runtime_version=version, output_dtype=str(raw.dtype))
    atomic_save_npz(out_dir / "predictions.npz", ids=ids, labels=labels, host_output=raw, host_top1=top1)
    id_list = [str(s) for s in ids]
    return {
        "metrics": {"host": metrics},
        "test_split": {"ids": id_list, "sha256": hashlib.sha256("\n".join(id_list).encode()).hexdigest(),
                       "labels": [int(v) for v in labels]},
        "preprocess": preprocess.describe(pp, images.shape[-1], info["inputs"][0]["scale"],
                                          info["inputs"][0]["zero_point"], _int_dtype(info["inputs"][0]["dtype"])),
    }


def _int_dtype(dtype):
    return dtype if dtype in preprocess.INTEGER_RANGES else "int8"
