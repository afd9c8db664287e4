"""Read an `.onnx` file into the same summary `tflite_info.describe` gives a `.tflite`: ops, the
input and output tensors with dtype, shape and (for a QDQ model's integer input and output) the scale
and zero point of the DequantizeLinear that reads the input and the QuantizeLinear that writes the
output. `describe` picks the reader by the file's suffix."""

from collections import Counter
from pathlib import Path

from pipeline.engine.errors import InputError

STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # ops a QDQ model runs in integer when wrapped
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Flatten")  # move values, keep them


def is_onnx(path):
    return Path(path).suffix.lower() == ".onnx"


def describe(path):
    """The summary of a .tflite or .onnx model file (by suffix)."""
    if not is_onnx(path):
        from pipeline.device import tflite_info

        return tflite_info.describe(path)
    return describe_onnx(path)


def external_data(path):
    """{location: file} of the external data files an .onnx names (its tensors stored beside it, as models
    over 2 GB and some exporters write them); each must be a relative path inside the model's directory."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not an ONNX file at all: read_model says so in one line
        return {}
    tensors = [t for t in _all_tensors(model.graph) if uses_external_data(t)]
    found = {}
    for tensor in tensors:
        location = ExternalDataInfo(tensor).location
        target = (path.parent / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or path.parent.resolve() not in target.parents:
            raise InputError(f"an .onnx may keep its tensors in files beside it, by a relative path inside its folder; "
                             f"{path} names {location[:120]!r} for tensor {tensor.name[:60]!r}. Re-save the model with "
                             "its external data beside it (onnx.save(..., save_as_external_data=True)).")
        if not target.is_file():
            raise InputError(f"{path} keeps tensor {tensor.name[:60]!r} in the external data file {location[:120]!r}, "
                             f"which is not beside it ({target} does not exist). Copy it next to the model.")
        found[location] = target
    return found


def _all_tensors(graph):
    """The initializers and constant tensors of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def read_model(path):
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise InputError(f"cannot read the model file {path}: it does not exist. Check the path.") from None
    except Exception as exc:  # onnx raises DecodeError, ValidationError or its own: all mean "not a valid ONNX file"
        raise InputError(
            f"{path} is not a valid ONNX model ({path.stat().st_size if path.exists() else 0} bytes; onnx says "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}). Copy it again from where it was made."
        ) from None
    return model


def describe_onnx(path):
    from onnx import helper, numpy_helper

    model = read_model(path)
    graph = model.graph
    opsets = {o.domain or "": o.version for o in model.opset_import}
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ops = Counter((n.op_type, opsets.get(n.domain or "", 0)) for n in graph.node)
    custom = sorted({n.op_type for n in graph.node if (n.domain or "") not in STANDARD_DOMAINS})
    # a compute op whose data input is not dequantized runs in float
    float_ops = sorted({n.op_type for n in graph.node if n.op_type in COMPUTE_OPS
                        and getattr(producer.get(n.input[0]), "op_type", None) != "DequantizeLinear"})

    def quantization(node):
        if node is None or len(node.input) < 2 or node.input[1] not in initializers:
            return None, None
        scale = initializers[node.input[1]]
        zp = initializers.get(node.input[2]) if len(node.input) > 2 else None
        if scale.size != 1:
            return None, None
        return float(scale.reshape(-1)[0]), int(zp.reshape(-1)[0]) if zp is not None else 0

    def io(value, node):
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
        scale, zp = quantization(node) if dtype in ("int8", "uint8") else (None, None)
        return {"name": value.name, "dtype": dtype, "shape": [1 if d == -1 and i == 0 else d for i, d in enumerate(dims)],
                "shape_signature": dims, "scale": scale, "zero_point": zp}

    inputs = [v for v in graph.input if v.name not in initializers]

    def reader(name):  # the DequantizeLinear that reads the input, through layout-only ops
        for node in consumers.get(name, []):
            if node.op_type == "DequantizeLinear":
                return node
            if node.op_type in LAYOUT_OPS:
                return reader(node.output[0])
        return None

    def writer(name):  # the QuantizeLinear that writes the output, through layout-only ops
        node = producer.get(name)
        if node is not None and node.op_type in LAYOUT_OPS:
            return writer(node.input[0])
        return node if node is not None and node.op_type == "QuantizeLinear" else None

    return {
        "format": "onnx",
        "opset": opsets.get("", None),
        "ops": [{"name": n, "version": v, "count": c} for (n, v), c in sorted(ops.items())],
        "float_ops": float_ops,
        "custom_ops": custom,
        "flex_ops": [],
        "inputs": [io(v, reader(v.name)) for v in inputs],
        "outputs": [io(v, writer(v.name)) for v in graph.output],
    }


def layout(tensor):
    """"NCHW" for a 4-D input whose channels come first (as a PyTorch export has), else "NHWC"."""
    s = tensor["shape"]
    return "NCHW" if len(s) == 4 and s[1] in (1, 3) and s[3] not in (1, 3) else "NHWC"


def image_shape(tensor):
    """(height, width, channels) of one image for the input tensor, whatever its layout."""
    s = tensor["shape"]
    return [s[2], s[3], s[1]] if layout(tensor) == "NCHW" else list(s[1:])


def model_input(images, pp, tensor, origin="the model"):
    """uint8 images (N, H, W, C) -> what the input tensor takes: its dtype and quantization
    (`preprocess.to_input`), channels first when its layout is NCHW; features as they are laid out."""
    from pipeline.data import preprocess

    x = preprocess.to_input(images, pp, tensor, origin)
    if preprocess.is_tensor(images, pp):  # features are fed in their own layout
        return x
    return x.transpose(0, 3, 1, 2).copy() if layout(tensor) == "NCHW" else x
