"""What a model asks of a device, read from the file without running it: flash (file and weight
bytes), compute (multiply-accumulates, per layer) and a per-op estimate of live activation memory.

MACs follow Arm Vela's convention (`ethosu/vela/npu_performance.py`, `measure_cycle_cost`) so that a
total can be checked against Vela's `nn_macs`: a convolution counts kernel height x width x input
channels per group for every output element; a depthwise convolution or a pooling, kernel height x
width per output element; a fully connected layer or a matrix multiply, its reduction length per
output element; a MEAN (global pooling), its input elements. A TRANSPOSE_CONV counts kh x kw x cin per
output element, as Vela does (it runs it as a convolution over the zero-upsampled input), which is
stride² times the arithmetic really needed. Elementwise ops, activations, SOFTMAX, reshapes and
(de)quantization count 0. Vela instead runs an activation it cannot fuse as a 1x1 pooling and counts
its output elements: a standalone RELU, and (Vela 5.2) a fused activation it splits off, as it does
selftest_int8.tflite's CONV_2D ReLU (144 MACs more). A dynamic (-1) dimension counts as 1.
"""

import math
from pathlib import Path

from pipeline.device import onnx_info, tflite_info
from pipeline.engine import text

TFLITE_DTYPE_BYTES = {"INT4": 0.5, "INT8": 1, "UINT8": 1, "BOOL": 1, "INT16": 2, "UINT16": 2, "FLOAT16": 2,
                      "BFLOAT16": 2, "INT32": 4, "UINT32": 4, "FLOAT32": 4, "INT64": 8, "UINT64": 8, "FLOAT64": 8,
                      "COMPLEX64": 8, "COMPLEX128": 16}
LAYER_COLUMNS = ("#", "op", "layer", "MACs", "share", "activation bytes")


def resources(path):
    """`onnx_resources` for a .onnx file, else `tflite_resources`."""
    return onnx_resources(path) if onnx_info.is_onnx(path) else tflite_resources(path)


def _dims(shape, signature=None):
    """A shape with its dynamic dimensions (-1 in the shape, or a -1 batch in the signature) set to 1."""
    dims = [int(d) for d in (shape if shape is not None else [])]
    batch_dynamic = signature is not None and len(signature) > 0 and int(signature[0]) < 0
    return [1 if d < 0 or (i == 0 and batch_dynamic) else d for i, d in enumerate(dims)]


def _tflite_macs(op, inputs, out, options):
    """MACs of one TFLite op; `inputs` are the input shapes (None for an absent optional input)."""
    n = math.prod(out)
    if op in ("CONV_2D", "TRANSPOSE_CONV"):  # filter [cout, kh, kw, cin per group]
        return math.prod(inputs[1][1:]) * n
    if op == "CONV_3D":  # filter [kd, kh, kw, cin, cout]
        return math.prod(inputs[1][:4]) * n
    if op == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, cout]
        return math.prod(inputs[1][1:3]) * n
    if op == "FULLY_CONNECTED":  # weights [out, in]
        return inputs[1][-1] * n
    if op in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        return getattr(options, "filterHeight", 1) * getattr(options, "filterWidth", 1) * n
    if op == "MEAN":
        return math.prod(inputs[0])
    if op == "BATCH_MATMUL":
        return inputs[0][-2 if getattr(options, "adjX", False) else -1] * n
    return 0


def tflite_resources(path):
    """Flash, MACs and per-op activation memory of a .tflite model; JSON-able.

    `parameters` and `weight_bytes` count every constant tensor (weights, biases, and the small index
    constants such as a MEAN's axes), each stored buffer once. Layers are the main subgraph's ops in
    execution order; `activation_bytes` is an op's non-constant inputs plus its outputs."""
    from ai_edge_litert import schema_py_generated as schema

    model = tflite_info.read_model(path)
    op_names = tflite_info._enum_names(schema.BuiltinOperator)
    type_names = tflite_info._enum_names(schema.TensorType)

    def stored(buffer):  # in the flatbuffer, or (a model over 2 GB) at offset/size in the file
        b = model.buffers[buffer]
        return len(b.data) if b.data is not None and len(b.data) else (int(b.size) if b.offset > 1 else 0)

    constants = {}  # buffer -> elements; tensors sharing a buffer are stored once
    for graph in model.subgraphs:
        for t in graph.tensors:
            if t.buffer > 0 and stored(t.buffer):
                constants.setdefault(t.buffer, math.prod(_dims(t.shape)))
    graph = model.subgraphs[0]

    def shape(i):
        return None if i < 0 else _dims(graph.tensors[i].shape, graph.tensors[i].shapeSignature)

    def nbytes(i):
        return math.ceil(math.prod(shape(i)) * TFLITE_DTYPE_BYTES.get(type_names[graph.tensors[i].type], 1))

    layers = []
    for index, op in enumerate(graph.operators):
        name = tflite_info._op_name(model.operatorCodes[op.opcodeIndex], op_names)
        inputs = [int(i) for i in (op.inputs if op.inputs is not None else [])]
        outputs = [int(i) for i in (op.outputs if op.outputs is not None else []) if i >= 0]
        live = {i for i in inputs if i >= 0 and graph.tensors[i].buffer not in constants} | set(outputs)
        out = shape(outputs[0]) if outputs else []
        t = graph.tensors[outputs[0]] if outputs else None
        layers.append({"index": index, "op": name,
                       "name": (t.name.decode() if isinstance(t.name, bytes) else str(t.name)) if t else "",
                       "macs": _tflite_macs(name, [shape(i) for i in inputs], out, op.builtinOptions),
                       "output_shape": out, "activation_bytes": sum(nbytes(i) for i in live)})
    return _summary("tflite", path, sum(constants.values()), sum(stored(b) for b in constants), layers)


