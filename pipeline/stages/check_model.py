"""check-model (not part of a build): the checks `edgebuild check-model` runs on the configured model
in a JAX process, as the train stage would build it. Returns the lines to print and, when the model
has a problem the build would refuse, the error."""

from pipeline.data import preprocess
from pipeline.data.sampling import stratified_subset
from pipeline.data.sources import load_source
from pipeline.engine.config import post_training
from pipeline.engine.stage import Stage
from pipeline.model import usermodel

STAGE = Stage(
    "check-model", __name__, config=("build.seed", "data", "preprocess", "task", "train", "qat.enabled", "qat.epochs"),
    backend="jax",
    toolchain=usermodel.JAX_TOOLCHAIN,
)


def run(cfg, inputs, out_dir, ctx):
    from pipeline.model import preflight

    images, labels, _, class_names, _, _ = load_source(cfg.data.source, cfg.data, form=cfg.preprocess.form,
                                                       task=cfg.task.kind)
    outputs = images.shape[1:] if cfg.task.kind == "anomaly" else len(class_names)
    model, softmax_removed = usermodel.build_model(cfg.train, images.shape[1:], outputs)
    lines = []
    if softmax_removed:
        lines.append(f"✓ final softmax removed ({softmax_removed}): artifacts will output logits")
    problems = preflight.check_model(model)
    lines += [f"✗ {p}" for p in problems]
    if problems:
        return {"lines": lines, "error": f"{len(problems)} serialization problem(s) in {cfg.train.recipe}; fix them "
                                         "before export."}
    lines.append(f"✓ {cfg.train.recipe}: {len(model.layers)} layers round-trip through get_config/from_config")
    if not post_training(cfg.qat):
        from pipeline.model import qat

        missing = qat.unsupported_layers(model)
        if missing:
            lines += [f"✗ {m}" for m in missing]
            return {"lines": lines, "error": f"{len(missing)} layer(s) have no int8 QAT rule; replace them, or set "
                                             "qat.enabled = false (post-training quantization: no QAT rewrite)."}
        lines.append("✓ every layer has an int8 QAT rule")
    if usermodel.kind(cfg.train.recipe) == "keras_file" and not preprocess.is_tensor(images, cfg.preprocess):
        sample = stratified_subset(labels, 1000, cfg.build.seed)
        scores = usermodel.check_input_convention(model, images[sample], labels[sample], cfg.preprocess,
                                                  images.shape[-1], cfg.train.recipe)
        shown = ", ".join(f"{k} {100 * v:.1f}%" for k, v in scores.items() if k != "chance")
        lines.append(f"✓ input convention: {shown} (chance {100 * scores['chance']:.1f}%, {len(sample)} samples)")
    return {"lines": lines, "error": None}
