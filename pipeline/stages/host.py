"""host stage (validation of a model file): run `model.tflite` on the build host with ai-edge-litert
(`model.onnx` with onnxruntime) on the whole test set. Pixels become the model's input through the preprocessing contract and the
input tensor's own dtype and quantization; accuracy comes from the dequantized outputs, and the raw
outputs are kept in `predictions.npz` for the targets' bit-exact comparison."""

from importlib import metadata

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.splits import load_dataset, test_split_record
from pipeline.device import onnx_info
from pipeline.device.runtimes import run_onnx, run_tflite
from pipeline.engine.errors import InputError, ModelRefused
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.engine.text import clip
from pipeline.model import usermodel
from pipeline.release import tasks
from pipeline.release.metrics import accuracy_record, nonfinite, with_top_k



def stages(config):
    from pipeline.stages.model_file import copied_name

    name = copied_name(config.validate.model)
    layers = bool(config.validate.float_model) and name.endswith(".tflite")  # the per-layer report, against it
    return [Stage(
        "host", __name__, config=("preprocess", "task.kind", "task.top_k"), inputs=(name, "dataset.npz"),
        outputs=("predictions.npz", *(("layers.npz",) if layers else ())),
        toolchain=("ai-edge-litert" if name.endswith(".tflite") else "onnxruntime", "numpy",
                   *(usermodel.JAX_TOOLCHAIN if layers else ())),
        backend="jax" if layers else None,
        params={"model": name, "float_model": str(config.validate.float_model) if layers else ""},
        external=(lambda config: {"float_model": _float_model(config)}) if layers else None,
    )]


def _float_model(config):
    """The sha256 of validate.float_model, checked to be a Keras model file."""
    from pathlib import Path

    from pipeline.engine.fsutil import sha256_file

    path = Path(config.validate.float_model)
    if path.suffix.lower() not in (".keras", ".h5") or not path.is_file():
        raise InputError(f"--float takes the float Keras model (.keras or Keras 2 .h5) the .tflite was made from; "
                         f"received {path}{'' if path.is_file() else ', which does not exist'}. Pass that file.")
    return sha256_file(path)


def publish(records, config, build_dir):
    """The manifest's host accuracy of the validated file, the pixel -> input contract it was fed with (also
    on the model artifact's input), the test split and predictions.npz (and the per-layer report with --float)."""
    from pipeline.release.manifest import artifact, from_pixel

    record = records["host"]
    contract = record["preprocess"]
    return {**({"layers": {"host": record["layers"]}} if record.get("layers") else {}),
            "preprocessing": from_pixel(contract)["formula"], "preprocess": contract,
            "metrics": {"host": record["metrics"]["host"]}, "test_split": record["test_split"],
            "artifacts": {"model": {"input": from_pixel(contract)}, "predictions": artifact(build_dir, "predictions.npz")}}


def check_fits(info, images, class_names, origin, tensor=False, reconstruct=False):
    """The test images (or features) must have the model's input shape, and the output one score per class
    (`reconstruct`, an autoencoder: the input's shape)."""
    have = list(images.shape[1:])
    if tensor:
        want = list(info["inputs"][0]["shape"][1:])
        if want != have:
            raise InputError(f"{origin}'s input is {info['inputs'][0]['shape']} (batch first); the test features are "
                             f"{have} per sample ({len(have)}-D). Save x as (N, {', '.join(map(str, want))}).")
        want = None
    else:
        want = onnx_info.image_shape(info["inputs"][0])
    if want is not None and want != have:
        raise InputError(
            f"{origin}'s input is {want} (height, width, channels) per image; the test images are {have}. Set "
            f"data.image_size = {want[0]} and data.channels = {want[-1]} (edgebuild validate does unless you set them)."
        )
    out = info["outputs"][0]["shape"]
    if reconstruct:
        if list(out[1:]) != have:
            raise InputError(f"an anomaly model reconstructs its input window: {origin}'s output must have the shape of "
                             f"its input, [batch, {', '.join(map(str, have))}]; it is {out}. Validate the autoencoder "
                             "itself, or set task.kind = 'classification' for a classifier.")
        return
    if len(out) != 2 or out[-1] != len(class_names):
        raise InputError(
            f"{origin} must output one score per class, shape [batch, {len(class_names)}] for the "
            f"{len(class_names)} classes of the test set; its output shape is {out}. "
            + ("It outputs its input's shape: for an autoencoder, set task.kind = 'anomaly'." if list(out[1:]) == have
               else "Check the test set's classes.")
        )


