"""model stage (validation of a model file built elsewhere): read the user's .tflite or .onnx, describe
it (ops, input and output tensors with their quantization) and copy it into the build directory as
`model.tflite` or `model.onnx`, so every later stage and the manifest refer to the bytes that were
validated."""

import shutil
from pathlib import Path

from pipeline.device import onnx_info
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import sha256_file
from pipeline.engine.stage import Stage

SUFFIXES = (".tflite", ".onnx")


def copied_name(model):
    """The name the model file is copied under in the build directory."""
    return "model.onnx" if Path(model).suffix.lower() == ".onnx" else "model.tflite"


def model_path(model):
    """The model file `model` (validate.model), checked to be a .tflite or .onnx file."""
    path = Path(model)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"edgebuild validate takes a .tflite or .onnx model file; received {path}. Convert the model "
                         "to one of them (or pass the file your converter wrote).")
    if not path.is_file():
        raise InputError(f"the model file {path} does not exist or is not a file. Pass the path of your "
                         f"{path.suffix.lower()}.")
    return path


def stages(config):
    name = copied_name(config.validate.model)
    return [Stage(
        "model", __name__, config=("validate.model",), outputs=(name,),
        toolchain=("ai-edge-litert", "onnx") if name.endswith(".tflite") else ("onnx",),
        external=_external, params={"copy": name},
    )]


def publish(records, config, build_dir):
    """The manifest's `artifacts.model`: the validated file (as copied), its source, tensors and ops."""
    from pipeline.release.manifest import artifact, tensor

    record = records["model"]
    info = record["info"]
    fmt = info.get("format", "tflite")
    return {"artifacts": {"model": artifact(build_dir, f"model.{fmt}", format=fmt, source=record["source"],
                                            input=tensor(info["inputs"][0]), output=tensor(info["outputs"][0]),
                                            ops=info["ops"], float_ops=info["float_ops"])}}


def _external(config):
    """What the stage reads from outside: the model file, and the external data files an .onnx names."""
    path = model_path(config.validate.model)
    data = onnx_info.external_data(path) if onnx_info.is_onnx(path) else {}
    return {"model": sha256_file(path), **({"external_data": {k: sha256_file(v) for k, v in sorted(data.items())}}
                                           if data else {})}


def run(cfg, inputs, out_dir, ctx):
    source = Path(cfg.validate.model)
    info = onnx_info.describe(source)  # a file that is no TFLite flatbuffer or ONNX model is refused here, in one line
    if len(info["inputs"]) != 1 or len(info["outputs"]) != 1:
        raise InputError(f"edgebuild validates models with one input and one output tensor; {source} has "
                         f"{len(info['inputs'])} inputs and {len(info['outputs'])} outputs. Export the path to validate "
                         "as a model of its own.")
    data = onnx_info.external_data(source) if onnx_info.is_onnx(source) else {}
    if data:
        _embed_external_data(source, out_dir / ctx.params["copy"])
    else:
        shutil.copyfile(source, out_dir / ctx.params["copy"])
    return {"source": str(source), "info": info,
            **({"external_data": {k: sha256_file(v) for k, v in sorted(data.items())},
                "embedded": "the external data is embedded in the copy, so the build's model.onnx is one file"}
               if data else {})}


def _embed_external_data(source, dest):
    """Save the .onnx with its external data read in, as one file (ONNX's protobuf holds up to 2 GB)."""
    import onnx

    model = onnx.load(str(source))  # reads the external data files beside it
    try:
        onnx.save(model, str(dest))
    except ValueError as exc:
        raise InputError(f"edgebuild validates an .onnx with external data by embedding it, which ONNX allows up to "
                         f"2 GB; {source} with its data is larger ({exc}). Validate a smaller model.") from None
