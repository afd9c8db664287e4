"""The op lint: a model a target's runtime cannot run is refused by its format and op names, before
anything runs."""

from pipeline.device import targets
from pipeline.engine.errors import ModelRefused


def lint(target, model_info):
    """Refuse a model in a format the target's runtime does not run, and, by op name, one whose ops
    it cannot run."""
    fmt = model_info.get("format", "tflite")
    if fmt != targets.model_format(target):
        raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                           f"it runs .{targets.model_format(target)} models; this one is .{fmt}.",
                           f"Validate the .{targets.model_format(target)} artifact on it, or choose a target with a "
                           f"{fmt} runtime.")
    if fmt == "onnx":
        if model_info["custom_ops"]:
            raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                               f"it runs standard ONNX ops only; the model needs {', '.join(model_info['custom_ops'])}.",
                               "Re-export without custom-domain ops.")
        return
    bad = model_info["flex_ops"] + [op for op in model_info["custom_ops"] if op not in model_info["flex_ops"]]
    if bad:
        raise ModelRefused(f"target {target.name} ({target.runtime} {target.runtime_version})",
                           f"it runs builtin ops only; the model needs {', '.join(sorted(set(bad)))}.",
                           "Re-export without Flex/select-TF or custom ops.")

