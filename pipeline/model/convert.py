"""Keras -> full-integer int8 `.tflite`, float `.tflite` and ONNX through Keras's export API; the int8
`.tflite` -> int8 ONNX in QDQ form (tf2onnx); and the checks that an artifact is int8 throughout and
loads in onnxruntime."""

import os
from pathlib import Path

from pipeline.engine.errors import InputError


def _tmp(path):
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _convert_error(exc, what="int8"):
    text = str(exc)
    ops = sorted({w.strip("'\",.:") for w in text.replace("\n", " ").split() if w.startswith(("tf.", "'tf."))})
    detail = f" ops: {', '.join(ops)}" if ops else ""
    first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.splitlines()[0] if text else "")
    return (
        f"{what} conversion needs every op to be a TFLite builtin {what} op; the converter refused "
        f"this model{detail} ({first[:300]}). Replace those layers or ops."
    )


# export.activations -> the converter's op set and the input/output type: full integer, or LiteRT's 16x8 mode
ACTIVATIONS = {"int8": ("TFLITE_BUILTINS_INT8", "int8"),
               "int16": ("EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8", "int16")}


def export_int8(model, calibration, path, batch=None, activations="int8"):
    """The full-integer int8 `.tflite`, with the model's dynamic batch dimension; at a fixed batch of 1
    when that makes the converter compute shapes at run time (SHAPE, REDUCE_PROD, PACK: an einsum or a
    reshape over the batch, as attention and squeeze-excite have), which microcontroller runtimes and
    Vela lack and which a device running one sample at a time does not need. `batch=1`: at a batch of 1
    at once (the caller knows the float model's graph computes shapes), saving a conversion.
    `activations="int16"`: LiteRT's 16x8 mode (int16 activations, input and output; int8 weights)."""
    from pipeline.device import tflite_info

    _export_int8(model, calibration, path, batch=batch, activations=activations)
    if batch is None and has_shape_op(tflite_info.describe(path)):
        _export_int8(model, calibration, path, batch=1, activations=activations)


def has_shape_op(info):
    """Whether a `.tflite` (its `tflite_info.describe`) computes shapes at run time."""
    return any(op["name"] == "SHAPE" for op in info["ops"])


def _export_int8(model, calibration, path, batch=None, activations="int8"):
    import tensorflow as tf

    ops, io = ACTIVATIONS[activations]

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    signature = None if batch is None else [tf.TensorSpec((batch,) + tuple(model.inputs[0].shape[1:]),
                                                          model.inputs[0].dtype)]
    tmp = _tmp(path)
    try:
        model.export(
            str(tmp), format="litert", verbose=False, input_signature=signature,
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=representative,
            inference_input_type=getattr(tf, io), inference_output_type=getattr(tf, io),
            target_spec={"supported_ops": [getattr(tf.lite.OpsSet, ops)]},
        )
    except Exception as exc:
        if tmp.exists():
            tmp.unlink()
        if "ConverterError" in type(exc).__name__ or "convert" in str(exc).lower():
            raise InputError(_convert_error(exc)) from None
        raise
    os.replace(tmp, path)


def export_float(model, path):
    import tensorflow as tf

    tmp = _tmp(path)
    try:
        model.export(str(tmp), format="litert", verbose=False,
                     target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        if "ConverterError" in type(exc).__name__ or "convert" in str(exc).lower():
            raise InputError(_convert_error(exc, "float")) from None
        raise
    os.replace(tmp, path)


def export_onnx(model, path, opset):
    from pipeline.model import onnx_ops

    onnx_ops.register()
    tmp = _tmp(path)
    try:
        model.export(str(tmp), format="onnx", verbose=False, opset_version=opset)
    except Exception as exc:  # noqa: BLE001 (tf2onnx raises ValueError, KeyError or its own on an op it cannot convert)
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"tf2onnx cannot convert the float model to ONNX ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). "
            f"Replace the layer that produces that op, or set export.formats = [\"tflite\"] to build without ONNX."
        ) from None
    os.replace(tmp, path)


