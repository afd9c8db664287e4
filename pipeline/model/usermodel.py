"""Where a model comes from: a built-in recipe, a user function "module.path:function", or a
`.keras` file. User code is imported from the project directory (the working directory)."""

import hashlib
import importlib
import os
import re
import sys
from pathlib import Path

from pipeline.engine.config import recipe_kind as kind  # the form of a recipe string: the train section declares them
from pipeline.engine.errors import InputError

JAX_TOOLCHAIN = ("keras", "jax", "jaxlib", "numpy", "flatbuffers", "pillow")  # what a Keras stage on JAX loads


def _project_on_path():
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def import_user_module(recipe):
    """Import the module of a "module.path:function" recipe (this also registers its custom
    layers, which every Keras process needs before it loads the model files)."""
    module_name, _, func_name = recipe.partition(":")
    _project_on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"train.recipe {recipe!r} names module {module_name!r}, which cannot be imported ({exc}). "
            "Run edgebuild from the project directory or fix the module path."
        ) from None
    return module, func_name


def register_user_layers(recipe):
    """A Keras stage calls this first: a "module.path:function" recipe's module registers the user's
    custom layers, which every model file of the build needs before it loads."""
    if kind(recipe) == "function":
        import_user_module(recipe)


def model_files(train, trains):
    """External inputs of a Keras stage: a user function's code (its custom layers load in every
    Keras stage) and, for the stage that trains (`trains`), a trained model file and pretrained weights."""
    files = {}
    recipe_kind = kind(train.recipe)
    named = [("train.weights", train.weights)] + ([("train.recipe", train.recipe)] if recipe_kind == "keras_file" else [])
    for key, value in named if trains else ():
        if value and not Path(value).is_file():
            raise InputError(f"{key} names the file {value}, which does not exist here ({Path.cwd()}). Check the path "
                             "(nothing is downloaded).")
    if recipe_kind == "function" or (recipe_kind == "keras_file" and trains):
        files["recipe"] = source_hash(train.recipe)
    if trains and train.weights and Path(train.weights).is_file():
        files["weights"] = hashlib.sha256(Path(train.weights).read_bytes()).hexdigest()
    return files


def source_hash(recipe):
    """Content hash of what a user recipe is made of: a model file's bytes, or the code of a
    function's module and every module of the project (the working directory) it imports."""
    k = kind(recipe)
    if k == "keras_file":
        path = Path(recipe)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if k == "function":
        from pipeline.engine.codehash import code_digest

        _project_on_path()
        try:
            return code_digest(recipe.partition(":")[0], within=[os.getcwd()])[0]
        except (ValueError, SyntaxError):
            return None  # the stage that imports it says what is wrong
    return None


def _keras_version():
    import keras

    return keras.__version__


# A .keras file is a zip; what it may expand to before Keras reads it (as Pillow limits an image's pixels):
# a model description of at most 64 MiB, at most 8 GiB in all, and a member over 64 MiB compressed at most
# 100 to 1 (Keras stores its members uncompressed).
KERAS_DESCRIPTION_BYTES = 64 << 20
KERAS_TOTAL_BYTES = 8 << 30
KERAS_MAX_RATIO = 100


