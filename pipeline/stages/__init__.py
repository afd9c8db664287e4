"""The stage registry: what each stage reads, writes, which config it depends on, and which Keras
backend its process runs. Adding a stage is adding an entry here and a module with `run_stage`."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    backend: str | None  # KERAS_BACKEND of the stage's process; None: no Keras
    version: str  # bump when the stage's behaviour changes: it is part of the cache key
    config: tuple  # "section" or "section.key" entries the stage reads
    inputs: tuple  # artifacts produced by earlier stages
    outputs: tuple  # artifacts this stage writes
    params: dict = field(default_factory=dict)  # per-instance parameters (a target's name)


CORE = (
    Stage("data", "pipeline.stages.data", None, "2", ("build.seed", "data"), (), ("dataset.npz", "calibration.json")),
    Stage("train", "pipeline.stages.train", "jax", "5", ("build.seed", "train", "preprocess"), ("dataset.npz",),
          ("float.keras",)),
    Stage("qat", "pipeline.stages.qat", "jax", "4", ("build.seed", "qat", "preprocess"), ("float.keras", "dataset.npz"),
          ("qat.keras",)),
    Stage(
        "export", "pipeline.stages.export", "tensorflow", "2", ("export", "preprocess"),
        ("float.keras", "qat.keras", "dataset.npz", "calibration.json"),
        ("model_int8.tflite", "model_float.tflite", "model.onnx"),
    ),
    Stage(
        "evaluate", "pipeline.stages.evaluate", "jax", "2", ("preprocess",),
        ("dataset.npz", "float.keras", "model_int8.tflite", "model_float.tflite", "model.onnx"),
        ("predictions.npz",),
    ),
)


def target_stage(name):
    return Stage(
        f"target:{name}", "pipeline.stages.target", None, "3", ("validate.sample", "preprocess"),
        ("model_int8.tflite", "dataset.npz", "predictions.npz"), (f"target-{name}.npz",),
        params={"target": name},
    )


def plan(config):
    """Every stage of a full build, in order."""
    return list(CORE) + [target_stage(t) for t in config.validate.targets]


STAGE_NAMES = [s.name for s in CORE] + ["targets", "manifest", "gate"]
