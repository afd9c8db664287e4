"""QAT layers for transformer blocks, each written as the ops LiteRT runs in full integer int8:

- `QuantLayerNormalization`: MEAN, SUB, MUL (the square), MEAN, ADD (epsilon), MAXIMUM (a floor),
  RSQRT, MUL, MUL (gamma), ADD (beta) (Keras's own form computes `-mean * inv`, a NEG the converter
  leaves in float between a DEQUANTIZE and a QUANTIZE);
- `QuantEinsumDense`: the einsum (FULLY_CONNECTED or BATCH_MATMUL after conversion) with its kernel
  fake-quantized per tensor, like Dense;
- `QuantAttention`: scaled dot-product attention over projected query, key and value: BATCH_MATMUL,
  SOFTMAX, BATCH_MATMUL, with the scores, the probabilities and the output fake-quantized. The
  probabilities use the one range TFLite's int8 SOFTMAX writes (scale 1/256, zero point -128).

`rewrite_attention` turns a MultiHeadAttention node into QuantEinsumDense projections around a
QuantAttention, with 1/sqrt(key_dim) folded into the query projection (no MUL by a constant).
"""

import math

import keras
import numpy as np
from keras import ops

from pipeline.model.fakequant import PACKAGE, UNIT_RANGE, _fake_quant, _quantize_weight, output_quantizer

VARIANCE_FLOOR_STEPS = 4  # see QuantLayerNormalization.call
SOFTMAX_RANGE = UNIT_RANGE  # int8 SOFTMAX's output: scale 1/256, zero point -128


class UnsupportedAttention(ValueError):
    """A MultiHeadAttention call the rewrite cannot express; the message names the layer and why."""


