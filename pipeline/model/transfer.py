"""Transfer learning: pretrained weights from a local file, fine-tuning modes (freeze / LoRA), and
merging LoRA adapters back into plain kernels before QAT and export. Nothing is downloaded."""

import hashlib
from pathlib import Path

import numpy as np

from pipeline.engine.errors import InputError

HEAD = "logits"  # the classification head every recipe ends with; it is re-initialised for a new task


def _weights_from_h5(path):
    """{layer key: [arrays]} from a Keras 3 `.weights.h5` file (groups .../<key>/vars/<i>)."""
    import h5py

    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.endswith("/vars") and len(obj):
            layer = name.split("/")[-2]
            found[layer] = [np.asarray(obj[str(i)]) for i in range(len(obj))]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def _weights_from_keras(path):
    from pipeline.model.usermodel import load_keras_file

    model = load_keras_file(path)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


def _save_paths(model):
    """{id(layer): the key Keras 3 gives the layer in a .weights.h5 file}: the snake_case class name,
    numbered in layer order ("conv2d", "conv2d_1", ...), not the layer's name."""
    from keras.src.utils.naming import to_snake_case

    counts, paths = {}, {}
    for layer in model.layers:
        base = to_snake_case(type(layer).__name__)
        n = counts.get(base, 0)
        counts[base] = n + 1
        paths[id(layer)] = base if n == 0 else f"{base}_{n}"
    return paths


def load_pretrained(model, path):
    """Load weights by layer name into every weighted layer but the head; returns a record."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"train.weights names {path}, which does not exist. Give a local .weights.h5 or .keras file "
                         "(nothing is downloaded).")
    if path.name.endswith(".weights.h5"):
        try:
            source = _weights_from_h5(path)
        except OSError as exc:
            raise InputError(f"train.weights {path} is not a readable .weights.h5 file ({exc}).") from None
    elif path.suffix == ".keras":
        source = _weights_from_keras(path)
    else:
        raise InputError(f"train.weights must be a .weights.h5 or .keras file; received {path.name}.")
    expected = [layer for layer in model.layers if layer.weights and layer.name != HEAD]
    by_path = _save_paths(model)
    missing, mismatched, loaded = [], [], []
    for layer in expected:
        arrays = source.get(layer.name, source.get(by_path[id(layer)]))
        if arrays is None:
            missing.append(layer.name)
            continue
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(a.shape) for a in arrays] != shapes:
            mismatched.append(f"{layer.name} {shapes} != {[tuple(a.shape) for a in arrays]}")
            continue
        layer.set_weights(arrays)
        loaded.append(layer.name)
    if missing or mismatched:
        problem = (f"no weights for {missing[:6]}" if missing else "") + ("; " if missing and mismatched else "") + (
            f"other shapes: {mismatched[:3]}" if mismatched else "")
        raise InputError(
            f"train.weights {path.name} must hold every backbone layer of the model by name ({len(expected)} layers: "
            f"{', '.join(l.name for l in expected[:8])}{'...' if len(expected) > 8 else ''}); {problem}. "
            "Use weights saved from the same recipe, width and blocks."
        )
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "layers_loaded": len(loaded)}


def apply_mode(model, mode, unfreeze_top=0, lora_rank=4):
    """Set what trains: 'full' everything; 'freeze' the head (and the top N weighted backbone
    layers); 'lora' low-rank adapters on the backbone's Conv2D/Dense/EinsumDense kernels (a
    MultiHeadAttention's query, key, value and output projections included) plus the head."""
    import keras

    LORA_LAYERS = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.EinsumDense)
    if mode == "full":
        return
    backbone = [layer for layer in model.layers if layer.weights and layer.name != HEAD]
    for layer in backbone:
        layer.trainable = False
    if mode == "freeze":
        for layer in backbone[len(backbone) - unfreeze_top:] if unfreeze_top else []:
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
    elif mode == "lora":
        adapted = 0
        for layer in backbone:
            # a MultiHeadAttention's query, key, value and output projections are its own sub-layers
            if isinstance(layer, keras.layers.MultiHeadAttention):
                targets = [sub for sub in layer._flatten_layers(include_self=False) if type(sub) in LORA_LAYERS]
            else:
                targets = [layer] if type(layer) in LORA_LAYERS else []
            if not targets:
                continue
            layer.trainable = True
            for sub in targets:
                sub.enable_lora(lora_rank)  # freezes the kernel itself; trains A and B
                adapted += 1
                for variable in sub._trainable_variables:  # the bias stays frozen
                    if not variable.name.startswith("lora_"):
                        variable.trainable = False
        if not adapted:
            raise InputError("train.finetune = 'lora' needs Conv2D, Dense, EinsumDense or MultiHeadAttention layers in "
                             "the backbone; this model has none. Use train.finetune = 'freeze' or 'full'.")


def param_counts(model):
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_weights))
    total = int(sum(np.prod(v.shape) for v in model.weights))
    return {"trainable_params": trainable, "total_params": total, "trainable_fraction": round(trainable / total, 6)}


def merge_lora(model, x):
    """A plain copy of `model` with every LoRA adapter merged into its kernel; returns
    (merged model, max |output difference| on `x`)."""
    import keras

    def clone_layer(layer):
        config = layer.get_config()
        if config.get("lora_rank"):
            config = {**config, "lora_rank": None}
        return layer.__class__.from_config(config)

    merged = keras.models.clone_model(model, clone_function=clone_layer)
    for old, new in zip(model.layers, merged.layers):
        # layer by layer and sub-layer by sub-layer (a MultiHeadAttention's projections), by variable
        # name; an adapted kernel is read through `kernel`, which adds the low-rank product
        for old_sub, new_sub in zip(old._flatten_layers(include_self=True), new._flatten_layers(include_self=True)):
            own = {v.name: v for v in old_sub._trainable_variables + old_sub._non_trainable_variables}
            for variable in new_sub._trainable_variables + new_sub._non_trainable_variables:
                lora = variable.name == "kernel" and getattr(old_sub, "lora_enabled", False)
                variable.assign(keras.ops.convert_to_numpy(old_sub.kernel if lora else own[variable.name]))
        new.trainable = True
    a = keras.ops.convert_to_numpy(model(x, training=False))
    b = keras.ops.convert_to_numpy(merged(x, training=False))
    return merged, float(np.max(np.abs(a - b)))
