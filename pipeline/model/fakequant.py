"""The fake-quant primitives every QAT layer shares: the int8 fake-quant of a tensor, the symmetric
fake-quant of a kernel, the range-tracking activation quantizer and the kernel-layer mixin.

Conventions, matching what TFLite's int8 kernels expect:
- weights: symmetric, narrow range [-127, 127]; per output channel for convolutions, per tensor for
  Dense (per-channel Dense makes the converter fail with "tfl.transpose op has mismatched
  quantized axes").
- activations: asymmetric per tensor, range tracked by an exponential moving average of each
  batch's min/max, initialised from the first real batch (never from zero).
"""

import keras
from keras import ops

# activations the converter fuses into a convolution or FULLY_CONNECTED (no int8 tensor before them)
FUSED_ACTIVATIONS = ("linear", "relu", "relu6")

PACKAGE = "edgebuild"


def _fake_quant(x, lo, hi, narrow_range=False, axis=None):
    return keras.quantizers.fake_quant_with_min_max_vars(
        x, lo, hi, num_bits=8, narrow_range=narrow_range, axis=axis
    )


def _quantize_weight(w, per_channel):
    """Symmetric fake-quant of a kernel; per channel on the last axis when asked."""
    if per_channel:
        reduce_axes = tuple(range(len(w.shape) - 1))
        bound = ops.max(ops.abs(w), axis=reduce_axes)
        bound = ops.maximum(bound, 1e-8)
        return _fake_quant(w, -bound, bound, narrow_range=True, axis=len(w.shape) - 1)
    bound = ops.maximum(ops.max(ops.abs(w)), 1e-8)
    return _fake_quant(w, -bound, bound, narrow_range=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor to int8, tracking its range with an EMA (or a fixed range).

    Optionally applies an activation first, so ReLU and its quantizer become one fused op in the
    converted graph.
    """

    def __init__(self, activation=None, momentum=0.99, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.momentum = float(momentum)
        self.fixed_range = None if fixed_range is None else [float(v) for v in fixed_range]

    def build(self, input_shape):
        lo, hi = self.fixed_range if self.fixed_range else (0.0, 0.0)
        self.range_min = self.add_weight(
            name="range_min", shape=(), initializer=keras.initializers.Constant(lo), trainable=False
        )
        self.range_max = self.add_weight(
            name="range_max", shape=(), initializer=keras.initializers.Constant(hi), trainable=False
        )
        # 1.0 once a real batch has set the range; the first batch replaces the zeros outright.
        self.seen = self.add_weight(
            name="seen",
            shape=(),
            initializer=keras.initializers.Constant(1.0 if self.fixed_range else 0.0),
            trainable=False,
        )

    def call(self, inputs, training=False):
        x = self.activation(inputs)
        if training and not self.fixed_range:
            batch_min = ops.minimum(ops.min(x), 0.0)
            batch_max = ops.maximum(ops.max(x), 0.0)
            m = self.momentum
            seen = self.seen
            self.range_min.assign(
                seen * (m * self.range_min + (1 - m) * batch_min) + (1 - seen) * batch_min
            )
            self.range_max.assign(
                seen * (m * self.range_max + (1 - m) * batch_max) + (1 - seen) * batch_max
            )
            self.seen.assign(1.0)
        lo = ops.minimum(self.range_min, 0.0)
        hi = ops.maximum(self.range_max, lo + 1e-6)
        return _fake_quant(x, lo, hi)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            activation=keras.activations.serialize(self.activation),
            momentum=self.momentum,
            fixed_range=self.fixed_range,
        )
        return config


def output_quantizer(layer, shape, momentum, fixed_range=None, suffix="out_quant"):
    """A built `ActivationQuantizer` named after `layer` (`<layer>_<suffix>`) for a tensor of `shape`."""
    quantizer = ActivationQuantizer(momentum=momentum, fixed_range=fixed_range, name=f"{layer.name}_{suffix}",
                                    dtype=layer.dtype_policy)
    quantizer.build(shape)
    return quantizer


class _QuantizedKernelMixin:
    """Shared constructor, build and get_config for layers that fake-quantize a kernel and maybe
    their output; listed before the Keras layer class so its methods wrap the layer's."""

    def __init__(self, *args, quantize_output=True, output_momentum=0.99, **kwargs):
        super().__init__(*args, **kwargs)
        self.quantize_output = bool(quantize_output)
        self.output_momentum = float(output_momentum)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_output_quantizer(self.compute_output_shape(input_shape))

    def _build_output_quantizer(self, shape):
        self.preactivation_quantizer = None
        if self.quantize_output:
            self.output_quantizer = output_quantizer(self, shape, self.output_momentum)
            if keras.activations.serialize(self.activation) not in FUSED_ACTIVATIONS:
                # GELU, swish, sigmoid...: their own int8 op, so the layer's output before it is an int8 tensor
                self.preactivation_quantizer = output_quantizer(self, shape, self.output_momentum, suffix="preact_quant")
        else:
            self.output_quantizer = None

    def get_config(self):
        return {
            **super().get_config(),
            "quantize_output": self.quantize_output,
            "output_momentum": self.output_momentum,
        }

    def _finish(self, y, training):
        """Bias, activation and the output's fake-quant, after the layer's own (quantized-kernel) op."""
        if self.use_bias:
            y = ops.add(y, self.bias)
        if self.preactivation_quantizer is not None:
            y = self.preactivation_quantizer(y, training=training)
        y = self.activation(y)
        if self.output_quantizer is not None:
            y = self.output_quantizer(y, training=training)
        return y


# int8 LOGISTIC's (and SOFTMAX's) output: scale 1/256, zero point -128, what LiteRT's and TFLM's kernels require
UNIT_RANGE = [0.0, 255.0 / 256.0]
SIGMOID_GELU_SCALE = 1.702  # gelu(x) ~ x * sigmoid(1.702 x) (Hendrycks & Gimpel, 2016), within 0.021 everywhere


@keras.saving.register_keras_serializable(package=PACKAGE)
class SigmoidGelu(keras.layers.Layer):
    """GELU as x * sigmoid(1.702 x), fake-quantized where the converter puts int8 tensors: three int8
    ops (MUL by a constant, LOGISTIC, MUL) that every int8 runtime has, for a runtime without a GELU
    kernel (TensorFlow Lite Micro, and so an Ethos-U's CPU fallback; Vela has no GELU either). QAT
    fine-tunes the model to the approximation."""

    def __init__(self, momentum=0.99, **kwargs):
        super().__init__(**kwargs)
        self.momentum = float(momentum)

    def build(self, input_shape):
        self.scaled_quantizer = output_quantizer(self, input_shape, self.momentum, suffix="scaled_quant")
        self.gate_quantizer = output_quantizer(self, input_shape, 0.99, UNIT_RANGE, suffix="gate_quant")
        self.output_quantizer = output_quantizer(self, input_shape, self.momentum)

    def call(self, inputs, training=False):
        scaled = self.scaled_quantizer(ops.multiply(inputs, SIGMOID_GELU_SCALE), training=training)
        gate = self.gate_quantizer(ops.sigmoid(scaled), training=training)
        return self.output_quantizer(ops.multiply(inputs, gate), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}
