"""train stage: fit the float model with Keras 3 on the JAX backend (run in a JAX process)."""

import math
import time

from .. import preflight, progress as progress_mod, transfer, usermodel
from ..errors import InputError
from ..fsutil import atomic_save_model
from .data import load_dataset


def split_arrays(dataset, name):
    idx = dataset[name]
    return dataset["x"][idx].astype("float32") / 255.0, dataset["y"][idx]


def _distribution(cfg):
    """Data-parallel training over every local JAX device (keras.distribution), when asked."""
    import jax
    import keras

    devices = jax.devices()
    if cfg.data_parallel:
        if cfg.batch_size % len(devices):
            raise InputError(f"train.data_parallel splits each batch over {len(devices)} devices, so train.batch_size "
                             f"must be a multiple of {len(devices)}; received {cfg.batch_size}.")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        print(f"data-parallel training over {len(devices)} devices: {[str(d) for d in devices]}")
        return {"count": len(devices), "platform": devices[0].platform, "data_parallel": True,
                "processes": jax.process_count()}
    return {"count": 1, "platform": devices[0].platform, "data_parallel": False, "processes": jax.process_count()}


def run(cfg, seed, dataset_path, out_dir, progress):
    import keras

    keras.utils.set_random_seed(seed)
    data = load_dataset(dataset_path)
    x_train, y_train = split_arrays(data, "train")
    x_val, y_val = split_arrays(data, "val")
    num_classes = len(data["class_names"])
    devices = _distribution(cfg)  # before any variable exists, so every variable is laid out by it
    if devices["count"] > 1:
        # every batch, the last one too, is split evenly over the devices: drop at most count-1 samples
        keep_train = len(x_train) - len(x_train) % devices["count"]
        keep_val = len(x_val) - len(x_val) % devices["count"]
        devices["dropped_samples"] = int(len(x_train) - keep_train + len(x_val) - keep_val)
        x_train, y_train, x_val, y_val = x_train[:keep_train], y_train[:keep_train], x_val[:keep_val], y_val[:keep_val]
    model = usermodel.build_model(cfg, x_train.shape[1:], num_classes)
    if usermodel.kind(cfg.recipe) != "builtin":
        preflight.require_portable(model, cfg.recipe)  # (train.epochs = 0 is refused by the config for recipes)
    pretrained = transfer.load_pretrained(model, cfg.weights) if cfg.weights else None
    if cfg.finetune != "full" and not (pretrained or usermodel.kind(cfg.recipe) == "keras_file"):
        raise InputError(f"train.finetune = {cfg.finetune!r} adapts a pretrained model; set train.weights to a "
                         "local weights file (or train.recipe to a trained .keras file), or use finetune = 'full'.")
    transfer.apply_mode(model, cfg.finetune, cfg.unfreeze_top, cfg.lora_rank)
    counts = transfer.param_counts(model)
    print(f"trainable parameters: {counts['trainable_params']:,} of {counts['total_params']:,} "
          f"({100 * counts['trainable_fraction']:.2f}%, finetune = {cfg.finetune})")
    model.compile(
        # Cosine decay to zero: the last epochs move the weights little, so BatchNorm's moving
        # statistics (and QAT's activation ranges) match the final weights.
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(1, cfg.epochs * math.ceil(len(x_train) / cfg.batch_size))
        )),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = math.ceil(len(x_train) / cfg.batch_size)
    epoch_seconds = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: epoch_seconds.append(-time.perf_counter()),
        on_epoch_end=lambda e, logs: epoch_seconds.__setitem__(-1, epoch_seconds[-1] + time.perf_counter()),
    )
    started = time.perf_counter()
    history = keras.callbacks.History()
    if cfg.epochs:
        history = model.fit(
            x_train, y_train,
            validation_data=(x_val, y_val) if len(x_val) else None,
            epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
            callbacks=[progress_mod.keras_callback(progress, "train", cfg.epochs, steps), timer],
        )
    seconds = time.perf_counter() - started
    lora_merge = None
    if cfg.finetune == "lora":
        # export needs a plain graph: fold every adapter into its kernel, and prove nothing changed
        model, diff = transfer.merge_lora(model, x_val[:64] if len(x_val) else x_train[:64])
        lora_merge = {"max_abs_output_diff": diff}
        if diff > 1e-5:
            raise RuntimeError(f"merging LoRA adapters changed the outputs by {diff:.3g} (> 1e-5)")
    atomic_save_model(model, out_dir / "float.keras")
    return {
        "recipe": cfg.recipe,
        "params": int(model.count_params()),
        **counts,
        "finetune": cfg.finetune,
        "pretrained": pretrained,
        "lora_merge": lora_merge,
        "devices": devices,
        "epochs": cfg.epochs,
        "seconds": round(seconds, 2),
        # the first epoch includes JAX's tracing and XLA compilation of the train/eval steps
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
    }


def run_stage(config, inputs, out_dir, progress):
    return run(config.train, config.build.seed, inputs["dataset.npz"], out_dir, progress)