def check_keras_archive(path):
    """Refuse a .keras file that is no zip, or whose members would expand beyond the limits above (a zip
    bomb), before anything is decompressed."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        with open(path, "rb") as f:
            head = f.read(8)
        raise InputError(f"a .keras model file is the zip archive model.save('model.keras') writes; {path} is not a "
                         f"zip ({exc}; it starts with {head!r}). Pass the file Keras saved.") from None
    total = sum(m.file_size for m in members)
    worst = max(members, key=lambda m: m.file_size / max(m.compress_size, 1), default=None)
    too_big = [m for m in members if m.filename in ("config.json", "metadata.json")
               and m.file_size > KERAS_DESCRIPTION_BYTES]
    if too_big or total > KERAS_TOTAL_BYTES or (worst is not None and worst.file_size > KERAS_DESCRIPTION_BYTES
                                                 and worst.file_size > KERAS_MAX_RATIO * max(worst.compress_size, 1)):
        m = too_big[0] if too_big else worst
        raise InputError(
            f"a .keras file may expand to a model description of at most {KERAS_DESCRIPTION_BYTES >> 20} MiB and "
            f"{KERAS_TOTAL_BYTES >> 30} GiB in all, no member over {KERAS_DESCRIPTION_BYTES >> 20} MiB compressed more "
            f"than {KERAS_MAX_RATIO}:1; {path} ({path.stat().st_size:,} bytes) would expand {m.filename} to "
            f"{m.file_size:,} bytes ({total:,} in all). It is not a model Keras saved; pass the real file.")


def load_keras_file(path):
    """Load a user's `.keras` (or Keras 2 full-model `.h5`) file with safe_mode on: a Lambda layer
    (arbitrary code) is refused."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise InputError(f"train.recipe names the model file {path}, which does not exist. Check the path.")
    if path.suffix == ".keras":
        check_keras_archive(path)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - every load failure is the user's file; say which and why
        text = " ".join(str(exc).split())
        if "Lambda" in text and "safe_mode" in text:
            raise InputError(
                f"{path} contains a Lambda layer; loading it would run arbitrary code from the file, so "
                "safe_mode refuses it (and Lambda layers are not portable). Replace the Lambda with a "
                "registered custom layer."
            ) from None
        unknown_arg = re.search(r"Unrecognized keyword arguments passed to (\w+): \{'(\w+)'", text)
        if unknown_arg is None:
            unknown_arg = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", text)
        if unknown_arg:
            cls, arg = unknown_arg.groups()
            layer = re.search(r"'name': '([^']+)'", text)
            where = f" (layer '{layer.group(1)}')" if layer else ""
            raise InputError(
                f"Keras {_keras_version()} cannot load {path}: its {cls}{where} has the argument `{arg}`, which "
                f"{cls} no longer takes (the file was probably saved by Keras 2). Load it where it was trained and "
                f"re-save it without that argument (tf.keras: model.save('model.keras')), or delete `{arg}` from "
                f"that layer's entry in the file's model_config."
            ) from None
        if "Could not locate class" in text or "Unknown layer" in text:
            raise InputError(
                f"{path} uses a custom class Keras cannot find ({text[:200]}). Register it with "
                "@keras.saving.register_keras_serializable() in a module, and name that module in "
                "train.recipe as 'module:function' or import it before loading."
            ) from None
        raise InputError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {text[:300]}). "
                         "Re-save it with model.save('model.keras').") from None


def build_model(cfg, input_shape, num_classes):
    """The float model of the train stage, and what was removed from it: (model, softmax_removed).
    A user model's final softmax is removed, so every artifact outputs logits. `num_classes` is a
    tuple for a reconstruction (task.kind = 'anomaly'): the shape the model outputs, its input's."""
    from pipeline.model import recipes as models

    k = kind(cfg.recipe)
    if k == "builtin":
        return models.RECIPES[cfg.recipe](input_shape, num_classes, width=cfg.width, blocks=cfg.blocks), None
    if k == "keras_file":
        model = load_keras_file(cfg.recipe)
    else:
        module, func_name = import_user_module(cfg.recipe)
        fn = getattr(module, func_name, None)
        if not callable(fn):
            raise InputError(f"train.recipe {cfg.recipe!r}: module {module.__name__} has no function {func_name!r}.")
        model = fn(tuple(input_shape), num_classes)
    import keras

    if not isinstance(model, keras.Model):
        raise InputError(f"train.recipe {cfg.recipe!r} must give a keras.Model; received {type(model).__name__}.")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(
            f"train.recipe {cfg.recipe!r} must be a model with one input and one output; it has "
            f"{len(model.inputs)} input(s) and {len(model.outputs)} output(s). Export the single classification "
            "path as its own keras.Model."
        )
    in_shape = tuple(model.inputs[0].shape[1:])
    out_dim = model.outputs[0].shape[-1]
    if isinstance(num_classes, tuple):  # an autoencoder: it reconstructs its input
        out_shape = tuple(model.outputs[0].shape[1:])
        if in_shape != tuple(input_shape) or out_shape != num_classes:
            raise InputError(
                f"an anomaly model (task.kind = 'anomaly') takes a window and reconstructs it: train.recipe "
                f"{cfg.recipe!r} must take and give {tuple(input_shape)} (the data); it takes {in_shape} and gives "
                f"{out_shape}. Match the model to the windows."
            )
        return model, None
    if in_shape != tuple(input_shape) or out_dim != num_classes:
        raise InputError(
            f"the model of train.recipe {cfg.recipe!r} must take {tuple(input_shape)} and give {num_classes} "
            f"logits (the data); it takes {in_shape} and gives {out_dim}. Match data.image_size/channels "
            "or the model."
        )
    return strip_softmax(model)


