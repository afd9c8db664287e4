"""The float model's activation at each quantized tensor of a .tflite: the reference side of the
per-layer error report (`pipeline.device.layer_error`).

A .tflite tensor is matched to a float Keras layer by name. The converter names a tensor after the
ops it came from (`model_1/conv1_1/Relu;model_1/conv1_1/BiasAdd;...`, each layer's scope with the
export's `_1`); the QAT rewrite keeps the float layers' names and adds known suffixes to what it makes
(`dense_gelu`, `gap_out_quant`, `mha_output`). The latest float layer named is the one matched, then
followed through what the converter fuses into it (a BatchNormalization after a linear convolution or
dense, a ReLU/ReLU6 after those), so a fused op's output meets the float output it equals. Of several
tensors matched to one layer (a decomposed LayerNorm, a GELU as MUL, LOGISTIC, MUL), the last in
execution order is that layer's output. The model's output tensor is the float model's output. A tensor
whose size differs from its layer's output is not compared; nor is a layer that matches no tensor.
"""

import re
from pathlib import Path

import numpy as np

QAT_SUFFIXES = ("_gelu", "_out_quant", "_query", "_key", "_value", "_attention", "_output")
FUSED_ACTIVATIONS = ("relu", "relu6")
_EXPORT_SUFFIX = re.compile(r"_\d+$")


def _activation_name(layer):
    """A layer's own activation function's name ('linear', 'relu', ...), read without Keras's serializer
    (which imports TensorFlow in a JAX process)."""
    return getattr(getattr(layer, "activation", None), "__name__", None)


def _activation(layer):
    import keras

    if isinstance(layer, keras.layers.ReLU) and not layer.negative_slope and layer.max_value in (None, 6.0):
        return "relu" if layer.max_value is None else "relu6"
    if isinstance(layer, keras.layers.Activation):
        return _activation_name(layer)
    return None


def _linear_kernel_layer(layer):
    import keras

    return (isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                               keras.layers.Dense))
            and _activation_name(layer) == "linear")


def _fused_tail(model, name):
    """The layer whose output the converter's fused op for layer `name` produces."""
    import keras

    consumers = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                producer = t._keras_history.operation
                consumers.setdefault(producer.name, []).append(layer)
    layer = model.get_layer(name)
    kernel = _linear_kernel_layer(layer)
    while kernel and len(consumers.get(layer.name, [])) == 1:
        nxt = consumers[layer.name][0]
        if isinstance(nxt, keras.layers.BatchNormalization) and not isinstance(layer, keras.layers.BatchNormalization):
            layer = nxt
        elif _activation(nxt) in FUSED_ACTIVATIONS:
            return nxt.name
        else:
            break
    return layer.name


def _candidates(tensor_name, order):
    """The float layers a .tflite tensor name mentions (export and QAT suffixes removed)."""
    found = set()
    for piece in tensor_name.split(";"):
        for part in piece.split("/"):
            for name in (_EXPORT_SUFFIX.sub("", part), part):
                if name in order:
                    found.add(name)
                    continue
                for suffix in QAT_SUFFIXES:
                    if name.endswith(suffix) and name[: -len(suffix)] in order:
                        found.add(name[: -len(suffix)])
    return found


def match(model, tensors, outputs):
    """{tensor index: float layer name} for the quantized tensors `tensors` ({index: {"name", "shape",
    "op_index"}}, from layer_error.graph) of a .tflite whose output tensor indices are `outputs`."""
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    out_layer = model.outputs[0]._keras_history.operation.name
    by_layer = {}
    for t, info in sorted(tensors.items(), key=lambda kv: kv[1]["op_index"]):
        if t in outputs:
            name = out_layer
        else:
            found = _candidates(info["name"], order)
            if not found:
                continue
            name = _fused_tail(model, max(found, key=order.get))
        by_layer[name] = t  # the last tensor in execution order wins
    return {t: name for name, t in by_layer.items()}


def references(model, layers, x, tensors):
    """{tensor index: the float activation (len(x), ...)} of the layers `layers` ({tensor index: layer
    name}) on float input x, reshaped to each tensor's per-sample shape (sizes that differ are left out)."""
    import keras

    # (a layer called more than once has no single output to compare with)
    names = sorted({n for n in layers.values() if len(model.get_layer(n)._inbound_nodes) == 1},
                   key=lambda n: [layer.name for layer in model.layers].index(n))
    if not names:
        return {}
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    values = probe.predict(x, batch_size=64, verbose=0)
    values = values if isinstance(values, (list, tuple)) else [values]
    by_name = dict(zip(names, values))
    refs = {}
    for t, name in layers.items():
        if name not in by_name:
            continue
        value = np.asarray(by_name[name])
        shape = [len(x)] + list(tensors[t]["shape"][1:])
        if value.size == int(np.prod(shape)):
            refs[t] = value.reshape(shape)
    return refs


SAMPLES = 32  # the fixed subset of the test set the per-layer report runs on (stratified, seed 0)
REFERENCE_BYTES = 256 * 2**20  # at most this much float activation kept (fewer samples for a large model)


def subset(labels):
    """The indices of the fixed test subset the report runs on: SAMPLES of `labels`, stratified, seed 0."""
    from pipeline.data.sampling import stratified_subset

    return stratified_subset(labels, SAMPLES, 0)


def host_report(model, tflite_path, x_float, x_input, out_path):
    """The per-layer report of the .tflite on the build host (LiteRT, builtin kernels, every tensor
    kept) against the float Keras `model`, on float input `x_float` and the .tflite's own input
    `x_input` (the same samples); saves the references the targets compare with to `out_path` (.npz;
    the host's dump goes to a temporary directory beside it, removed after)
    and returns the host's summary (layer_error.summary). A model whose compared activations would
    take more than REFERENCE_BYTES over these samples is compared on the first samples that fit."""
    import shutil
    import tempfile

    from pipeline.device import fanout, layer_error, tflite_info

    tensors, _, _ = layer_error.graph(tflite_path)
    info = tflite_info.describe(tflite_path)
    outputs = {t for t in tensors if tensors[t]["name"] in {o["name"] for o in info["outputs"]}}
    layers = match(model, tensors, outputs)
    per_sample = 4 * sum(int(np.prod(tensors[t]["shape"][1:])) for t in layers)
    keep = max(1, min(len(x_float), REFERENCE_BYTES // max(1, per_sample)))
    x_float, x_input = x_float[:keep], x_input[:keep]
    refs = references(model, layers, x_float, tensors)
    qin = info["inputs"][0]
    input_snr = (layer_error.tensor_error(x_input, qin["scale"], qin["zero_point"], x_float)["snr_db"]
                 if qin["scale"] else None)
    work = tempfile.mkdtemp(dir=Path(out_path).parent, prefix="layers-")
    try:
        dumps = fanout.dump_tensors(None, None, tflite_path, x_input, work, "host", count=len(x_input),
                                    only=set(refs))
        if dumps is None:
            reason = (Path(work) / "dump.log").read_text()[-300:]
            raise RuntimeError(f"the host could not keep every tensor of {tflite_path}: {reason}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = layer_error.report(tflite_path, dumps, refs, layers, input_snr)
    layer_error.save_references(out_path, x_input, input_snr, layers, refs)
    return layer_error.summary(rows, len(x_input), "host: ai-edge-litert, builtin kernels")

