"""tf2onnx handlers for the ops a transformer's GELU becomes, which tf2onnx 1.17 cannot convert:

- TF `Erfc` (the exact `tf.nn.gelu`): tf2onnx passes it through as an `Erfc` node, which is no ONNX
  op, so onnxruntime refuses the model. Written here as 1 - Erf(x).
- TFLite `GELU` (the int8 `.tflite`'s op, exact or tanh): tf2onnx has no handler ("No Op registered
  for TFL_GELU"). Written here as 0.5 * x * (1 + Erf(x / sqrt 2)), or with the tanh approximation,
  between the DequantizeLinear/QuantizeLinear pair tf2onnx puts around every int8 op.

`register()` adds them to tf2onnx's registry once per process, before any conversion."""

import math

import numpy as np

_REGISTERED = []


def _const(ctx, value, dtype):
    from tf2onnx import utils

    return ctx.make_const(utils.make_name("gelu_c"), np.array(value, utils.map_onnx_to_numpy_type(dtype))).output[0]


def _unary(ctx, op, x, dtype, shape, *more):
    return ctx.make_node(op, [x, *more], shapes=[shape], dtypes=[dtype]).output[0]


def _erfc(cls, ctx, node, **kwargs):
    x, dtype, shape = node.input[0], ctx.get_dtype(node.input[0]), ctx.get_shape(node.input[0])
    erf = _unary(ctx, "Erf", x, dtype, shape)
    node.type = "Sub"
    ctx.replace_inputs(node, [_const(ctx, 1.0, dtype), erf])


def _gelu(cls, ctx, node, **kwargs):
    x, dtype, shape = node.input[0], ctx.get_dtype(node.input[0]), ctx.get_shape(node.input[0])
    if node.get_attr_value("approximate", False):
        cube = _unary(ctx, "Mul", x, dtype, shape, _unary(ctx, "Mul", x, dtype, shape, x))
        inner = _unary(ctx, "Add", x, dtype, shape, _unary(ctx, "Mul", cube, dtype, shape, _const(ctx, 0.044715, dtype)))
        core = _unary(ctx, "Tanh", _unary(ctx, "Mul", inner, dtype, shape, _const(ctx, math.sqrt(2 / math.pi), dtype)),
                      dtype, shape)
    else:
        core = _unary(ctx, "Erf", _unary(ctx, "Mul", x, dtype, shape, _const(ctx, 1 / math.sqrt(2), dtype)), dtype, shape)
    one_plus = _unary(ctx, "Add", core, dtype, shape, _const(ctx, 1.0, dtype))
    half_x = _unary(ctx, "Mul", x, dtype, shape, _const(ctx, 0.5, dtype))
    node.type = "Mul"
    for attr in list(node.attr):
        del node.attr[attr]
    ctx.replace_inputs(node, [half_x, one_plus])


def register():
    """Add the Erfc and GELU handlers to tf2onnx (once)."""
    if _REGISTERED:
        return
    from tf2onnx.handler import tf_op, tfl_op

    tf_op("Erfc")(type("Erfc", (), {"version_9": classmethod(_erfc)}))
    tf_op("EdgebuildGelu")(type("Gelu", (), {"version_9": classmethod(_gelu)}))
    tfl_op("TFL_GELU", tf_op="EdgebuildGelu")(type("TflGelu", (), {"to_tf": classmethod(lambda cls, ctx, node, **kw: None)}))
    _REGISTERED.append(True)
