"""train stage: fit the float model with Keras 3 on the JAX backend (run in a JAX process)."""

import math
import time

import numpy as np

from .. import preflight, progress as progress_mod, usermodel
from ..errors import InputError
from ..fsutil import atomic_save_model
from .data import load_dataset


def split_arrays(dataset, name):
    idx = dataset[name]
    return dataset["x"][idx].astype("float32") / 255.0, dataset["y"][idx]


def run(cfg, seed, dataset_path, out_dir, progress):
    import keras

    keras.utils.set_random_seed(seed)
    data = load_dataset(dataset_path)
    x_train, y_train = split_arrays(data, "train")
    x_val, y_val = split_arrays(data, "val")
    num_classes = len(data["class_names"])
    model = usermodel.build_model(cfg, x_train.shape[1:], num_classes)
    if usermodel.kind(cfg.recipe) != "builtin":
        preflight.require_portable(model, cfg.recipe)
    elif cfg.epochs == 0:
        raise InputError(f"train.epochs = 0 keeps the model untrained; that needs a trained model in "
                         f"train.recipe (a .keras file), not the recipe {cfg.recipe!r}. Set train.epochs >= 1.")
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
    atomic_save_model(model, out_dir / "float.keras")
    return {
        "recipe": cfg.recipe,
        "params": int(model.count_params()),
        "trainable_params": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "epochs": cfg.epochs,
        "seconds": round(seconds, 2),
        # the first epoch includes JAX's tracing and XLA compilation of the train/eval steps
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "history": {k: [round(float(v), 5) for v in vals] for k, vals in history.history.items()},
    }


def run_stage(config, inputs, out_dir, progress):
    return run(config.train, config.build.seed, inputs["dataset.npz"], out_dir, progress)
