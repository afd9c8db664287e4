"""qat stage: fold BatchNorm, insert fake-quant, fine-tune on JAX, save the QAT `.keras`."""

import math
import time

from .. import progress as progress_mod
from .. import qat
from ..errors import InputError
from ..fsutil import atomic_save_model
from .data import load_dataset
from .train import split_arrays


def run(cfg, seed, float_path, dataset_path, out_dir, progress):
    import keras

    keras.utils.set_random_seed(seed + 2)
    data = load_dataset(dataset_path)
    x_train, y_train = split_arrays(data, "train")
    x_val, y_val = split_arrays(data, "val")
    float_model = keras.models.load_model(float_path)
    try:
        model = qat.quantize_model(float_model, momentum=cfg.ema_momentum)
    except qat.UnsupportedLayerError as exc:
        raise InputError(f"QAT cannot quantize this model: {exc}") from None
    # Ranges start from real data: one pass over the first training samples in training mode.
    model(x_train[: cfg.init_samples], training=True)
    model.compile(
        # Cosine decay to zero: the last epochs move the weights little, so BatchNorm's moving
        # statistics (and QAT's activation ranges) match the final weights.
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate, decay_steps=max(1, cfg.epochs * math.ceil(len(x_train) / cfg.batch_size))
        )),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    if cfg.epochs:
        steps = math.ceil(len(x_train) / cfg.batch_size)
        model.fit(
            x_train, y_train,
            validation_data=(x_val, y_val) if len(x_val) else None,
            epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
            callbacks=[progress_mod.keras_callback(progress, "qat", cfg.epochs, steps)],
        )
    seconds = time.perf_counter() - started
    atomic_save_model(model, out_dir / "qat.keras")
    return {"seconds": round(seconds, 2), "ranges": qat.activation_ranges(model)}


def run_stage(config, inputs, out_dir, progress):
    return run(config.qat, config.build.seed, inputs["float.keras"], inputs["dataset.npz"], out_dir, progress)
