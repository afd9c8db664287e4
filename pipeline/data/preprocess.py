"""The preprocessing contract: how a uint8 pixel (or a feature) becomes the model's float input, and
its int8 tensor.

    x[c] = (lo + pixel * (hi - lo) / 255 - mean[c]) / std[c]        (pixels: preprocess.pixel_range = [lo, hi])
    x[c] = feature * scale[c] + offset[c]                             (tensors: features of any rank, c the last axis)
    q    = clip(round(x / input_scale) + input_zero_point, -128, 127)

One implementation, used by training, QAT (its input range), calibration, export, host and target
evaluation and the manifest, so a model trained on 0..255 or ImageNet-normalised input is fed the
same numbers everywhere. numpy only: no Keras here.
"""

import numpy as np

from pipeline.engine.errors import InputError

# The conventions models are commonly trained with, for the "which input does this model expect" check.
COMMON = {
    "0..1": {"pixel_range": [0.0, 1.0], "mean": [], "std": []},
    "0..255": {"pixel_range": [0.0, 255.0], "mean": [], "std": []},
    "-1..1": {"pixel_range": [-1.0, 1.0], "mean": [], "std": []},
    "ImageNet mean/std": {"pixel_range": [0.0, 1.0], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


def _per_channel(values, default, channels):
    values = [float(v) for v in values] or [default]
    return np.asarray(values * channels if len(values) == 1 else values, np.float64)


def is_tensor(x, cfg):
    """Whether `x` holds features (the tensor form) rather than uint8 pixels: preprocess.form = 'tensor',
    or 'auto' with anything but uint8 (the data stage keeps pixels as uint8 and features as they are)."""
    return cfg.form == "tensor" or (cfg.form == "auto" and np.asarray(x).dtype != np.uint8)


def check_form(cfg, tensor, what="x"):
    """Refuse the [preprocess] keys of the other form: pixel_range/mean/std mean nothing for features, and
    scale/offset nothing for pixels, so either would be silently ignored."""
    if tensor and ([float(v) for v in cfg.pixel_range] != [0.0, 1.0] or cfg.mean or cfg.std):
        raise InputError(f"preprocess.pixel_range, mean and std map pixels, and {what} is read as features (the tensor "
                         f"form: x * scale + offset); received pixel_range {cfg.pixel_range}, mean {cfg.mean}, std "
                         f"{cfg.std}. Use preprocess.scale and offset for features, or set preprocess.form = 'pixels'.")
    if not tensor and (cfg.scale or cfg.offset):
        raise InputError(f"preprocess.scale and offset map features, and {what} is read as images (pixels); received "
                         f"scale {cfg.scale}, offset {cfg.offset}. Use preprocess.pixel_range, mean and std for "
                         "pixels, or set preprocess.form = 'tensor'.")


def tensor_params(cfg, channels):
    """(scale[c], offset[c]) of the tensor form over the last axis (`channels` values)."""
    for name in ("scale", "offset"):
        if len(getattr(cfg, name)) not in (0, 1, channels):
            raise InputError(f"config key 'preprocess.{name}' needs one value or one per channel (the features' last "
                             f"axis: {channels}); received {len(getattr(cfg, name))}: {getattr(cfg, name)}. Give one "
                             f"value, or {channels}.")
    return _per_channel(cfg.scale, 1.0, channels), _per_channel(cfg.offset, 0.0, channels)


def params(cfg, channels):
    """(scale, offset, mean[c], std[c]) as float64: x[c] = (pixel * scale + offset - mean[c]) / std[c]."""
    lo, hi = (float(v) for v in cfg.pixel_range)
    return (hi - lo) / 255.0, lo, _per_channel(cfg.mean, 0.0, channels), _per_channel(cfg.std, 1.0, channels)


def to_float64(images, cfg):
    """uint8 images (N, H, W, C), or features, -> the model's input, in float64 (the int8 path quantizes
    from this)."""
    if is_tensor(images, cfg):
        scale, offset = tensor_params(cfg, images.shape[-1])
        return images.astype(np.float64) * scale + offset
    scale, offset, mean, std = params(cfg, images.shape[-1])
    return (images.astype(np.float64) * scale + offset - mean) / std


def to_float(images, cfg):
    """uint8 images (N, H, W, C) -> the model's float32 input."""
    return to_float64(images, cfg).astype(np.float32)


INTEGER_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def to_int8(images, cfg, scale, zero_point, dtype="int8"):
    """uint8 images -> the int8 (or uint8, int16) input tensor of a model quantized with (scale, zero_point)."""
    lo, hi = INTEGER_RANGES[dtype]
    return np.clip(np.round(to_float64(images, cfg) / scale) + zero_point, lo, hi).astype(dtype)


def to_input(images, cfg, tensor, origin="the model"):
    """uint8 images -> the input tensor `tensor` describes (tflite_info's dtype, scale, zero_point):
    float32 through the float formula, int8/uint8 quantized with the tensor's own parameters."""
    dtype = tensor["dtype"]
    if fed_unchanged(images, cfg, tensor):
        return images  # features already quantized for this input, as an embedded runner feeds them
    if is_tensor(images, cfg) and not np.issubdtype(images.dtype, np.floating):
        if dtype != "float32":
            raise InputError(f"integer features must be in the model's input dtype to be fed unchanged; x is "
                             f"{images.dtype}, {origin}'s input is {dtype}. Save x as {dtype} (quantized with the "
                             f"input's scale and zero point) or as float32 features.")
    if dtype == "float32":
        return to_float(images, cfg)
    if dtype not in INTEGER_RANGES:
        raise InputError(f"{origin}'s input must be float32, int8, uint8 or int16; it is {dtype}. Export it with one of "
                         "those.")
    if not tensor.get("scale"):
        raise InputError(f"{origin}'s {dtype} input must carry per-tensor quantization (scale, zero point); it has "
                         "none, so pixels cannot be mapped to it. Convert with inference_input_type and a "
                         "representative dataset.")
    return to_int8(images, cfg, tensor["scale"], tensor["zero_point"] or 0, dtype)


def fed_unchanged(x, cfg, tensor):
    """Whether `x` goes into the input `tensor` as it is: integer features in the input's own dtype."""
    return is_tensor(x, cfg) and not np.issubdtype(np.asarray(x).dtype, np.floating) and str(x.dtype) == tensor["dtype"]


def float_input(x, cfg, tensor):
    """What the model's input stands for, in float64: the float formula, or, for features fed unchanged
    (pre-quantized to the input), their dequantized values. An anomaly score compares a reconstruction
    with this."""
    return dequantize(x, tensor) if fed_unchanged(x, cfg, tensor) else to_float64(x, cfg)


def dequantize(values, tensor):
    """Raw output values -> float64, using the tensor's scale and zero point when it is quantized."""
    values = np.asarray(values)
    if tensor.get("dtype") in INTEGER_RANGES and tensor.get("scale"):
        return (values.astype(np.float64) - (tensor["zero_point"] or 0)) * tensor["scale"]
    return values.astype(np.float64)


def float_range(cfg, channels, inputs=None):
    """(min, max) of the model input over every pixel value and channel: the int8 input range. For
    features (the tensor form) it is the range of their model `inputs` (the training ones), widened to
    hold 0."""
    if inputs is not None:
        return float(min(inputs.min(), 0.0)), float(max(inputs.max(), 0.0))
    scale, offset, mean, std = params(cfg, channels)
    ends = np.stack([(offset - mean) / std, (255.0 * scale + offset - mean) / std])
    return float(ends.min()), float(ends.max())


def describe(cfg, channels, scale=None, zero_point=None, dtype="int8", tensor=False):
    """The contract as JSON-able data, with the formula spelled out (and the int8 step when known)."""
    if tensor:
        return _describe_tensor(cfg, channels, scale, zero_point, dtype)
    s, o, mean, std = params(cfg, channels)
    record = {
        "pixel_range": [float(v) for v in cfg.pixel_range],
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "pixel_scale": s,
        "pixel_offset": o,
        "float_formula": "x[c] = (pixel * pixel_scale + pixel_offset - mean[c]) / std[c]  (pixel: uint8 0..255)",
    }
    return _with_int8_step(record, scale, zero_point, dtype, f"x[c] = (pixel * {s!r} + {o!r} - mean[c]) / std[c], "
                                                             f"mean {record['mean']}, std {record['std']}")


def _with_int8_step(record, scale, zero_point, dtype, float_step):
    """The record with its int8 formula (the quantization of `float_step`) when the input's scale is known."""
    if scale is not None:
        lo, hi = INTEGER_RANGES[dtype]
        record["int8_formula"] = f"q = clip(round(x[c] / {scale!r}) + {zero_point}, {lo}, {hi})  with {float_step}"
    return record


def _describe_tensor(cfg, channels, scale, zero_point, dtype):
    tensor_params(cfg, channels)  # refuses a per-channel list of the wrong length
    record = {
        "form": "tensor",
        "scale": [float(v) for v in cfg.scale] or [1.0],
        "offset": [float(v) for v in cfg.offset] or [0.0],
        "float_formula": "x[c] = feature * scale[c] + offset[c]  (c: the last axis; no pixel conversion)",
    }
    return _with_int8_step(record, scale, zero_point, dtype, f"x[c] = feature * scale[c] + offset[c], scale "
                                                             f"{record['scale']}, offset {record['offset']}; {dtype} "
                                                             "features are fed unchanged")


def setting(convention, current=None):
    """The config line that selects one of COMMON's conventions (clearing mean/std only if `current` has them)."""
    c = COMMON[convention]
    lo, hi = c["pixel_range"]
    text = f"preprocess.pixel_range = [{lo:g}, {hi:g}]"
    if c["mean"]:
        text += f", preprocess.mean = {c['mean']}, preprocess.std = {c['std']}"
    elif current is not None and (current.mean or current.std):
        text += ", preprocess.mean = [], preprocess.std = []"
    return text