def onnx_resources(path):
    """Flash, MACs and per-op activation memory of a .onnx model; JSON-able.

    Shapes come from ONNX shape inference (an unknown dimension counts as 1). `parameters` and
    `weight_bytes` count every initializer, a QDQ model's scales and zero points included. Layers are
    the nodes other than QuantizeLinear/DequantizeLinear, which mark a QDQ graph's integer tensors; a
    tensor a DequantizeLinear writes counts at the size of the integer tensor it reads. `uncounted` names
    the nodes whose MACs are unknown because shape inference gave no shape (counted 0)."""
    from onnx import helper, shape_inference

    model = onnx_info.read_model(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    values = {}  # name -> (dims with unknown = -1, element type)
    inferred = shape_inference.infer_shapes(model).graph
    for v in [*inferred.input, *inferred.value_info, *inferred.output]:
        t = v.type.tensor_type
        if t.HasField("shape"):
            values[v.name] = ([d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim], t.elem_type)
    values.update({i.name: (list(i.dims), i.data_type) for i in graph.initializer})

    def source(name):  # a QDQ tensor is stored as the integer tensor its DequantizeLinear reads
        p = producer.get(name)
        return p.input[0] if p is not None and p.op_type == "DequantizeLinear" else name

    def shape(name):
        name = name if name in values else source(name)
        return [d if d >= 0 else 1 for d in values[name][0]] if name in values else None

    def nbytes(name):
        dims, elem = values.get(source(name), (None, 0))
        return 0 if dims is None or not elem else math.prod(shape(name)) * helper.tensor_dtype_to_np_dtype(elem).itemsize

    def stored(init):
        return len(init.raw_data) if init.raw_data else \
            math.prod(init.dims) * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize

    layers, uncounted = [], []
    for index, node in enumerate(graph.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        out = shape(node.output[0]) if node.output else None
        try:
            macs = _onnx_macs(node, shape, out, helper)
        except (TypeError, IndexError, KeyError):  # shape inference gave no shape for an input or the output
            macs = 0
            uncounted.append(node.output[0] if node.output else node.op_type)
        live = {n for n in node.input if n and source(n) not in inits and
                getattr(producer.get(n), "op_type", None) != "Constant"} | {n for n in node.output if n}
        layers.append({"index": index, "op": node.op_type, "name": node.output[0] if node.output else node.name,
                       "macs": macs, "output_shape": out, "activation_bytes": sum(nbytes(n) for n in live)})
    result = _summary("onnx", path, sum(math.prod(i.dims) for i in inits.values()),
                      sum(stored(i) for i in inits.values()), layers)
    result["uncounted"] = uncounted
    return result


def _onnx_macs(node, shape, out, helper):
    """MACs of one ONNX node by the same convention as `_tflite_macs`."""
    op, n = node.op_type, math.prod(out) if out is not None else None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in ("Conv", "ConvInteger", "QLinearConv"):  # weight [M, C/group, k...]
        return math.prod(shape(node.input[3 if op == "QLinearConv" else 1])[1:]) * n
    if op == "ConvTranspose":  # weight [C, M/group, k...]
        w = shape(node.input[1])
        return w[0] // attrs.get("group", 1) * math.prod(w[2:]) * n
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        return shape(node.input[0])[-1] * n
    if op == "Gemm":
        return shape(node.input[0])[0 if attrs.get("transA", 0) else -1] * n
    if op in ("AveragePool", "MaxPool"):
        return math.prod(attrs["kernel_shape"]) * n
    if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean"):
        return math.prod(shape(node.input[0]))
    return 0


def _summary(fmt, path, parameters, weight_bytes, layers):
    total = sum(layer["macs"] for layer in layers)

    def top(key, n=3):  # ties keep execution order
        return sorted((layer for layer in layers if layer[key] > 0), key=lambda layer: -layer[key])[:n]

    return {"format": fmt, "model_bytes": Path(path).stat().st_size, "parameters": int(parameters),
            "weight_bytes": int(weight_bytes), "macs": total,
            "peak_activation_bytes": max((layer["activation_bytes"] for layer in layers), default=0),
            "layers": layers,
            "largest_by_macs": [{"name": x["name"], "op": x["op"], "macs": x["macs"],
                                 "share": round(x["macs"] / total, 4)} for x in top("macs")],
            "largest_by_activation": [{"name": x["name"], "op": x["op"], "activation_bytes": x["activation_bytes"]}
                                      for x in top("activation_bytes")]}


def layer_table(res, top=10):
    """Rows of strings for the `top` layers by MACs, header first (`engine.text.table` takes them as they are)."""
    total = res["macs"]
    layers = sorted(res["layers"], key=lambda layer: (-layer["macs"], -layer["activation_bytes"]))[:top]
    return [LAYER_COLUMNS] + [(str(x["index"]), x["op"], text.clip(x["name"], 60), f"{x['macs']:,}",
                               f"{x['macs'] / total:.1%}" if total else "-", f"{x['activation_bytes']:,}")
                              for x in layers]
