"""evaluate stage (host): accuracy of float Keras, int8 TFLite, float TFLite, float ONNX and int8 ONNX
on the test split, per class, and top-1 agreement between them; the int8 ONNX is also compared with
the int8 TFLite output by output (raw and dequantized). Writes every model's test predictions to
`predictions.npz` so targets and the gate compare by sample id."""


from pipeline.data import preprocess
from pipeline.data.splits import load_dataset, test_split_record
from pipeline.device import onnx_info, tflite_info
from pipeline.device.runtimes import run_onnx, run_tflite
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.model import layer_refs, usermodel
from pipeline.release import tasks
from pipeline.release.metrics import accuracy_record, compare, with_top_k

STAGE = Stage(
    "evaluate", __name__, config=("preprocess", "train.recipe", "task.kind", "task.top_k"),
    inputs=("dataset.npz", "float.keras", "model_int8.tflite", "model_float.tflite", "model.onnx", "model_int8.onnx"),
    outputs=("predictions.npz", "layers.npz"), backend="jax", optional_inputs=("model.onnx", "model_int8.onnx"),
    toolchain=(*usermodel.JAX_TOOLCHAIN, "ai-edge-litert", "onnxruntime", "onnx"),
    external=lambda config: usermodel.model_files(config.train, False),
)


def publish(records, config, build_dir):
    """The manifest's accuracies per runtime, the test split's ids and labels, and predictions.npz."""
    from pipeline.release.manifest import artifact

    record = records["evaluate"]
    return {"metrics": record["metrics"], "test_split": record["test_split"],
            **({"layers": {"host": record["layers"]}} if record.get("layers") else {}),  # (none in older builds)
            "artifacts": {"predictions": artifact(build_dir, "predictions.npz")}}


def run(stage_cfg, inputs, out_dir, ctx):
    import keras

    usermodel.register_user_layers(stage_cfg.train.recipe)

    pp, progress = stage_cfg.preprocess, ctx.progress
    dataset_path, float_keras = inputs["dataset.npz"], inputs["float.keras"]
    onnx = "model.onnx" in inputs and "model_int8.onnx" in inputs  # export.formats has "onnx", and it was made
    int8_tflite, float_tflite = inputs["model_int8.tflite"], inputs["model_float.tflite"]

    data = load_dataset(dataset_path)
    idx = data["test"]
    images, labels = data["x"][idx], data["y"][idx]
    class_names = [str(c) for c in data["class_names"]]
    x = preprocess.to_float(images, pp)
    bar = progress.bar(5 if onnx else 3, "evaluate", unit="model")

    float_model = keras.models.load_model(float_keras)
    float_logits = float_model.predict(x, batch_size=256, verbose=0)
    bar.update(1)
    info = tflite_info.describe(int8_tflite)
    qin = info["inputs"][0]
    int8_out = run_tflite(int8_tflite, preprocess.to_input(images, pp, qin))
    bar.update(1)
    layers = _layer_report(float_model, int8_tflite, images, labels, pp, qin, out_dir)
    float_tfl_out = run_tflite(float_tflite, x)
    bar.update(1)
    # every model's outputs, dequantized: a task's metrics, and top-k
    outputs = {"float": float_logits, "int8_host": preprocess.dequantize(int8_out, info["outputs"][0]),
               "float_tflite": float_tfl_out}
    int8_onnx_out = None
    if onnx:
        outputs["onnx"] = run_onnx(inputs["model.onnx"], x)
        bar.update(1)
        onnx_q = onnx_info.describe_onnx(inputs["model_int8.onnx"])
        int8_onnx_out = run_onnx(inputs["model_int8.onnx"], preprocess.to_input(images, pp, onnx_q["inputs"][0]))
        outputs["onnx_int8"] = preprocess.dequantize(int8_onnx_out, onnx_q["outputs"][0])
        bar.update(1)
    bar.close()
    task = tasks.get(stage_cfg.task.kind)
    if task:
        return {**_task_metrics(task, outputs, x, data, idx, int8_out, int8_onnx_out, out_dir), "layers": layers}
    top1 = {name: out.argmax(1) for name, out in outputs.items()}
    metrics = {k: accuracy_record(v, labels, class_names) for k, v in top1.items()}
    for name, out in outputs.items():
        with_top_k(metrics[name], out, labels, stage_cfg.task.top_k)
    for k in set(top1) - {"float"}:
        metrics[k]["top1_agreement_with_float"] = round(float((top1[k] == top1["float"]).mean()), 6)
    if onnx:
        metrics["onnx_int8"].update(_vs_tflite(int8_onnx_out, int8_out, onnx_q["outputs"][0], info["outputs"][0],
                                               labels, data["ids"][idx], class_names))
    ids = data["ids"][idx]
    flips = ids[top1["int8_host"] != top1["float"]]
    metrics["int8_host"]["flips_vs_float"] = [str(s) for s in flips]
    for k in {"float", "int8_host", "onnx_int8"} & set(top1):
        metrics[k]["top1"] = [int(v) for v in top1[k]]
    arrays = {"ids": ids, "labels": labels, "float_top1": top1["float"], "onnx_top1": top1.get("onnx"),
              "host_output": int8_out, "int8_top1": top1["int8_host"], "onnx_int8_output": int8_onnx_out}
    atomic_save_npz(out_dir / "predictions.npz", **{k: v for k, v in arrays.items() if v is not None})
    return {
        "metrics": metrics,
        "test_split": test_split_record(ids, labels),
        "layers": layers,
    }