def run(cfg, inputs, out_dir, ctx):
    model, pp = inputs[ctx.params["model"]], cfg.preprocess
    info = onnx_info.describe(model)
    runtime, run_model = ("onnxruntime", run_onnx) if onnx_info.is_onnx(model) else ("ai-edge-litert", run_tflite)
    data = load_dataset(inputs["dataset.npz"])
    idx = data["test"]
    images, labels, ids = data["x"][idx], data["y"][idx], data["ids"][idx]
    class_names = [str(c) for c in data["class_names"]]
    tensor = preprocess.is_tensor(images, pp)
    task = tasks.get(cfg.task.kind)
    check_fits(info, images, class_names, "the model", tensor, reconstruct=task is not None)
    x = onnx_info.model_input(images, pp, info["inputs"][0])
    version = metadata.version(runtime)
    bar = ctx.progress.bar(1, "host", unit="model")
    try:
        raw = run_model(model, x)
    except Exception as exc:  # the runtime's own reason, on one line
        raise ModelRefused(f"the host runtime ({runtime} {version})", clip(exc, 500) or type(exc).__name__) from None
    finally:
        bar.close()
    layers = _layer_report(ctx.params["float_model"], model, images, labels, cfg.preprocess, info, out_dir) \
        if ctx.params.get("float_model") else None
    if task:
        record = _task_run(task, cfg, info, raw, images, labels, ids, data, runtime, version, out_dir, tensor)
        return {**record, **({"layers": layers} if layers else {})}
    top1 = preprocess.dequantize(raw, info["outputs"][0]).argmax(1)
    # A model fed the wrong input convention scores near chance: stop with the setting that fits
    # (measured on at most 500 test images, stratified, under each common convention).
    few = stratified_subset(labels, 500, 0)
    if not nonfinite(raw) and not tensor:  # NaN or inf outputs fail the gate's finite check, whatever the convention
        usermodel.check_input_convention(
            lambda c: run_model(model, onnx_info.model_input(images[few], c, info["inputs"][0])),
            images[few], labels[few], pp, images.shape[-1], "the model")
    metrics = with_top_k(accuracy_record(top1, labels, class_names), preprocess.dequantize(raw, info["outputs"][0]),
                         labels, cfg.task.top_k)
    metrics.update(top1=[int(v) for v in top1], runtime=runtime, nonfinite_outputs=nonfinite(raw),
                   runtime_version=version, output_dtype=str(raw.dtype),
                   input_layout="features" if tensor else onnx_info.layout(info["inputs"][0]))
    atomic_save_npz(out_dir / "predictions.npz", ids=ids, labels=labels, host_output=raw, host_top1=top1)
    return {
        **({"layers": layers} if layers else {}),
        "metrics": {"host": metrics},
        "test_split": test_split_record(ids, labels),
        "preprocess": preprocess.describe(pp, images.shape[-1], info["inputs"][0]["scale"],
                                          info["inputs"][0]["zero_point"], _int_dtype(info["inputs"][0]["dtype"]), tensor),
    }


def _layer_report(float_model, model, images, labels, pp, info, out_dir):
    """The per-layer error of the validated .tflite against the float Keras model it was made from, on a
    fixed stratified subset of the test set (its references saved to layers.npz for the targets)."""
    import keras

    from pipeline.model import layer_refs

    float_net = keras.models.load_model(float_model, compile=False)
    few = layer_refs.subset(labels)
    qin = info["inputs"][0]
    x_float = preprocess.float_input(images[few], pp, qin).astype("float32")
    if tuple(float_net.inputs[0].shape[1:]) != x_float.shape[1:]:
        raise InputError(f"--float must be the float model the .tflite was made from: its input is "
                         f"{list(float_net.inputs[0].shape)}, the .tflite's {qin['shape']}. Pass that model.")
    return layer_refs.host_report(float_net, model, x_float, onnx_info.model_input(images[few], pp, qin),
                                  out_dir / "layers.npz")


def _task_run(task, cfg, info, raw, images, labels, ids, data, runtime, version, out_dir, tensor):
    """The host record of a task other than classification (no input-convention probe: that is a pixel
    classifier's check)."""
    x = preprocess.float_input(images, cfg.preprocess, info["inputs"][0])
    groups = data["groups"][data["test"]] if "groups" in data else None
    metrics, scores = task.metrics(preprocess.dequantize(raw, info["outputs"][0]), x, labels, groups)
    metrics.update(runtime=runtime, nonfinite_outputs=nonfinite(raw), runtime_version=version,
                   output_dtype=str(raw.dtype), input_layout="features" if tensor else onnx_info.layout(info["inputs"][0]))
    extra = {} if groups is None else {"groups": groups}
    atomic_save_npz(out_dir / "predictions.npz", ids=ids, labels=labels, host_output=raw, host_scores=scores, **extra)
    return {
        "metrics": {"host": metrics},
        "test_split": test_split_record(ids, labels),
        "preprocess": preprocess.describe(cfg.preprocess, images.shape[-1], info["inputs"][0]["scale"],
                                          info["inputs"][0]["zero_point"], _int_dtype(info["inputs"][0]["dtype"]), tensor),
    }


def _int_dtype(dtype):
    return dtype if dtype in preprocess.INTEGER_RANGES else "int8"
