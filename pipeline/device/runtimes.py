"""Run a `.tflite` (ai-edge-litert) or `.onnx` (onnxruntime) on the host, in batches."""

import numpy as np


def static_batch(input_detail):
    """The batch size a model was converted with when it is fixed (a shape signature without -1 in
    front: its graph may reshape to that batch), else None (any batch size runs)."""
    signature = input_detail.get("shape_signature")
    if signature is None or len(signature) == 0 or signature[0] == -1:
        return None
    return int(signature[0])


def _in_batches(run, x, batch, fixed):
    """run(chunk) over `x` in batches: at the model's fixed batch size (the last batch padded, padded rows
    dropped), else at `batch`; returns the concatenated outputs."""
    batch = fixed or batch
    results = []
    for start in range(0, len(x), batch):
        chunk = x[start : start + batch]
        n = len(chunk)
        if fixed and n < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), chunk.dtype)])
        results.append(run(chunk)[:n].copy())
    return np.concatenate(results)


def run_tflite(path, x_int8_or_float, batch=64, threads=1):
    """Run a .tflite on the host with ai-edge-litert, in batches (the model's own batch size when it is
    fixed); returns raw outputs."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    fixed = static_batch(inp)

    def run(chunk):
        if not fixed:
            interp.resize_tensor_input(inp["index"], [len(chunk), *inp["shape"][1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], chunk.astype(inp["dtype"]))
        interp.invoke()
        return interp.get_tensor(out["index"])

    return _in_batches(run, x_int8_or_float, batch, fixed)


def run_onnx(path, x, batch=256, threads=1):
    """Run an .onnx on the host with onnxruntime, in batches (the model's own batch size when its input
    has a fixed one); returns raw outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    return _in_batches(lambda chunk: session.run(None, {inp.name: chunk})[0], x, batch, fixed)
