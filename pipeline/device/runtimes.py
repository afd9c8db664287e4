"""Run a `.tflite` (ai-edge-litert) or `.onnx` (onnxruntime) on the host, in batches."""

import numpy as np


def static_batch(input_detail):
    """The batch size a model was converted with when it is fixed (a shape signature without -1 in
    front: its graph may reshape to that batch), else None (any batch size runs)."""
    signature = input_detail.get("shape_signature")
    if signature is None or len(signature) == 0 or signature[0] == -1:
        return None
    return int(signature[0])


def run_tflite(path, x_int8_or_float, batch=64, threads=1):
    """Run a .tflite on the host with ai-edge-litert, in batches (the model's own batch size when it is
    fixed, the last batch padded); returns raw outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    fixed = static_batch(inp)
    batch = fixed or batch
    results = []
    for start in range(0, len(x_int8_or_float), batch):
        chunk = x_int8_or_float[start : start + batch].astype(inp["dtype"])
        n = len(chunk)
        if fixed and n < batch:  # pad to the fixed batch; padded rows are dropped
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        if not fixed:
            interp.resize_tensor_input(inp["index"], [n, *inp["shape"][1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], chunk)
        interp.invoke()
        results.append(interp.get_tensor(out["index"])[:n].copy())
    return np.concatenate(results)


def run_onnx(path, x, batch=256, threads=1):
    """Run an .onnx on the host with onnxruntime, in batches (the model's own batch size when its
    input has a fixed one, the last batch padded); returns raw outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    batch = fixed or batch
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if fixed and n < batch:  # pad to the fixed batch; padded rows are dropped
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        results.append(session.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(results)