def strip_softmax(model):
    """A final softmax (a Softmax layer, an Activation('softmax') or activation='softmax' on the last
    layer) is removed, so the model and its int8 artifact give logits: an int8 softmax has a fixed
    1/256 scale, and the converter requantizes around it through float. Returns (model, what was
    removed or None)."""
    import keras

    history = getattr(model.outputs[0], "_keras_history", None)
    if history is None:
        return model, None
    last = history.operation
    act = getattr(last, "activation", None)
    is_softmax_layer = isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and act is keras.activations.softmax)
    if is_softmax_layer:
        node = last._inbound_nodes[history.node_index]  # the call that made the output (a layer may be reused)
        stripped = keras.Model(model.inputs, node.input_tensors[0], name=model.name)
        return stripped, f"layer '{last.name}' ({type(last).__name__})"
    if act is keras.activations.softmax:
        last.activation = keras.activations.linear  # get_config now saves "linear"
        return model, f"activation='softmax' of layer '{last.name}' ({type(last).__name__})"
    return model, None


def input_convention_scores(model, images, labels, preprocess_cfg, channels):
    """Top-1 accuracy of `model` on uint8 `images` under the configured preprocessing and under the
    common conventions (0..1, 0..255, -1..1, ImageNet mean/std). `model` is a Keras model or a
    function (preprocess config -> outputs), e.g. a .tflite run on its quantized input."""
    import numpy as np

    from pipeline.data import preprocess
    from pipeline.engine.config import PreprocessConfig

    candidates = {"configured": preprocess_cfg}
    for name, values in preprocess.COMMON.items():
        if values["mean"] and channels != len(values["mean"]):
            continue
        candidates[name] = PreprocessConfig(**values)
    scores = {}
    for name, cfg in candidates.items():
        logits = (model.predict(preprocess.to_float(images, cfg), batch_size=128, verbose=0)
                  if hasattr(model, "predict") else model(cfg))
        scores[name] = float((np.asarray(logits).argmax(-1) == labels).mean())
    return scores


def check_input_convention(model, images, labels, preprocess_cfg, channels, origin):
    """A trained model fed the wrong input convention scores near chance: stop with the setting that
    fits (exit 3). Returns the scores, which go into the stage record."""
    import numpy as np

    from pipeline.data import preprocess

    scores = input_convention_scores(model, images, labels, preprocess_cfg, channels)
    chance = float(np.bincount(labels).max() / len(labels))
    configured = scores["configured"]
    best = max((n for n in scores if n != "configured"), key=lambda n: scores[n])
    if configured <= chance + 0.15 and scores[best] >= chance + 0.3 and scores[best] - configured >= 0.25:
        lo, hi = preprocess_cfg.pixel_range
        raise InputError(
            f"{origin} scores {100 * configured:.0f}% (chance {100 * chance:.0f}%) with the configured input "
            f"preprocess.pixel_range = [{lo:g}, {hi:g}]{', mean/std' if preprocess_cfg.mean else ''}, and "
            f"{100 * scores[best]:.0f}% with {best} input ({len(labels)} samples): the model was trained on another "
            f"input convention. Set {preprocess.setting(best, preprocess_cfg)}."
        )
    return {"chance": round(chance, 6), **{k: round(v, 6) for k, v in scores.items()}}
