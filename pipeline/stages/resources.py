"""resources stage: what the int8 model asks of a device. From the model file itself: parameters,
weight bytes, model bytes (what flash holds; the runtime's own code is not included) and MACs per
layer; from the real runtime: the tensor arena TensorFlow Lite Micro's recording allocator measures
(the peak activation memory a microcontroller must give it). The ONNX artifact gets parameters, MACs
and model bytes. Budgets per target are checked by the gate (`targets/<name>.toml` [budget])."""

import shutil
import tempfile

from pipeline.device import resources, tflm
from pipeline.engine.stage import Stage


def stages(config):
    if config.validate.model:
        from pipeline.stages.model_file import copied_name

        models = {"model": copied_name(config.validate.model)}
    else:
        models = {"int8_tflite": "model_int8.tflite"}
        if "onnx" in config.export.formats:
            models["int8_onnx"] = "model_int8.onnx"
    # (the int8 ONNX is absent when export's conversion failed; the gate's "ONNX export" check says why)
    return [Stage("resources", __name__, config=(), inputs=tuple(models.values()),
                  optional_inputs=("model_int8.onnx",), toolchain=("ai-edge-litert", "onnx", "tflite-micro", "numpy"),
                  params={"models": models})]


def manifest(record, config):
    """The manifest's "resources" section: what each model asks of a device, by artifact."""
    return {k: v for k, v in record.items() if isinstance(v, dict) and "model_bytes" in v}


def run(cfg, inputs, out_dir, ctx):
    record = {}
    for key, name in ctx.params["models"].items():
        if name not in inputs:
            continue
        path = inputs[name]
        report = resources.resources(path)
        if path.suffix == ".tflite":
            work = tempfile.mkdtemp(dir=out_dir, prefix="arena-")
            try:
                report.update(tflm.measure_arena(path, work))
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if report.get("refused"):
                ctx.progress.warn(f"TFLM cannot run {name}, so its arena is not measured: {report['refused']}")
        record[key] = {"file": name, **report}
    return record
