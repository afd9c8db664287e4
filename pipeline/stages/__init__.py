"""The stages of a build, in order. Each module declares its own contract (`pipeline.engine.stage`);
adding a stage is adding a module here and its name to ORDER (and its --only name to GROUPS)."""

import importlib

ORDER = ("data", "calibration", "train", "qat", "export", "evaluate", "target")


def plan(config):
    """Every stage of a full build, in order."""
    stages = []
    for name in ORDER:
        module = importlib.import_module(f"{__name__}.{name}")
        stages += module.stages(config) if hasattr(module, "stages") else [module.STAGE]
    return stages


GROUPS = ("data", "calibration", "train", "qat", "export", "evaluate", "targets")  # --only / --until names, in order (a test checks plan)
