"""export stage (TensorFlow process): QAT `.keras` (or, in post-training quantization, the float `.keras`)
-> full-integer int8 `.tflite`; float `.keras` ->
float32 `.tflite` and ONNX, all through Keras's export API; the int8 `.tflite` -> int8 ONNX in QDQ form
(tf2onnx), with the same scales and zero points.

The QAT model's FakeQuant ops carry the trained ranges; the calibration set is given as the
representative dataset for any tensor without one (for every tensor in post-training quantization). The int8 artifact is checked: int8 input and
output, builtin ops only, no float op unless `export.allowed_float_ops` names it.
"""

import dataclasses
import json

from pipeline.data import preprocess
from pipeline.data.calibration import calibration_indices
from pipeline.data.splits import load_dataset
from pipeline.device import tflite_info
from pipeline.engine.errors import InputError
from pipeline.engine.stage import Stage
from pipeline.model import usermodel

STAGE = Stage(
    "export", __name__, config=("export", "preprocess", "train.recipe"),
    inputs=("float.keras", "qat.keras", "dataset.npz", "calibration.json"),
    outputs=("model_int8.tflite", "model_float.tflite", "model.onnx", "model_int8.onnx"), backend="tensorflow",
    toolchain=("keras", "tensorflow", "tensorflow-cpu", "tf2onnx", "onnx", "onnxruntime", "protobuf", "numpy",
               "ai-edge-litert", "scipy", "pillow"),
    external=lambda config: usermodel.model_files(config.train, False),
)


ONNX_OUTPUTS = ("model.onnx", "model_int8.onnx")


def stages(config):
    """The export stage; in post-training quantization (no QAT stage) it reads no qat.keras. Without
    "onnx" in export.formats it makes no ONNX; with it, the ONNX files are optional outputs: a model
    tf2onnx or onnxruntime cannot take keeps its TFLite results and fails the gate's ONNX check."""
    inputs = tuple(i for i in STAGE.inputs if i != "qat.keras") if config.qat.post_training else STAGE.inputs
    if config.export.activations == "int16":
        wrong = ([] if config.qat.post_training else ["qat.enabled = false (16x8 is post-training: QAT trains int8 "
                                                      "ranges)"]) + \
                (["export.formats = [\"tflite\"] (tf2onnx has no 16x8 form)"] if "onnx" in config.export.formats else [])
        if wrong:
            raise InputError(f"export.activations = \"int16\" converts the float model in LiteRT's 16x8 mode; received "
                             f"qat.enabled = {str(config.qat.enabled).lower()}, export.formats = "
                             f"{json.dumps(config.export.formats)}. Set {' and '.join(wrong)}.")
    if "onnx" not in config.export.formats:
        return [dataclasses.replace(STAGE, inputs=inputs, outputs=tuple(o for o in STAGE.outputs if o not in ONNX_OUTPUTS))]
    return [dataclasses.replace(STAGE, inputs=inputs, optional=ONNX_OUTPUTS)]


def manifest(record, config):
    """The manifest's "export" section: the formats asked for and made, and why ONNX was not (one line)."""
    return {"formats": record.get("formats", ["tflite", "onnx"]), "made": record.get("made", ["tflite", "onnx"]),
            **({"onnx_error": record["onnx_error"]} if record.get("onnx_error") else {})}


def gate(section, config, baseline=None):
    """The "ONNX export" check: failed when ONNX was asked for and tf2onnx or onnxruntime refused it."""
    from pipeline.engine.stage import check

    if "onnx" not in section["formats"]:
        return []
    error = section.get("onnx_error")
    return [check("ONNX export", "refused" if error else "made", "converts and loads in onnxruntime", not error,
                  detail=error or "the float and int8 ONNX")]


def publish(records, config, build_dir):
    """The manifest's four exported models (int8 ones with their input and output quantization), the
    pixel -> input contract they were calibrated with, and their sizes."""
    from pipeline.release.manifest import artifact, from_pixel, tensor

    record = records["export"]
    int8, int8_onnx, contract = record["int8"], record.get("int8_onnx"), record["preprocess"]
    artifacts = {
        "int8_tflite": artifact(build_dir, "model_int8.tflite", input={**tensor(int8["inputs"][0]), **from_pixel(contract)},
                                output=tensor(int8["outputs"][0]), ops=int8["ops"], float_ops=record["float_ops_kept"],
                                quantization=record.get("quantization", "qat"),
                                activations=record.get("activations", "int8")),
        "float_tflite": artifact(build_dir, "model_float.tflite"),
    }
    int8_bytes, float_bytes = artifacts["int8_tflite"]["bytes"], artifacts["float_tflite"]["bytes"]
    size = {"int8_bytes": int8_bytes, "float_bytes": float_bytes, "int8_over_float": round(int8_bytes / float_bytes, 4)}
    if int8_onnx:  # ONNX asked for and made
        artifacts["onnx"] = artifact(build_dir, "model.onnx")
        artifacts["int8_onnx"] = artifact(build_dir, "model_int8.onnx", format="onnx", opset=int8_onnx["opset"],
                                          converted_from="int8_tflite",
                                          input={**tensor(int8_onnx["inputs"][0]), **from_pixel(contract)},
                                          output=tensor(int8_onnx["outputs"][0]), ops=int8_onnx["ops"],
                                          float_ops=int8_onnx["float_ops"])
        int8_onnx_bytes, float_onnx_bytes = artifacts["int8_onnx"]["bytes"], artifacts["onnx"]["bytes"]
        size |= {"int8_onnx_bytes": int8_onnx_bytes, "float_onnx_bytes": float_onnx_bytes,
                 "int8_onnx_over_float_onnx": round(int8_onnx_bytes / float_onnx_bytes, 4)}
    return {"preprocessing": contract["int8_formula"], "preprocess": contract, "artifacts": artifacts,
            "metrics": {"size": size}}