def _layer_report(float_model, int8_tflite, images, labels, pp, qin, out_dir):
    """The int8 model's per-layer error against the float model on the build host, on a fixed stratified
    subset of the test set (its references saved to layers.npz for the targets)."""
    few = layer_refs.subset(labels)
    return layer_refs.host_report(float_model, int8_tflite, preprocess.to_float(images[few], pp),
                                  preprocess.to_input(images[few], pp, qin), out_dir / "layers.npz")


def _task_metrics(task, outputs, x, data, idx, int8_out, int8_onnx_out, out_dir):
    """The record of a task other than classification: each model's metrics on the test split, the int8
    ONNX against the int8 .tflite, and every model's per-sample scores in predictions.npz."""
    import numpy as np

    labels, ids = data["y"][idx], data["ids"][idx]
    groups = data["groups"][idx] if "groups" in data else None
    metrics, scores = {}, {}
    for name, out in outputs.items():
        metrics[name], scores[name] = task.metrics(out, x, labels, groups)
    arrays = {"ids": ids, "labels": labels, "host_output": int8_out}
    if int8_onnx_out is not None:
        same = int8_onnx_out.reshape(len(ids), -1) == int8_out.reshape(len(ids), -1)
        metrics["onnx_int8"].update(
            bitexact_fraction_vs_int8_tflite=round(float(same.mean()), 6),
            max_dequantized_diff_vs_int8_tflite=round(float(np.abs(outputs["onnx_int8"] - outputs["int8_host"]).max()), 6),
            score_correlation_vs_int8_tflite=round(task.correlation(scores["onnx_int8"], scores["int8_host"]), 6))
        arrays["onnx_int8_output"] = int8_onnx_out
    extra = {} if groups is None else {"groups": groups}
    atomic_save_npz(out_dir / "predictions.npz", **arrays, **{f"{k}_scores": v for k, v in scores.items()}, **extra)
    return {
        "metrics": metrics,
        "test_split": test_split_record(ids, labels),
    }


def _vs_tflite(onnx_out, tflite_out, onnx_q, tflite_q, labels, ids, class_names):
    """The int8 ONNX against the int8 TFLite on the same inputs (release.metrics.compare): top-1
    agreement, the fraction of bit-exact outputs, and the largest difference after dequantization
    (each with its own scale)."""
    same = compare(onnx_out, tflite_out, labels, ids, class_names)
    deq = preprocess.dequantize(onnx_out, onnx_q) - preprocess.dequantize(tflite_out, tflite_q)
    return {
        "top1_agreement_with_int8_tflite": same["top1_agreement"],
        "bitexact_fraction_vs_int8_tflite": same["bitexact_fraction"],
        "max_dequantized_diff_vs_int8_tflite": round(float(abs(deq).max()), 6),
    }
