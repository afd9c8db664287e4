"""evaluate stage (host): accuracy of float Keras, int8 TFLite, float TFLite and ONNX on the test
split, per class, and top-1 agreement between them. Writes every model's test predictions to
`predictions.npz` so targets and the gate compare by sample id."""

import hashlib

import numpy as np

from .. import preprocess, tflite_info
from .data import load_dataset


def accuracy_record(top1, labels, class_names):
    per_class = {}
    for c, name in enumerate(class_names):
        mask = labels == c
        per_class[name] = round(float((top1[mask] == c).mean()), 6) if mask.any() else None
    return {"accuracy": round(float((top1 == labels).mean()), 6), "per_class": per_class, "samples": int(len(labels))}


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


def run(pp, dataset_path, float_keras, int8_tflite, float_tflite, onnx_path, out_dir, progress):
    import keras

    data = load_dataset(dataset_path)
    idx = data["test"]
    images, labels = data["x"][idx], data["y"][idx]
    class_names = [str(c) for c in data["class_names"]]
    x = preprocess.to_float(images, pp)
    bar = progress.bar(4, "evaluate", unit="model")

    float_logits = keras.models.load_model(float_keras).predict(x, batch_size=256, verbose=0)
    bar.update(1)
    info = tflite_info.describe(int8_tflite)
    qin = info["inputs"][0]
    int8_out = run_tflite(int8_tflite, preprocess.to_int8(images, pp, qin["scale"], qin["zero_point"]))
    bar.update(1)
    float_tfl_out = run_tflite(float_tflite, x)
    bar.update(1)
    onnx_out = run_onnx(onnx_path, x)
    bar.update(1)
    bar.close()

    top1 = {
        "float": float_logits.argmax(1),
        "int8_host": int8_out.argmax(1),
        "float_tflite": float_tfl_out.argmax(1),
        "onnx": onnx_out.argmax(1),
    }
    metrics = {k: accuracy_record(v, labels, class_names) for k, v in top1.items()}
    for k in ("int8_host", "float_tflite", "onnx"):
        metrics[k]["top1_agreement_with_float"] = round(float((top1[k] == top1["float"]).mean()), 6)
    ids = data["ids"][idx]
    flips = ids[top1["int8_host"] != top1["float"]]
    metrics["int8_host"]["flips_vs_float"] = [str(s) for s in flips]
    for k in ("float", "int8_host"):
        metrics[k]["top1"] = [int(v) for v in top1[k]]
    np.savez(
        out_dir / "predictions.npz",
        ids=ids, labels=labels, float_top1=top1["float"], onnx_top1=top1["onnx"],
        int8_output=int8_out, int8_top1=top1["int8_host"],
    )
    id_list = [str(s) for s in ids]
    return {
        "metrics": metrics,
        "test_split": {"ids": id_list, "sha256": hashlib.sha256("\n".join(id_list).encode()).hexdigest()},
    }


def run_stage(config, inputs, out_dir, progress):
    return run(
        config.preprocess, inputs["dataset.npz"], inputs["float.keras"], inputs["model_int8.tflite"],
        inputs["model_float.tflite"], inputs["model.onnx"], out_dir, progress,
    )
