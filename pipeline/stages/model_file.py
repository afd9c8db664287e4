"""model stage (validation of a model file built elsewhere): read the user's .tflite, describe it
(ops, input and output tensors with their quantization) and copy it into the build directory as
`model.tflite`, so every later stage and the manifest refer to the bytes that were validated."""

import shutil
from pathlib import Path

from pipeline.device import tflite_info
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import sha256_file
from pipeline.engine.stage import Stage

SUFFIXES = (".tflite",)


def model_path(model):
    """The model file `model` (validate.model), checked to be a .tflite file."""
    path = Path(model)
    if path.suffix.lower() not in SUFFIXES:
        onnx = " ONNX models are not validated yet." if path.suffix.lower() == ".onnx" else ""
        raise InputError(f"edgebuild validate takes a .tflite model file; received {path}.{onnx} Convert the model "
                         "to .tflite (or pass the .tflite your converter wrote).")
    if not path.is_file():
        raise InputError(f"the model file {path} does not exist or is not a file. Pass the path of your .tflite.")
    return path


STAGE = Stage(
    "model", __name__, config=("validate.model",), outputs=("model.tflite",), toolchain=("ai-edge-litert",),
    external=lambda config: {"model": sha256_file(model_path(config.validate.model))},
)


def run(cfg, inputs, out_dir, ctx):
    source = Path(cfg.validate.model)
    info = tflite_info.describe(source)  # a file that is no TFLite flatbuffer is refused here, in one line
    if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
        raise InputError(f"edgebuild validates image classifiers with one input and one output tensor; {source} has "
                         f"{len(info['inputs'])} inputs and {len(info['outputs'])} outputs.")
    shutil.copyfile(source, out_dir / "model.tflite")
    return {"source": str(source), "info": info}
