"""Read a .tflite flatbuffer: ops with versions, tensor types, int8 input/output parameters.

Uses the flatbuffer schema that ships with ai-edge-litert, so no TensorFlow import is needed.
"""

from pathlib import Path

from pipeline.engine.errors import InputError

FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16"}


def _enum_names(cls):
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def read_model(path):
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        buf = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the model file {path}: {exc.strerror}. Check the path.") from None
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise InputError(
            f"a .tflite model must be a TFLite flatbuffer (identifier 'TFL3'); {path} is not one "
            f"({len(buf)} bytes). Pass the .tflite your converter wrote (or re-run the export stage)."
        )
    try:
        return schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as exc:  # a truncated flatbuffer fails anywhere inside the generated reader
        raise InputError(
            f"{path} is a truncated or corrupt TFLite file ({len(buf)} bytes; the flatbuffer reader fails with "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}). Copy it again from where it was made."
        ) from None


def _op_name(code, builtin_names):
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = builtin_names.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        custom = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        return custom
    return name


def describe(path):
    """A JSON-able summary: ops (name, version, count), float ops, custom/Flex ops, inputs, outputs."""
    from ai_edge_litert import schema_py_generated as schema

    model = read_model(path)
    builtin_names = _enum_names(schema.BuiltinOperator)
    type_names = _enum_names(schema.TensorType)
    graph = model.subgraphs[0]
    ops, float_ops, custom_ops = {}, [], []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        name = _op_name(code, builtin_names)
        is_builtin = max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.CUSTOM
        key = (name, code.version)
        ops[key] = ops.get(key, 0) + 1
        if not is_builtin:
            custom_ops.append(name)
        tensor_ids = [i for i in list(op.inputs if op.inputs is not None else []) + list(op.outputs if op.outputs is not None else []) if i >= 0]
        if any(type_names[graph.tensors[i].type] in FLOAT_TYPES for i in tensor_ids):
            float_ops.append(name)

    def io(index):
        t = graph.tensors[index]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else None
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else None
        return {
            "name": t.name.decode() if isinstance(t.name, bytes) else str(t.name),
            "dtype": type_names[t.type].lower(),
            "shape": [int(d) for d in t.shape],
            "scale": scale,
            "zero_point": zp,
        }

    return {
        "format": "tflite",
        "ops": [{"name": n, "version": v, "count": c} for (n, v), c in sorted(ops.items())],
        "float_ops": sorted(set(float_ops)),
        "custom_ops": sorted(set(custom_ops)),
        "flex_ops": sorted({n for n in custom_ops if n.startswith("Flex")}),
        "inputs": [io(i) for i in graph.inputs],
        "outputs": [io(i) for i in graph.outputs],
    }


def op_outputs(path):
    """The ops of the main graph in execution order: [(index, op name, [(tensor index, tensor name)])]."""
    from ai_edge_litert import schema_py_generated as schema

    model = read_model(path)
    builtin_names = _enum_names(schema.BuiltinOperator)
    graph = model.subgraphs[0]
    ops = []
    for i, op in enumerate(graph.operators):
        name = _op_name(model.operatorCodes[op.opcodeIndex], builtin_names)
        outs = [int(t) for t in (op.outputs if op.outputs is not None else []) if t >= 0]
        ops.append((i, name, [(t, graph.tensors[t].name.decode() if isinstance(graph.tensors[t].name, bytes)
                                else str(graph.tensors[t].name)) for t in outs]))
    return ops
