"""Run a `.tflite` (ai-edge-litert) or `.onnx` (onnxruntime) on the host, in batches."""

import numpy as np


def run_tflite(path, x_int8_or_float, batch=64, threads=1):
    """Run a .tflite on the host with ai-edge-litert, in fixed-size batches; returns raw outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    results = []
    for start in range(0, len(x_int8_or_float), batch):
        chunk = x_int8_or_float[start : start + batch]
        interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
        interp.invoke()
        results.append(interp.get_tensor(out["index"]).copy())
    return np.concatenate(results)


def run_onnx(path, x):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]
