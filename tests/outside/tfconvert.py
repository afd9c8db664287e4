"""What the feature scripts here share: TensorFlow's own converter to full integer (int8 in and out)
and TensorFlow's own interpreter, as a team outside edgebuild uses them."""

import numpy as np
import tensorflow as tf


def full_integer(serve, module, samples):
    """The .tflite bytes of a tf.function `serve` (batch 1) of `module`, calibrated on `samples` (N, ...)."""
    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None]] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    return converter.convert()


def run_int8(path, features):
    """(the int8 inputs the model was fed, its dequantized outputs) of float `features` (N, ...), one by
    one through tf.lite.Interpreter, each quantized with the input's scale and zero point."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    (in_scale, in_zero), (out_scale, out_zero) = inp["quantization"], outp["quantization"]
    quantized = np.clip(np.round(features / in_scale) + in_zero, -128, 127).astype(np.int8)
    outputs = []
    for q in quantized:
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        outputs.append((interpreter.get_tensor(outp["index"])[0].astype(np.float64) - out_zero) * out_scale)
    return quantized, np.stack(outputs)
