"""export stage (TensorFlow process): QAT `.keras` -> full-integer int8 `.tflite`; float `.keras` ->
float32 `.tflite` and ONNX, all through Keras's export API.

The QAT model's FakeQuant ops carry the trained ranges; the calibration set is given as the
representative dataset for any tensor without one. The int8 artifact is checked: int8 input and
output, builtin ops only, no float op unless `export.allowed_float_ops` names it.
"""

import json
import os

from .. import qat  # noqa: F401  (registers the QAT layers so load_model finds them)
from .. import preprocess, tflite_info
from ..errors import InputError
from .data import calibration_indices, load_dataset


def _tmp(path):
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def _convert_error(exc):
    text = str(exc)
    ops = sorted({w.strip("'\",.:") for w in text.replace("\n", " ").split() if w.startswith(("tf.", "'tf."))})
    detail = f" ops: {', '.join(ops)}" if ops else ""
    first = next((ln.strip() for ln in text.splitlines() if "error" in ln.lower()), text.splitlines()[0] if text else "")
    return (
        f"int8 conversion needs every op to be a TFLite builtin int8 op; the converter refused "
        f"this model{detail} ({first[:300]}). Replace those layers or ops."
    )


def export_int8(model, calibration, path):
    import tensorflow as tf

    def representative():
        for i in range(len(calibration)):
            yield [calibration[i : i + 1]]

    tmp = _tmp(path)
    try:
        model.export(
            str(tmp), format="litert", verbose=False,
            optimizations=[tf.lite.Optimize.DEFAULT],
            representative_dataset=representative,
            inference_input_type=tf.int8, inference_output_type=tf.int8,
            target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        )
    except Exception as exc:
        if tmp.exists():
            tmp.unlink()
        if "ConverterError" in type(exc).__name__ or "convert" in str(exc).lower():
            raise InputError(_convert_error(exc)) from None
        raise
    os.replace(tmp, path)


def export_float(model, path):
    import tensorflow as tf

    tmp = _tmp(path)
    model.export(str(tmp), format="litert", verbose=False,
                 target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]})
    os.replace(tmp, path)


def export_onnx(model, path, opset):
    tmp = _tmp(path)
    model.export(str(tmp), format="onnx", verbose=False, opset_version=opset)
    os.replace(tmp, path)


def check_full_integer(info, allowed_float_ops):
    problems = []
    for side in ("inputs", "outputs"):
        for t in info[side]:
            if t["dtype"] != "int8":
                problems.append(f"{side[:-1]} '{t['name']}' is {t['dtype']}, not int8")
    if info["flex_ops"] or info["custom_ops"]:
        problems.append(f"non-builtin ops {', '.join(info['custom_ops'])}")
    floats = [op for op in info["float_ops"] if op not in allowed_float_ops]
    if floats:
        problems.append(f"float ops {', '.join(floats)}")
    return problems


def run(cfg, pp, float_path, qat_path, dataset_path, calibration_path, out_dir, progress):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    data = load_dataset(dataset_path)
    calib = json.loads(open(calibration_path).read())
    calibration = preprocess.to_float(data["x"][calibration_indices(data, calib)], pp)
    bar = progress.bar(3, "export", unit="artifact")
    qat_model = keras.models.load_model(qat_path)
    export_int8(qat_model, calibration, out_dir / "model_int8.tflite")
    bar.update(1)
    float_model = keras.models.load_model(float_path)
    float_model(calibration[:1])  # the ONNX exporter needs a model that has been called
    export_float(float_model, out_dir / "model_float.tflite")
    bar.update(1)
    export_onnx(float_model, out_dir / "model.onnx", cfg.onnx_opset)
    bar.update(1)
    bar.close()

    info = tflite_info.describe(out_dir / "model_int8.tflite")
    problems = check_full_integer(info, cfg.allowed_float_ops)
    if problems:
        (out_dir / "model_int8.tflite").unlink()
        raise InputError(
            "the int8 model must be full-integer for the target; it has "
            + "; ".join(problems)
            + ". Replace the layers that produce them, or list ops in export.allowed_float_ops."
        )
    qin = info["inputs"][0]
    record = {
        "int8": info,
        # the pixel -> input step this artifact was calibrated and will be validated with
        "preprocess": preprocess.describe(pp, data["x"].shape[-1], qin["scale"], qin["zero_point"]),
        "allowed_float_ops": list(cfg.allowed_float_ops),
        "float_ops_kept": [op for op in info["float_ops"] if op in cfg.allowed_float_ops],
    }
    return record


def run_stage(config, inputs, out_dir, progress):
    return run(
        config.export, config.preprocess, inputs["float.keras"], inputs["qat.keras"], inputs["dataset.npz"],
        inputs["calibration.json"], out_dir, progress,
    )
