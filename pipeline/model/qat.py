"""Quantization-aware training for Keras 3, written with `keras.ops` only.

Keras 3 has no QAT API, so this module provides it. The same layers load under the JAX backend
(training) and the TensorFlow backend (export): there `keras.quantizers.fake_quant_with_min_max_vars`
becomes TF's FakeQuant op, which the TFLite converter folds into int8 tensors whose scale and zero
point are exactly the ranges trained here.

The fake-quant conventions (weights symmetric, activations asymmetric per tensor) are in
`fakequant`; the transformer layers (LayerNormalization, attention, EinsumDense) in `attention`.
BatchNormalization is folded into the preceding convolution/dense before QAT, so the int8 graph
is the graph that was fine-tuned.
"""

import keras
import numpy as np
from keras import ops

from pipeline.model import attention
from pipeline.model.fakequant import (  # noqa: F401 (ActivationQuantizer and _quantize_weight are this module's API too)
    PACKAGE,
    ActivationQuantizer,
    SigmoidGelu,
    _QuantizedKernelMixin,
    _quantize_weight,
)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv2D(_QuantizedKernelMixin, keras.layers.Conv2D):
    """Conv2D with per-output-channel int8 weight fake-quant (BatchNorm already folded in)."""

    def call(self, inputs, training=False):
        return self._finish(self.convolution_op(inputs, _quantize_weight(self.kernel, per_channel=True)), training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantConv1D(_QuantizedKernelMixin, keras.layers.Conv1D):
    """Conv1D with per-output-channel int8 weight fake-quant (BatchNorm already folded in): a 1-D
    feature model's convolution (sensor windows, audio frames), computed as a 2-D convolution over a
    width of 1 with the kernel fake-quantized in its 2-D shape, so the converter sees the Conv2D
    pattern it quantizes (a fake-quantized 1-D kernel expanded to 2-D is an op it refuses in int8)."""

    def call(self, inputs, training=False):
        padding = self.padding
        if padding == "causal":  # as keras.layers.Conv1D pads it
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        k, cin, cout = self.kernel.shape
        kernel = _quantize_weight(ops.reshape(self.kernel, (k, 1, cin, cout)), per_channel=True)
        y = ops.conv(ops.expand_dims(inputs, 2), kernel, strides=(self.strides[0], 1), padding=padding,
                     dilation_rate=(self.dilation_rate[0], 1), data_format="channels_last")
        return self._finish(ops.squeeze(y, 2), training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDepthwiseConv2D(_QuantizedKernelMixin, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with per-channel int8 weight fake-quant.

    The depthwise kernel is (kh, kw, in, multiplier); TFLite quantizes it per output channel
    (in * multiplier), i.e. the last axis after reshaping to (kh, kw, 1, in * multiplier).
    """

    def call(self, inputs, training=False):
        kh, kw, cin, mult = self.kernel.shape
        flat = ops.reshape(self.kernel, (kh, kw, 1, cin * mult))
        kernel = ops.reshape(_quantize_weight(flat, per_channel=True), (kh, kw, cin, mult))
        y = ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._finish(y, training)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantDense(_QuantizedKernelMixin, keras.layers.Dense):
    """Dense with per-tensor int8 weight fake-quant."""

    def call(self, inputs, training=False):
        return self._finish(ops.matmul(inputs, _quantize_weight(self.kernel, per_channel=False)), training)


QUANT_LAYERS = {
    keras.layers.Conv1D: QuantConv1D,
    keras.layers.Conv2D: QuantConv2D,
    keras.layers.DepthwiseConv2D: QuantDepthwiseConv2D,
    keras.layers.Dense: QuantDense,
}
# Transformer layers, each rewritten by its function in `attention` (args, kwargs: the node's call).
TRANSFORMER_RULES = {
    keras.layers.LayerNormalization: lambda layer, args, kwargs, momentum: attention.layer_norm(layer, args[0], momentum),
    keras.layers.EinsumDense: lambda layer, args, kwargs, momentum: attention.einsum_dense(layer, args[0], momentum),
    keras.layers.MultiHeadAttention: attention.rewrite_attention,
}
# Layers that only move or select int8 values: they keep their input's scale, no quantizer needed.
PASSTHROUGH = (
    keras.layers.MaxPooling1D,
    keras.layers.ZeroPadding1D,
    keras.layers.MaxPooling2D,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
    keras.layers.Identity,
    keras.layers.ZeroPadding2D,
)
# Layers that compute new values without weights: quantize their output.
REQUANTIZE = (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.AveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.Add,
    keras.layers.Concatenate,
    keras.layers.Multiply,
    keras.layers.Rescaling,
    keras.layers.Subtract,
)


class UnsupportedLayerError(ValueError):
    """A layer QAT cannot quantize; the message names it and says why."""


def _fold_batchnorm(kernel, bias, bn, depthwise=False):
    """Fold inference-mode BatchNorm statistics into a kernel and bias (numpy)."""
    as_np = keras.ops.convert_to_numpy
    shape = bn.moving_mean.shape
    gamma = as_np(bn.gamma) if bn.scale else np.ones(shape, "float32")
    beta = as_np(bn.beta) if bn.center else np.zeros(shape, "float32")
    mean, var = as_np(bn.moving_mean), as_np(bn.moving_variance)
    factor = gamma / np.sqrt(var + bn.epsilon)
    if depthwise:
        kh, kw, cin, mult = kernel.shape
        kernel = kernel * factor.reshape(1, 1, cin, mult)
    else:
        kernel = kernel * factor  # broadcast over the last (output) axis
    bias = (bias if bias is not None else 0.0) - mean
    return kernel.astype("float32"), (bias * factor + beta).astype("float32")


def _is_custom(layer):
    return not type(layer).__module__.startswith("keras.")


def _weights(layer):
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in layer.weights]


def _activation_name(layer):
    if isinstance(layer, keras.layers.ReLU) and layer.max_value is None and not layer.negative_slope:
        return "relu"
    if isinstance(layer, keras.layers.ReLU) and layer.max_value == 6.0 and not layer.negative_slope:
        return "relu6"
    if isinstance(layer, keras.layers.Activation):
        return keras.activations.serialize(layer.activation)
    return None


def has_transformer_layers(model):
    """Whether `model` has a layer the `attention` rules rewrite (LayerNormalization, MultiHeadAttention,
    EinsumDense)."""
    return any(type(layer) in TRANSFORMER_RULES for layer in model._flatten_layers(include_self=False))


def unsupported_layers(model):
    """Every layer of `model` the QAT rewrite has no rule for, each as the message naming it ([] when
    every layer has one): what `edgebuild check-model` lists before any training."""
    problems = []
    try:
        quantize_model(model, problems=problems)
    except UnsupportedLayerError as exc:  # the model's shape itself (several inputs)
        problems.append(str(exc))
    return problems


GELU_FORMS = ("native", "sigmoid")  # GELU kept (LiteRT's int8 GELU), or as x * sigmoid(1.702 x) (`SigmoidGelu`)


def _is_gelu(layer):
    """A GELU as an Activation layer or as keras.ops.gelu in a functional model (exact or tanh)."""
    return _activation_name(layer) == "gelu" or (
        not isinstance(layer, keras.layers.Layer) and type(layer).__name__ == "Gelu")


def quantize_model(model, input_range=(0.0, 1.0), momentum=0.99, problems=None, gelu="native"):
    """Return a QAT copy of a functional/sequential float model, BatchNorm folded.

    Walks the model graph in topological order and rebuilds it: Conv2D/DepthwiseConv2D/Dense
    become fake-quantized layers (absorbing a following BatchNorm), LayerNormalization,
    MultiHeadAttention and EinsumDense their `attention` forms, activations become
    `ActivationQuantizer`s, averaging/merging layers get an output quantizer, data-movement
    layers pass through. Anything else raises `UnsupportedLayerError` naming the layer; with
    `problems` (a list), each such message is appended instead and the layer is kept as it is, so
    every one is found. `gelu`: one of GELU_FORMS, for every GELU (a layer's activation, an Activation
    layer, keras.ops.gelu).
    """
    if gelu not in GELU_FORMS:
        raise ValueError(f"gelu must be one of {GELU_FORMS}; received {gelu!r}")
    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    if len(model.inputs) != 1:
        raise UnsupportedLayerError(
            f"QAT supports single-input models; received {len(model.inputs)} inputs."
        )

    consumers = {}
    for depth_nodes in model._nodes_by_depth.values():
        for node in depth_nodes:
            for t in node.input_tensors:
                consumers.setdefault(id(t), []).append(node)

    def sole_consumer(tensor):
        nodes = consumers.get(id(tensor), [])
        return nodes[0].operation if len(nodes) == 1 else None

    inp = keras.Input(shape=model.inputs[0].shape[1:], name=model.inputs[0].name)
    x = ActivationQuantizer(fixed_range=list(input_range), name="input_quant")(inp)
    tensors = {id(model.inputs[0]): x}
    folded_bn = set()  # BN layers absorbed into the previous layer
    fused_act = set()  # activation layers absorbed into the previous layer

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.operation
            if node.is_input or isinstance(layer, keras.layers.InputLayer):
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            out_tensor = node.outputs[0]
            if id(layer) in folded_bn or id(layer) in fused_act:
                y = args[0]
            elif type(layer) in TRANSFORMER_RULES:
                try:
                    y = TRANSFORMER_RULES[type(layer)](layer, args, kwargs, momentum)
                except attention.UnsupportedAttention as exc:
                    if problems is None:
                        raise UnsupportedLayerError(str(exc)) from None
                    problems.append(str(exc))
                    y = layer(*args, **kwargs)
            elif type(layer) in QUANT_LAYERS:
                y = _quantize_layer(layer, node, args[0], sole_consumer, folded_bn, fused_act, momentum, gelu)
            elif gelu == "sigmoid" and _is_gelu(layer):
                y = SigmoidGelu(momentum=momentum, name=layer.name)(args[0])
            elif _activation_name(layer):
                y = ActivationQuantizer(
                    activation=_activation_name(layer), momentum=momentum, name=layer.name
                )(args[0])
            elif isinstance(layer, keras.layers.Rescaling) and len(args[0].shape) == 4:
                y = _rescaling_as_depthwise(layer, args[0], momentum)
            elif isinstance(layer, PASSTHROUGH):
                y = layer.__class__.from_config(layer.get_config())(*args, **kwargs)
            elif isinstance(layer, REQUANTIZE):
                y = layer.__class__.from_config(layer.get_config())(*args, **kwargs)
                y = ActivationQuantizer(momentum=momentum, name=f"{layer.name}_out_quant")(y)
            elif problems is not None and _unsupported(layer):
                problems.append(_unsupported(layer))
                y = layer(*args, **kwargs)
            elif isinstance(layer, keras.layers.BatchNormalization):
                raise UnsupportedLayerError(_unsupported(layer))
            elif not isinstance(layer, keras.layers.Layer) or (_is_custom(layer) and not layer.weights):
                # A functional op (x + 3.0, ops.multiply, ...) or a custom layer without weights:
                # recompute it from its config and quantize its output like any new value.
                op = layer if not isinstance(layer, keras.layers.Layer) else layer.__class__.from_config(layer.get_config())
                y = op(*args, **kwargs)
                y = ActivationQuantizer(momentum=momentum, name=f"{layer.name}_out_quant")(y)
            elif _is_custom(layer):
                raise UnsupportedLayerError(
                    f"layer '{layer.name}' ({type(layer).__name__}) is a custom layer with weights; QAT "
                    "cannot fake-quantize kernels it does not know, so they would stay float and the "
                    "full-integer int8 export the target needs would fail. Build the layer's weighted "
                    "parts from Conv2D/DepthwiseConv2D/Dense layers in the functional model (edgebuild "
                    "quantizes those), and keep custom layers weightless."
                )
            else:
                raise UnsupportedLayerError(
                    f"layer '{layer.name}' ({type(layer).__name__}) has no int8 QAT rule. "
                    "Use Conv1D/Conv2D/DepthwiseConv2D/Dense/EinsumDense/BatchNormalization/LayerNormalization/"
                    "MultiHeadAttention, activations and 1-D or 2-D pooling layers, replace the layer, or set "
                    "qat.enabled = false (post-training quantization)."
                )
            tensors[id(out_tensor)] = y
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(inp, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_qat")


def _unsupported(layer):
    """The message of a layer that reaches none of the rewrite's rules (after the rules themselves were
    tried), or None."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return (f"layer '{layer.name}' (BatchNormalization) follows no Conv1D/Conv2D/Dense it can be folded into, "
                "so int8 would not match training. Place BatchNormalization directly after a Conv1D, Conv2D, "
                "DepthwiseConv2D or Dense layer.")
    if not isinstance(layer, keras.layers.Layer) or (_is_custom(layer) and not layer.weights):
        return None
    if _is_custom(layer):
        return f"layer '{layer.name}' ({type(layer).__name__}) is a custom layer with weights, which QAT cannot quantize"
    return f"layer '{layer.name}' ({type(layer).__name__}) has no int8 QAT rule"


def _rescaling_as_depthwise(layer, x, momentum):
    """Rescaling (x * scale + offset) as a 1x1 depthwise convolution: in int8 a MUL/ADD by constants
    makes the converter requantize the model input through float (DEQUANTIZE/QUANTIZE), while a
    depthwise convolution rescales int8 natively, and its per-channel kernel holds scale exactly."""
    channels = x.shape[-1]
    scale = np.broadcast_to(np.asarray(layer.scale, "float32"), (channels,))
    offset = np.broadcast_to(np.asarray(layer.offset, "float32"), (channels,))
    qlayer = QuantDepthwiseConv2D(1, use_bias=True, name=layer.name, output_momentum=momentum)
    y = qlayer(x)
    qlayer.kernel.assign(scale.reshape(1, 1, channels, 1))
    qlayer.bias.assign(offset)
    return y


def _quantize_layer(layer, node, x, sole_consumer, folded_bn, fused_act, momentum, gelu="native"):
    """Build the fake-quantized replacement of a Conv2D/DepthwiseConv2D/Dense layer (its GELU
    activation as a `SigmoidGelu` after it with gelu = "sigmoid")."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.Conv1D) and config.get("data_format") == "channels_first":
        raise UnsupportedLayerError(f"layer '{layer.name}' (Conv1D) is channels_first, and QAT quantizes a Conv1D "
                                    "channels_last (as the TFLite converter runs it). Build it with "
                                    "data_format='channels_last'.")
    weights = _weights(layer)
    depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
    kernel, bias = weights[0], (weights[1] if layer.use_bias else None)
    tail = node.outputs[0]

    bn = sole_consumer(tail)
    own_activation = config.get("activation", "linear")
    if isinstance(bn, keras.layers.BatchNormalization) and own_activation == "linear":
        kernel, bias = _fold_batchnorm(kernel, bias, bn, depthwise=depthwise)
        folded_bn.add(id(bn))
        tail = bn._inbound_nodes[0].outputs[0]
    act_layer = sole_consumer(tail)
    if own_activation == "linear" and act_layer is not None and _activation_name(act_layer) in (
        "relu",
        "relu6",
    ):
        config["activation"] = _activation_name(act_layer)
        fused_act.add(id(act_layer))

    sigmoid_gelu = gelu == "sigmoid" and config.get("activation") == "gelu"
    if sigmoid_gelu:
        config["activation"] = "linear"
    config["use_bias"] = bias is not None
    config.pop("bias_initializer", None)
    qlayer = QUANT_LAYERS[type(layer)].from_config(
        {**config, "quantize_output": True, "output_momentum": momentum}
    )
    y = qlayer(x)
    qlayer.kernel.assign(kernel)
    if bias is not None:
        qlayer.bias.assign(bias)
    return SigmoidGelu(momentum=momentum, name=f"{layer.name}_gelu")(y) if sigmoid_gelu else y


def init_ranges(model, x):
    """One pass over `x` in training mode, so every activation range starts from real data. On JAX the
    pass is one compiled call (stateless_call under jax.jit: about 0.5 s for the default model) rather
    than op by op (about 7 s, each fake-quant op dispatched and compiled on its own); the updated
    ranges (and batch-norm statistics) are assigned back."""
    if keras.backend.backend() != "jax":
        model(x, training=True)
        return
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    _, updated = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True))(trainable, non_trainable, x)
    for variable, value in zip(model.non_trainable_variables, updated):
        variable.assign(value)


def activation_ranges(model):
    """{quantizer path: [min, max]} of every activation quantizer, as trained."""
    ranges = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, ActivationQuantizer):
            lo = float(keras.ops.convert_to_numpy(layer.range_min))
            hi = float(keras.ops.convert_to_numpy(layer.range_max))
            ranges[layer.path if hasattr(layer, "path") else layer.name] = [lo, hi]
    return ranges