def run(stage_cfg, inputs, out_dir, ctx):
    import keras

    import pipeline.model.qat  # noqa: F401 (registers the QAT layers so load_model finds them)
    from pipeline.model.convert import (
        ACTIVATIONS, check_full_integer, check_onnx_loads, export_float, export_int8, export_int8_onnx, export_onnx, has_shape_op)

    usermodel.register_user_layers(stage_cfg.train.recipe)

    cfg, pp, progress = stage_cfg.export, stage_cfg.preprocess, ctx.progress
    float_path, qat_path = inputs["float.keras"], inputs.get("qat.keras")
    dataset_path, calibration_path = inputs["dataset.npz"], inputs["calibration.json"]

    data = load_dataset(dataset_path)
    calib = json.loads(open(calibration_path).read())
    calibration = preprocess.to_float(data["x"][calibration_indices(data, calib)], pp)
    onnx = "onnx" in cfg.formats
    bar = progress.bar(4 if onnx else 2, "export", unit="artifact")
    float_model = keras.models.load_model(float_path)
    float_model(calibration[:1])  # the ONNX exporter needs a model that has been called
    # A float graph that computes shapes at run time (SHAPE) makes the int8 one do so too: convert it at a
    # batch of 1 at once instead of converting twice (EfficientNetV2B0: 40 s less; the same bytes, and
    # the float model first leaves both files' bytes as they were, measured on small_cnn, EfficientNetV2B0
    # and a ViT). The QAT model carries its trained ranges; in post-training quantization the float model
    # is calibrated.
    try:
        export_float(float_model, out_dir / "model_float.tflite")
        batch, float_refused = (1 if has_shape_op(tflite_info.describe(out_dir / "model_float.tflite")) else None), None
    except InputError as exc:  # the int8 conversion's refusal, which names the same ops, is the one to report
        batch, float_refused = None, exc
    bar.update(1)
    export_int8(keras.models.load_model(qat_path) if qat_path else float_model, calibration,
                out_dir / "model_int8.tflite", batch=batch, activations=cfg.activations)
    if float_refused:
        raise float_refused
    bar.update(1)

    info = tflite_info.describe(out_dir / "model_int8.tflite")
    problems = check_full_integer(info, cfg.allowed_float_ops, dtype=ACTIVATIONS[cfg.activations][1])
    if problems:
        (out_dir / "model_int8.tflite").unlink()
        raise InputError(
            "the int8 model must be full-integer for the target; it has "
            + "; ".join(problems)
            + ". Replace the layers that produce them, or list ops in export.allowed_float_ops."
        )
    onnx_info, onnx_error = None, None
    if onnx:
        try:
            export_onnx(float_model, out_dir / "model.onnx", cfg.onnx_opset)
            check_onnx_loads(out_dir / "model.onnx")
            bar.update(1)
            onnx_info = export_int8_onnx(out_dir / "model_int8.tflite", out_dir / "model_int8.onnx", cfg.onnx_opset, info)
            bar.update(1)
        except InputError as exc:  # the TFLite results stand; the gate's ONNX check fails with this line
            onnx_error = str(exc).replace("; nothing was published", "")
            for name in ONNX_OUTPUTS:
                (out_dir / name).unlink(missing_ok=True)
            progress.warn(f"no ONNX: {onnx_error}")
    bar.close()
    qin = info["inputs"][0]
    record = {
        "int8": info,
        "int8_onnx": onnx_info,
        "formats": list(cfg.formats),
        "made": ["tflite"] + (["onnx"] if onnx_info else []),
        "onnx_error": onnx_error,
        "quantization": "qat" if qat_path else "post-training",
        "activations": cfg.activations,
        # the pixel -> input step this artifact was calibrated and will be validated with
        "preprocess": preprocess.describe(pp, data["x"].shape[-1], qin["scale"], qin["zero_point"], qin["dtype"],
                                          tensor=preprocess.is_tensor(data["x"], pp)),
        "allowed_float_ops": list(cfg.allowed_float_ops),
        "float_ops_kept": [op for op in info["float_ops"] if op in cfg.allowed_float_ops],
    }
    return record
