"""Fitting a model in the train and QAT stages (JAX processes): one compile/fit, per-epoch history,
and keeping the epoch with the best validation accuracy when asked."""

import math
import time

from pipeline.engine import progress as progress_mod

# The batch of every validation pass, the one before fitting and the one after each epoch: the same
# shapes, so JAX compiles the test step once for them (each new batch shape is a compile, 0.2-1 s).
VAL_BATCH = 256


def _round(v):
    return None if v is None else round(float(v), 5)


def set_seed(seed):
    """What keras.utils.set_random_seed does in a JAX process (Python's, NumPy's and Keras's global
    seeds), without importing TensorFlow only to seed it: that import cost 3.5-5 s in each JAX stage,
    and the JAX stages draw nothing from TensorFlow (Keras shuffles numpy arrays with NumPy on JAX).
    TensorFlow is seeded too when something in the process has already imported it; when nothing has,
    Keras is told it is absent, so that saving the model does not import it either."""
    import random
    import sys

    import numpy as np
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)
    if "tensorflow" in sys.modules:
        sys.modules["tensorflow"].random.set_seed(seed)
    else:
        # Keras also imports TensorFlow to ask, while saving a .keras file, whether a value is a
        # tf.TensorShape; none can exist in a process that never imported TensorFlow.
        from keras.src.utils import module_utils

        module_utils.tensorflow._available = False


def distillation_targets(labels, teacher_logits):
    """Labels and a teacher's logits as one target array (N, 1 + classes), what `distillation_loss` reads."""
    import numpy as np

    return np.concatenate([np.asarray(labels, "float32")[:, None], np.asarray(teacher_logits, "float32")], axis=1)


def distillation_loss(weight, temperature):
    """(1 - weight) * cross-entropy with the labels + weight * T^2 * KL(teacher_T || student_T), on targets
    made by `distillation_targets` (Hinton et al.: the teacher's softened logits carry how similar the
    classes are, which a quantized student fits more easily than the labels alone)."""
    from keras import ops

    def loss(y, logits):
        labels = ops.cast(y[:, 0], "int32")
        teacher = y[:, 1:]
        ce = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        p_teacher = ops.softmax(teacher / temperature, axis=-1)
        kl = ops.sum(p_teacher * (ops.log_softmax(teacher / temperature, axis=-1)
                                  - ops.log_softmax(logits / temperature, axis=-1)), axis=-1)
        return (1.0 - weight) * ce + weight * temperature * temperature * kl

    return loss


def _label_accuracy(y, logits):
    """Top-1 accuracy against the label column of distillation targets."""
    from keras import ops

    return ops.cast(ops.equal(ops.argmax(logits, axis=-1), ops.cast(y[:, 0], "int32")), "float32")


def fit(model, train, val, epochs, batch_size, learning_rate, progress, desc, keep_best, initial_candidate=False,
        reconstruct=False, distill=None):
    """Adam with a cosine decay to zero, sparse cross-entropy on logits (`reconstruct`: mean squared
    error against the input, an autoencoder's loss). Returns a record with the per-epoch history, the
    epoch kept and its val accuracy (val loss for a reconstruction), and the model before fitting
    ("initial").

    keep_best: restore the epoch with the best val accuracy (lowest val loss); initial_candidate: the
    model as given (epoch 0, a trained model) competes too, so fine-tuning never leaves it worse on val.
    distill: (weight, temperature, teacher's train logits, teacher's val logits): the loss mixes the labels'
    cross-entropy with the teacher's softened logits (`distillation_loss`); accuracy is still the labels'.
    The model is compiled with the plain loss again afterwards, so what is saved names no custom loss."""
    import keras
    import numpy as np

    x_train, y_train = train
    x_val, y_val = val
    has_val = len(x_val) > 0
    # a val set of up to two VAL_BATCHes is one batch: XLA compiles the val step for each batch shape, and a
    # last, partial batch would be a second compilation (seconds for a QAT graph) of the same step
    val_batch = len(x_val) if len(x_val) <= 2 * VAL_BATCH else VAL_BATCH
    metric = "loss" if reconstruct else "accuracy"
    monitor = f"val_{metric}" if has_val else metric
    sign = -1.0 if reconstruct else 1.0  # the kept epoch maximises sign * monitor
    steps = math.ceil(len(x_train) / batch_size)
    plain_loss = keras.losses.MeanSquaredError() if reconstruct else keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)
    if distill:
        weight, temperature, teacher_train, teacher_val = distill
        y_train = distillation_targets(y_train, teacher_train)
        y_val = distillation_targets(y_val, teacher_val) if has_val else y_val
    model.compile(
        # Cosine decay to zero: the last epochs move the weights little, so BatchNorm's moving
        # statistics (and QAT's activation ranges) match the final weights.
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(
            learning_rate, decay_steps=max(1, epochs * steps))),
        loss=distillation_loss(weight, temperature) if distill else plain_loss,
        metrics=[] if reconstruct else [keras.metrics.MeanMetricWrapper(_label_accuracy, name="accuracy")
                                        if distill else "accuracy"],
    )
    initial = None
    if has_val:
        scores = model.evaluate(x_val, y_val, batch_size=val_batch, verbose=0, return_dict=True)
        initial = {f"val_{k}": _round(v) for k, v in scores.items() if k in ("loss", "accuracy")}

    state = {"best": -math.inf, "epoch": epochs, "weights": None, "seconds": []}
    if keep_best and initial_candidate and initial is not None:
        state.update(best=sign * initial[f"val_{metric}"], epoch=0, weights=[np.array(w) for w in model.get_weights()])

    class _Track(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            state["started"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            state["seconds"].append(round(time.perf_counter() - state["started"], 3))
            shown = "  ".join(f"{k} {float(logs[k]):.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                              if k in logs)
            progress.line(f"{desc} epoch {epoch + 1}/{epochs}: {shown}  ({state['seconds'][-1]:.1f} s)")
            score = sign * float(logs.get(monitor, -sign * math.inf))
            if keep_best and score >= state["best"] and (score > state["best"] or state["epoch"] > 0):
                # a tie keeps the later, longer-trained epoch, but never displaces the model as given
                state["best"], state["epoch"] = score, epoch + 1
                state["weights"] = [np.array(w) for w in model.get_weights()]

    history = keras.callbacks.History()
    if epochs:
        history = model.fit(
            x_train, y_train, validation_data=(x_val, y_val) if has_val else None,
            epochs=epochs, batch_size=batch_size, validation_batch_size=val_batch, shuffle=True, verbose=0,
            callbacks=[progress_mod.keras_callback(progress, desc, epochs, steps), _Track()],
        )
        if keep_best and state["weights"] is not None:
            model.set_weights(state["weights"])
    if distill:
        model.compile(optimizer=model.optimizer, loss=plain_loss, metrics=["accuracy"])
    hist = {k: [_round(v) for v in vals] for k, vals in history.history.items()}
    kept = state["epoch"] if epochs and keep_best else epochs
    if not has_val:
        kept_val = None
    else:
        kept_val = hist[f"val_{metric}"][kept - 1] if kept else initial[f"val_{metric}"]
    return {
        "history": hist,
        "initial": initial,
        "kept_epoch": kept,
        "kept_by": f"{'lowest' if reconstruct else 'best'} {monitor}" if keep_best else "last epoch",
        f"kept_val_{metric}": kept_val,
        "epoch_seconds": state["seconds"],
    }
