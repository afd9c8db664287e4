"""qat stage: fold BatchNorm, insert fake-quant, fine-tune on JAX, keep the best epoch, save the QAT
`.keras`; a QAT that loses more than `qat.max_val_drop` of the float model's val accuracy is refused."""

import time

from pipeline.data import preprocess
from pipeline.data.splits import load_dataset, split_arrays
from pipeline.engine.errors import InputError
from pipeline.engine.fsutil import atomic_save_model
from pipeline.engine.stage import Stage
from pipeline.model import usermodel
from pipeline.release import tasks

STAGE = Stage(
    "qat", __name__, config=("build.seed", "qat", "preprocess", "train.recipe", "task.kind"),
    inputs=("float.keras", "dataset.npz"),
    outputs=("qat.keras",), backend="jax", toolchain=usermodel.JAX_TOOLCHAIN,
    external=lambda config: usermodel.model_files(config.train, False),
)


def stages(config):
    """The QAT stage, or none in post-training quantization (qat.enabled = false or qat.epochs = 0)."""
    return [] if config.qat.post_training else [STAGE]


def manifest(record, config):
    """The manifest's "qat" section: the learned ranges and the epoch kept."""
    keys = ("ranges", "input_range", "learning_rate", "epochs", "gelu", "distill", "float_val_accuracy", "history", "initial",
            "kept_epoch", "kept_by", "kept_val_accuracy")
    section = {k: record.get(k) for k in keys}
    return section | ({"kept_val_loss": record["kept_val_loss"]} if "kept_val_loss" in record else {})


def publish(records, config, build_dir):
    from pipeline.release.manifest import artifact

    return {"artifacts": {"keras": artifact(build_dir, "qat.keras")}} if records else {}


def run(stage_cfg, inputs, out_dir, ctx):
    import keras

    from pipeline.model import fitting, qat

    usermodel.register_user_layers(stage_cfg.train.recipe)

    cfg, pp, seed, progress = stage_cfg.qat, stage_cfg.preprocess, stage_cfg.build.seed, ctx.progress
    float_path, dataset_path = inputs["float.keras"], inputs["dataset.npz"]

    fitting.set_seed(seed + 2)
    data = load_dataset(dataset_path)
    x_train, y_train = split_arrays(data, "train", pp)
    x_val, y_val = split_arrays(data, "val", pp)
    features = x_train if preprocess.is_tensor(data["x"], pp) else None  # features: their own range
    input_range = preprocess.float_range(pp, x_train.shape[-1], features)
    task = tasks.get(stage_cfg.task.kind)
    if task:  # the task's own fitting data (an autoencoder: the normal windows, reconstructed)
        (x_train, y_train), (x_val, y_val) = task.fit_arrays(x_train, y_train), task.fit_arrays(x_val, y_val)
    float_model = keras.models.load_model(float_path)
    float_val = None
    if len(x_val) and not task:  # the val-accuracy collapse check is classification's (anomaly: the gate's AUC)
        logits = float_model.predict(x_val, batch_size=256, verbose=0)
        float_val = round(float((logits.argmax(-1) == y_val).mean()), 5)
    gelu = cfg.gelu
    try:
        model = qat.quantize_model(float_model, input_range=input_range, momentum=cfg.ema_momentum, gelu=gelu)
    except qat.UnsupportedLayerError as exc:
        raise InputError(f"QAT cannot quantize this model: {exc}") from None
    if any(isinstance(layer, qat.SigmoidGelu) for layer in model.layers):
        print("qat: GELU as x * sigmoid(1.702 x) (MUL, LOGISTIC), which TFLM and Vela run too (qat.gelu = 'sigmoid'; "
              "'native' keeps LiteRT's GELU op)")
    # Ranges start from real data: one pass over the first training samples in training mode.
    qat.init_ranges(model, x_train[: cfg.init_samples])
    transformer = qat.has_transformer_layers(float_model)
    learning_rate = cfg.transformer_learning_rate if transformer else cfg.learning_rate
    epochs = cfg.transformer_epochs if transformer and cfg.transformer_epochs else cfg.epochs
    if transformer:
        print(f"qat: transformer layers, so qat.transformer_learning_rate = {learning_rate:g} "
              f"(not qat.learning_rate = {cfg.learning_rate:g}) and {epochs} epochs (qat.transformer_epochs; "
              f"qat.epochs = {cfg.epochs})")
    distill = None
    if cfg.distill and not task:  # the float model teaches: its logits, once, on the training and val samples
        distill = (cfg.distill, cfg.distill_temperature, float_model.predict(x_train, batch_size=256, verbose=0),
                   float_model.predict(x_val, batch_size=256, verbose=0) if len(x_val) else None)
        print(f"qat: distilling from the float model (weight {cfg.distill:g}, temperature {cfg.distill_temperature:g})")
    started = time.perf_counter()
    fitted = fitting.fit(model, (x_train, y_train), (x_val, y_val), epochs, cfg.batch_size, learning_rate,
                         progress, "qat", keep_best=True, reconstruct=task is not None, distill=distill)
    seconds = time.perf_counter() - started
    best = fitted.get("kept_val_accuracy")
    if float_val is not None and best is not None and float_val - best > cfg.max_val_drop:
        before = (fitted["initial"] or {}).get("val_accuracy")
        key = "qat.transformer_learning_rate" if transformer else "qat.learning_rate"
        # fine-tuning that made it worse went too far; one that never recovered int8's loss did too little
        fix = (f"Raise {key} (now {learning_rate:g}), for example to {learning_rate * 10:g}, or "
               + ("qat.transformer_epochs" if transformer and cfg.transformer_epochs else "qat.epochs")
               if before is not None and float_val - before > cfg.max_val_drop
               else f"Lower {key} (now {learning_rate:g}), for example to {learning_rate / 10:g}")
        raise InputError(
            f"QAT lost the model's accuracy: its best val accuracy is {100 * best:.1f}% (epoch "
            f"{fitted['kept_epoch']} of {epochs}), {100 * (float_val - best):.1f} pp below the float model's "
            f"{100 * float_val:.1f}% (qat.max_val_drop = {cfg.max_val_drop})"
            + (f"; before fine-tuning, the fake-quantized model scored {100 * before:.1f}%" if before is not None else "")
            + f". {fix}; nothing was published."
        )
    atomic_save_model(model, out_dir / "qat.keras")
    return {
        "seconds": round(seconds, 2),
        "ranges": qat.activation_ranges(model),
        "input_range": list(input_range),
        "learning_rate": learning_rate,
        "epochs": epochs,
        "gelu": gelu,
        "distill": {"weight": cfg.distill, "temperature": cfg.distill_temperature} if distill else None,
        "float_val_accuracy": float_val,
        **fitted,
    }
