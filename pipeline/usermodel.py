"""Where a model comes from: a built-in recipe, a user function "module.path:function", or a
`.keras` file. User code is imported from the project directory (the working directory)."""

import hashlib
import importlib
import os
import sys
from pathlib import Path

from .errors import InputError

BUILTIN = ("small_cnn", "ds_cnn", "mobilenet_v3_small", "efficientnet_v2_b0")


def kind(recipe):
    if recipe in BUILTIN:
        return "builtin"
    if recipe.endswith(".keras"):
        return "keras_file"
    if ":" in recipe:
        return "function"
    return None


def check_recipe(recipe):
    """Raise a one-line InputError for a recipe string that is none of the three forms."""
    if kind(recipe) is None:
        import difflib

        match = difflib.get_close_matches(recipe, BUILTIN, n=1)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise InputError(
            f"train.recipe must be a built-in recipe ({', '.join(BUILTIN)}), 'module.path:function' or a "
            f".keras file; received {recipe!r}.{hint}"
        )


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


def source_hash(recipe):
    """Content hash of what a user recipe is made of (part of the train stage's cache key)."""
    k = kind(recipe)
    if k == "keras_file":
        path = Path(recipe)
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if k == "function":
        import importlib.util

        _project_on_path()
        try:
            spec = importlib.util.find_spec(recipe.partition(":")[0])
        except ModuleNotFoundError:
            spec = None
        if spec and spec.origin and Path(spec.origin).is_file():
            return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()
    return None


def load_keras_file(path):
    """Load a user's `.keras` file with safe_mode on: a Lambda layer (arbitrary code) is refused."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise InputError(f"train.recipe names the model file {path}, which does not exist. Check the path.")
    try:
        return keras.models.load_model(path, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - every load failure is the user's file; say which and why
        text = " ".join(str(exc).split())
        if "Lambda" in text and "safe_mode" in text:
            raise InputError(
                f"{path} contains a Lambda layer; loading it would run arbitrary code from the file, so "
                "safe_mode refuses it (and Lambda layers are not portable). Replace the Lambda with a "
                "registered custom layer."
            ) from None
        if "Could not locate class" in text or "Unknown layer" in text:
            raise InputError(
                f"{path} uses a custom class Keras cannot find ({text[:200]}). Register it with "
                "@keras.saving.register_keras_serializable() in a module, and name that module in "
                "train.recipe as 'module:function' or import it before loading."
            ) from None
        raise InputError(f"{path} is not a loadable .keras model ({type(exc).__name__}: {text[:200]}). "
                         "Re-save it with model.save('model.keras').") from None


def build_model(cfg, input_shape, num_classes):
    """The float model of the train stage, and where it came from."""
    from . import models

    k = kind(cfg.recipe)
    if k == "builtin":
        return models.RECIPES[cfg.recipe](input_shape, num_classes, width=cfg.width, blocks=cfg.blocks)
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
    in_shape = tuple(model.inputs[0].shape[1:])
    out_dim = model.outputs[0].shape[-1]
    if in_shape != tuple(input_shape) or out_dim != num_classes:
        raise InputError(
            f"the model of train.recipe {cfg.recipe!r} must take {tuple(input_shape)} and give {num_classes} "
            f"logits (the data); it takes {in_shape} and gives {out_dim}. Match data.image_size/channels "
            "or the model."
        )
    return model
