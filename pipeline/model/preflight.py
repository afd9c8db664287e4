"""Serialization preflight: will the model that ships be the model that was trained?

The most common silent export failure is a custom layer whose `get_config` forgets a constructor
argument: the reloaded layer takes the default, and the exported model differs from the trained one.
For every layer that is not one of Keras's own, this round-trips `get_config`/`from_config` and
compares the constructor arguments and the outputs on a fixed batch (inference and, where the layer
is deterministic, training mode). It also refuses Lambda layers and unregistered custom classes.
"""

import inspect

import numpy as np

from pipeline.engine.errors import InputError

_BASE_ARGS = {"self", "name", "dtype", "trainable", "autocast", "input_shape", "input_dim", "batch_size",
              "input_dtype", "batch_input_shape", "dtype_policy", "activity_regularizer"}


# edgebuild's own QAT layers (trusted like Keras's)
QAT_MODULES = ("pipeline.model.qat", "pipeline.model.fakequant", "pipeline.model.attention")


def _is_keras_own(cls):
    return cls.__module__.startswith(("keras.", "keras_")) or cls.__module__ in QAT_MODULES


def _sample_inputs(layer, rng):
    spec = layer.input
    specs = spec if isinstance(spec, (list, tuple)) else [spec]
    arrays = [rng.uniform(0.0, 1.0, [2 if d is None else d for d in s.shape]).astype("float32") for s in specs]
    return arrays if isinstance(spec, (list, tuple)) else arrays[0]


def _max_diff(a, b):
    import keras

    a = np.asarray(keras.ops.convert_to_numpy(a))
    b = np.asarray(keras.ops.convert_to_numpy(b))
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def check_layer(layer):
    """Problems (one line each) with one layer's portability; [] if none."""
    import keras

    cls = type(layer)
    where = f"layer '{layer.name}' ({cls.__name__})"
    if isinstance(layer, keras.layers.Lambda):
        return [f"{where} is a Lambda: loading it runs arbitrary code, so safe_mode refuses it, and it is not "
                "portable. Replace it with a custom layer registered with @keras.saving.register_keras_serializable()."]
    if _is_keras_own(cls):
        return []
    problems = []
    if ">" not in keras.saving.get_registered_name(cls):
        problems.append(f"{where} is a custom class that is not registered, so a saved model cannot be loaded "
                        f"back. Add @keras.saving.register_keras_serializable(package=\"{cls.__module__.split('.')[0]}\") "
                        f"above `class {cls.__name__}`.")
    try:
        config = layer.get_config()
        clone = cls.from_config(config)
    except Exception as exc:  # noqa: BLE001 - reported as the finding
        return problems + [f"{where}: get_config/from_config fails ({type(exc).__name__}: {str(exc)[:150]}). "
                           "get_config must return every constructor argument."]
    for param in list(inspect.signature(cls.__init__).parameters.values()):
        if param.name in _BASE_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name in config:
            continue
        ours, theirs = getattr(layer, param.name, None), getattr(clone, param.name, None)
        if not hasattr(layer, param.name) or ours != theirs:
            shown = f" (trained with {ours!r}, reloads as {theirs!r})" if hasattr(layer, param.name) else ""
            problems.append(f"{where}: constructor argument `{param.name}` is missing from get_config{shown}, "
                            f"so the exported model can differ from the trained one. Add `{param.name}` to get_config.")
    rng = np.random.RandomState(0)
    try:
        x = _sample_inputs(layer, rng)
    except (AttributeError, ValueError):
        return problems  # not called in a functional graph: nothing to run it on
    clone(x)
    if len(clone.weights) == len(layer.weights):
        clone.set_weights(layer.get_weights())
    modes = [False]
    if _max_diff(layer(x, training=True), layer(x, training=True)) == 0.0:
        modes.append(True)  # deterministic in training mode too (no dropout-like randomness)
    for training in modes:
        diff = _max_diff(layer(x, training=training), clone(x, training=training))
        if diff > 1e-5 and not any("missing from get_config" in p for p in problems):
            problems.append(f"{where}: its outputs change after a get_config/from_config round trip "
                            f"({'training' if training else 'inference'} mode, max |diff| {diff:.3g}); a "
                            "constructor argument or state is probably missing from get_config.")
            break
    return problems


def check_model(model):
    """Every problem of every layer of `model` (nested models included)."""
    import keras

    problems = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            problems += check_model(layer)
        else:
            problems += check_layer(layer)
    return problems


def require_portable(model, origin):
    problems = check_model(model)
    if problems:
        more = f" (and {len(problems) - 1} more; `edgebuild check-model` lists all)" if len(problems) > 1 else ""
        raise InputError(f"serialization preflight of {origin}: {problems[0]}{more}")