def _requantize_like(quantizer, x):
    """Fake-quantize `x` with `quantizer`'s current range, leaving the range as it is."""
    lo = ops.minimum(quantizer.range_min, 0.0)
    return _fake_quant(x, lo, ops.maximum(quantizer.range_max, lo + 1e-6))


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantLayerNormalization(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis (rms_scaling=False), as int8 ops, its output fake-quantized."""

    def __init__(self, output_momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.output_momentum = float(output_momentum)

    def build(self, input_shape):
        super().build(input_shape)
        reduced = tuple(input_shape[:-1]) + (1,)
        # one quantizer per tensor the int8 graph holds, so QAT trains on the arithmetic LiteRT runs
        for name, shape in (("mean", reduced), ("centered", input_shape), ("squared", input_shape),
                            ("variance", reduced), ("inverse", reduced), ("normalized", input_shape),
                            ("scaled", input_shape)):
            setattr(self, f"{name}_quantizer", output_quantizer(self, shape, self.output_momentum, suffix=f"{name}_quant"))
        self.output_quantizer = output_quantizer(self, input_shape, self.output_momentum)

    def call(self, inputs, training=False):
        def fq(name, x):
            return getattr(self, f"{name}_quantizer")(x, training=training)

        centered = fq("centered", inputs - fq("mean", ops.mean(inputs, axis=-1, keepdims=True)))
        variance = fq("variance", ops.mean(fq("squared", centered * centered), axis=-1, keepdims=True))
        variance = _requantize_like(self.variance_quantizer, variance + self.epsilon)
        # A floor of VARIANCE_FLOOR_STEPS steps of the int8 variance: near zero, one step is a large
        # relative change, and RSQRT turns the 1-step rounding differences between kernel libraries'
        # MEAN (XNNPACK, LiteRT's optimized and reference kernels, TFLM) into tens of steps of the
        # normalized tokens; at the floor one step moves the inverse by at most 1/(2 * floor). A token
        # with less variance (a blank patch) is normalized less, and QAT trains the model to that.
        step = ops.maximum(self.variance_quantizer.range_max / 255.0, 1e-12)
        floor = VARIANCE_FLOOR_STEPS * step
        y = fq("normalized", centered * fq("inverse", ops.rsqrt(ops.maximum(variance, floor))))
        if self.scale and self.center:
            y = fq("scaled", y * self.gamma) + self.beta
        elif self.scale:
            y = y * self.gamma
        elif self.center:
            y = y + self.beta
        return self.output_quantizer(y, training=training)

    def get_config(self):
        return {**super().get_config(), "output_momentum": self.output_momentum}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantEinsumDense(keras.layers.EinsumDense):
    """EinsumDense with a per-tensor int8 weight fake-quant and its output fake-quantized."""

    def __init__(self, *args, output_momentum=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.output_momentum = float(output_momentum)

    def build(self, input_shape):
        super().build(input_shape)
        self.output_quantizer = output_quantizer(self, self.compute_output_shape(input_shape), self.output_momentum)

    def call(self, inputs, training=False):
        y = ops.einsum(self.equation, inputs, _quantize_weight(self.kernel, per_channel=False))
        if self.bias is not None:
            y = y + self.bias
        if self.activation is not None:
            y = self.activation(y)
        return self.output_quantizer(y, training=training)

    def get_config(self):
        return {**super().get_config(), "output_momentum": self.output_momentum}


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantAttention(keras.layers.Layer):
    """softmax(einsum(key, query)) applied to value, the query already scaled by 1/sqrt(key_dim)."""

    def __init__(self, dot_equation, combine_equation, softmax_axes, output_momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.dot_equation = dot_equation
        self.combine_equation = combine_equation
        self.softmax_axes = tuple(int(a) for a in softmax_axes)
        self.output_momentum = float(output_momentum)

    def build(self, query_shape, key_shape, value_shape):
        scores = ops.einsum(self.dot_equation, keras.KerasTensor(key_shape), keras.KerasTensor(query_shape)).shape
        self.scores_quantizer = output_quantizer(self, scores, self.output_momentum, suffix="scores_quant")
        self.probs_quantizer = output_quantizer(self, scores, self.output_momentum, SOFTMAX_RANGE, suffix="probs_quant")
        self.output_quantizer = output_quantizer(self, self.compute_output_shape(query_shape, key_shape, value_shape),
                                                  self.output_momentum)

    def call(self, query, key, value, training=False):
        scores = self.scores_quantizer(ops.einsum(self.dot_equation, key, query), training=training)
        probs = self.probs_quantizer(ops.softmax(scores, axis=self.softmax_axes[0] if len(self.softmax_axes) == 1
                                                 else self.softmax_axes), training=training)
        return self.output_quantizer(ops.einsum(self.combine_equation, probs, value), training=training)

    def compute_output_shape(self, query_shape, key_shape, value_shape):
        return tuple(query_shape[:-1]) + (value_shape[-1],)

    def get_config(self):
        return {**super().get_config(), "dot_equation": self.dot_equation, "combine_equation": self.combine_equation,
                "softmax_axes": list(self.softmax_axes), "output_momentum": self.output_momentum}


def _einsum_copy(dense, name, momentum, scale=1.0):
    """A QuantEinsumDense with `dense`'s equation and weights (kernel and bias times `scale`)."""
    config = {**dense.get_config(), "name": name, "output_momentum": momentum}
    config.pop("lora_rank", None)
    config.pop("lora_alpha", None)
    layer = QuantEinsumDense.from_config(config)
    return layer, [np.asarray(ops.convert_to_numpy(w)) * scale for w in (dense.kernel, dense.bias) if w is not None]


def layer_norm(layer, x, momentum):
    """The QAT form of a LayerNormalization over the last axis, its gamma and beta copied."""
    axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if layer.rms_scaling:
        raise UnsupportedAttention(
            f"layer '{layer.name}' (LayerNormalization) uses rms_scaling=True, which the int8 QAT rewrite does not "
            "express; it quantizes the mean-and-variance form. Build it with rms_scaling=False (Keras deprecates it).")
    if [a % len(x.shape) for a in axes] != [len(x.shape) - 1]:
        raise UnsupportedAttention(
            f"layer '{layer.name}' (LayerNormalization) normalizes over axes {list(layer.axis) if isinstance(layer.axis, (list, tuple)) else layer.axis}; "
            "the int8 QAT rewrite normalizes over the last axis only (a transformer's features). Use axis=-1."
        )
    qlayer = QuantLayerNormalization.from_config({**layer.get_config(), "output_momentum": momentum})
    y = qlayer(x)
    for mine, theirs in zip(qlayer.weights, layer.weights):  # copies: JAX training donates the buffers
        mine.assign(np.array(ops.convert_to_numpy(theirs)))
    return y


def einsum_dense(layer, x, momentum):
    """The QAT form of a standalone EinsumDense."""
    qlayer, weights = _einsum_copy(layer, layer.name, momentum)
    y = qlayer(x)
    for variable, value in zip((qlayer.kernel, qlayer.bias), weights):
        variable.assign(value)
    return y


def rewrite_attention(layer, args, kwargs, momentum):
    """The QAT form of one MultiHeadAttention call `layer(*args, **kwargs)` on already rewritten
    tensors: query/key/value projections, attention, output projection. Raises UnsupportedAttention
    for what it does not express (masks, a gate, returned scores). Attention dropout, a training-time
    step with nothing in the int8 graph, is left out of QAT's fine-tuning."""
    problems = [k for k in ("attention_mask", "return_attention_scores", "use_causal_mask", "query_mask",
                            "value_mask", "key_mask") if kwargs.get(k) is not None and kwargs.get(k) is not False]
    if getattr(layer, "_use_gate", False):
        problems.append("use_gate (a constructor setting)")
    if getattr(layer, "_sliding_window", None) is not None:
        problems.append("sliding_window (a constructor setting)")
    if problems:
        raise UnsupportedAttention(
            f"layer '{layer.name}' (MultiHeadAttention) uses {', '.join(problems)}, which the int8 QAT rewrite "
            "does not express; it quantizes plain self- or cross-attention (query, value[, key]). Drop those "
            "arguments or set qat.enabled = false (post-training quantization)."
        )
    query = args[0] if args else kwargs["query"]
    value = args[1] if len(args) > 1 else kwargs["value"]
    key = args[2] if len(args) > 2 else kwargs.get("key")
    key = value if key is None else key
    made = []

    def project(dense, x, suffix, scale=1.0):
        qlayer, weights = _einsum_copy(dense, f"{layer.name}_{suffix}", momentum, scale)
        y = qlayer(x)
        made.append((qlayer, weights))
        return y

    q = project(layer._query_dense, query, "query", scale=1.0 / math.sqrt(float(layer._key_dim)))
    k = project(layer._key_dense, key, "key")
    v = project(layer._value_dense, value, "value")
    softmax_axes = layer._softmax.axis if isinstance(layer._softmax.axis, (tuple, list)) else (layer._softmax.axis,)
    attended = QuantAttention(layer._dot_product_equation, layer._combine_equation, softmax_axes,
                              output_momentum=momentum, name=f"{layer.name}_attention")(q, k, v)
    out = project(layer._output_dense, attended, "output")
    for qlayer, weights in made:
        for variable, value_ in zip((qlayer.kernel, qlayer.bias), weights):
            variable.assign(value_)
    return out
