"""evaluate stage (host): accuracy of float Keras, int8 TFLite, float TFLite and ONNX on the test
split, per class, and top-1 agreement between them. Writes every model's test predictions to
`predictions.npz` so targets and the gate compare by sample id."""

import hashlib

from pipeline.data import preprocess
from pipeline.data.splits import load_dataset
from pipeline.device import tflite_info
from pipeline.device.runtimes import run_onnx, run_tflite
from pipeline.engine.fsutil import atomic_save_npz
from pipeline.engine.stage import Stage
from pipeline.model import usermodel
from pipeline.release.metrics import accuracy_record

STAGE = Stage(
    "evaluate", __name__, config=("preprocess", "train.recipe"),
    inputs=("dataset.npz", "float.keras", "model_int8.tflite", "model_float.tflite", "model.onnx"),
    outputs=("predictions.npz",), backend="jax",
    toolchain=(*usermodel.JAX_TOOLCHAIN, "ai-edge-litert", "onnxruntime"),
    external=lambda config: usermodel.model_files(config.train, False),
)


def run(stage_cfg, inputs, out_dir, ctx):
    import keras

    usermodel.register_user_layers(stage_cfg.train.recipe)

    pp, progress = stage_cfg.preprocess, ctx.progress
    dataset_path, float_keras, onnx_path = inputs["dataset.npz"], inputs["float.keras"], inputs["model.onnx"]
    int8_tflite, float_tflite = inputs["model_int8.tflite"], inputs["model_float.tflite"]

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
    int8_out = run_tflite(int8_tflite, preprocess.to_input(images, pp, qin))
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
    atomic_save_npz(
        out_dir / "predictions.npz",
        ids=ids, labels=labels, float_top1=top1["float"], onnx_top1=top1["onnx"],
        host_output=int8_out, int8_top1=top1["int8_host"],
    )
    id_list = [str(s) for s in ids]
    return {
        "metrics": metrics,
        "test_split": {"ids": id_list, "sha256": hashlib.sha256("\n".join(id_list).encode()).hexdigest(),
                       "labels": [int(v) for v in labels]},
    }
