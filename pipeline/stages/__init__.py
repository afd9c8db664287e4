"""The stages of a build, in order. Each module declares its own contract (`pipeline.engine.stage`);
adding a stage is adding a module here and its name to ORDER (and its --only name to GROUPS).

A build with `validate.model` set validates that model file instead (VALIDATION_ORDER): no training,
the file's own tensors, the same target stages."""

import importlib

ORDER = ("data", "calibration", "train", "qat", "export", "resources", "evaluate", "target")
VALIDATION_ORDER = ("model_file", "resources", "testset", "host", "target")


def plan(config):
    """Every stage of a full build (or of the validation of a model file), in order."""
    stages = []
    for name in VALIDATION_ORDER if config.validate.model else ORDER:
        module = importlib.import_module(f"{__name__}.{name}")
        stages += module.stages(config) if hasattr(module, "stages") else [module.STAGE]
    return stages


GROUPS = ("data", "calibration", "train", "qat", "export", "resources", "evaluate", "targets")  # --only / --until names, in order (a test checks plan)