def export_int8_onnx(tflite_path, path, opset, tflite_info):
    """The int8 `.tflite` as ONNX in QDQ form (tf2onnx): each int8 tensor becomes a QuantizeLinear /
    DequantizeLinear pair with the TFLite tensor's own scale and zero point, so both int8 artifacts
    carry the QAT model's ranges. Checked to load in onnxruntime and to have the same input and
    output quantization as the .tflite; returns its description."""
    import tf2onnx

    from pipeline.device import onnx_info
    from pipeline.model import onnx_ops

    import onnx

    onnx_ops.register()
    tmp = _tmp(path)
    try:
        model, _ = tf2onnx.convert.from_tflite(str(tflite_path), opset=opset)
        onnx.save(canonical_names(model), str(tmp))
        # per-channel DequantizeLinear (an axis and a scale per channel) is ONNX opset 13
        check_onnx_loads(tmp, fix=f"Raise export.onnx_opset to 13 or more (now {opset}): int8 ONNX's per-channel "
                                  "DequantizeLinear needs opset 13" if opset < 13 else "")
        info = onnx_info.describe_onnx(tmp)
    except InputError:
        tmp.unlink(missing_ok=True)
        raise
    except Exception as exc:  # tf2onnx raises ValueError, KeyError or its own on an op it cannot convert
        tmp.unlink(missing_ok=True)
        raise InputError(
            f"tf2onnx cannot convert the int8 model to ONNX ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). "
            "Replace the layer that produces that op, raise export.onnx_opset if it is below 13 (QDQ per-channel "
            "needs 13), or set export.formats = [\"tflite\"] to build without ONNX."
        ) from None
    for side in ("inputs", "outputs"):
        mine, theirs = info[side][0], tflite_info[side][0]
        if (mine["dtype"], mine["scale"], mine["zero_point"]) != (theirs["dtype"], theirs["scale"], theirs["zero_point"]):
            tmp.unlink()
            raise InputError(
                f"the int8 ONNX {side[:-1]} must have the int8 .tflite's quantization ({theirs['dtype']}, scale "
                f"{theirs['scale']}, zero point {theirs['zero_point']}); tf2onnx wrote {mine['dtype']}, scale "
                f"{mine['scale']}, zero point {mine['zero_point']}. Report this with the model; nothing was published."
            )
    os.replace(tmp, path)
    return info


def canonical_names(model):
    """Rename every node, intermediate value and initializer of an ONNX graph by its position (nodes
    `<op>_<i>`, values `v<i>_<j>`, initializers `c<k>` in order of first use); the graph's inputs and
    outputs keep their names. tf2onnx numbers nodes and names its de-duplicated constants in an order
    that changes from run to run, so without this the same .tflite gives other bytes each time (and the
    .tflite's long tensor names made up a quarter of the file)."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    initializers = [i.name for i in graph.initializer]
    names = {}
    for node in graph.node:
        for name in node.input:
            if name in initializers and name not in names:
                names[name] = f"c{len(names)}"
    for name in initializers:
        names.setdefault(name, f"c{len(names)}")
    for i, node in enumerate(graph.node):
        for j, name in enumerate(node.output):
            if name not in keep:
                names.setdefault(name, f"v{i}_{j}")
        node.name = f"{node.op_type}_{i}"
    for node in graph.node:
        for field in (node.input, node.output):
            for j, name in enumerate(field):
                field[j] = names.get(name, name)
    for init in graph.initializer:
        init.name = names[init.name]
    ordered = sorted(graph.initializer, key=lambda init: int(init.name[1:]))
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    for value in graph.value_info:
        value.name = names.get(value.name, value.name)
    return model


def check_full_integer(info, allowed_float_ops, dtype="int8"):
    problems = []
    for side in ("inputs", "outputs"):
        for t in info[side]:
            if t["dtype"] != dtype:
                problems.append(f"{side[:-1]} '{t['name']}' is {t['dtype']}, not {dtype}")
    if info["flex_ops"] or info["custom_ops"]:
        problems.append(f"non-builtin ops {', '.join(info['custom_ops'])}")
    floats = [op for op in info["float_ops"] if op not in allowed_float_ops]
    if floats:
        problems.append(f"float ops {', '.join(floats)}")
    return problems


def check_onnx_loads(path, fix=""):
    """The ONNX file must load in onnxruntime before it is published (tf2onnx can emit ops, such as
    Erfc from a GELU, that onnxruntime has no kernel for)."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types; all mean "refused"
        reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        reason = reason.replace(f"Load model from {path} failed:", "").replace(str(path), Path(path).name)[:300]
        raise InputError(
            f"the ONNX export must load in onnxruntime; it refuses this model ({reason}). "
            + (fix or "Replace the layer that produces that op, or set export.formats = [\"tflite\"] to build without "
                      "ONNX") + "; nothing was published."
        ) from None
