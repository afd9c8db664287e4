"""Tasks: what a model's outputs mean and how they are judged (`task.kind`). Classification (top-1
of logits) is the built-in path of the evaluate, host and target stages, the gate and the report;
every other kind is one module here with the same functions, which they call through `get(kind)`
(None for classification):

- `model_outputs(input_shape, class_names)`: what a recipe is asked to output (the `num_classes`
  argument: the classes, or the shape an autoencoder reconstructs);
- `fit_arrays(x, y)`: the (inputs, targets) a model is fitted on, from one split;
- `metrics(outputs, x, labels, groups)`: one model's record on the test set, from its (dequantized)
  outputs and the float inputs `x`, and the per-sample scores (`scores`);
- `correlation(a, b)`, `clip_scores(scores, labels, groups)`: how scores agree, and per clip;
- `compare(target, host, x, labels, groups)`: a target's (dequantized) outputs against the host's;
- `gate_checks(manifest, cfg, baseline)`: the task's own gate checks (the bit-exactness, budget and
  model checks are shared);
- `metric_cell(record)`: a model's figure in the report's tables, and `roc_figure(curves, plt)` its plot.
"""

import importlib

KINDS = ("classification", "anomaly")


def kind(manifest):
    """The task kind a manifest was made for (manifests from before tasks: classification)."""
    return ((manifest.get("config") or {}).get("task") or {}).get("kind", "classification")


def get(name):
    """The module of a task kind; None for classification (the built-in path)."""
    if name not in KINDS:
        raise ValueError(f"no task module for {name!r}")
    return None if name == "classification" else importlib.import_module(f"{__name__}.{name}")
