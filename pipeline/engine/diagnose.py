"""Turn an unexpected exception from a stage into one or two readable lines."""

import re
import traceback

# (what the JAX error looks like, anywhere in the traceback) -> likely cause
HINTS = (
    (("TracerBoolConversionError", "Attempted boolean conversion"),
     "Python control flow (if/while) on a traced value: use keras.ops.cond/where"),
    (("ConcretizationTypeError",), "a traced value was used where a concrete Python value is needed"),
    (("TracerArrayConversionError",), "a NumPy call on a traced value inside call(): use keras.ops instead"),
    (("TracerIntegerConversionError",), "int() on a traced value: keep it a tensor or use static shapes"),
)


def explain(exc):
    full = "".join(traceback.format_exception(exc))
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    layer = None
    for ln in lines:
        m = re.search(r"Exception encountered when calling (\S+?)\.?$", ln)
        if m:
            layer = m.group(1).rstrip(".")
    # Keras wraps a layer's error: "Exception encountered when calling X.call(). <the error> Arguments ..."
    detail = next((ln for ln in lines if "Exception encountered" not in ln and not ln.startswith(("Arguments", "•"))), "")
    first = detail or (lines[0] if lines else "")
    hint = next((h for keys, h in HINTS if any(k in full for k in keys)), None)
    parts = [f"{type(exc).__name__}: {first[:300]}"]
    if layer:
        parts.append(f"in {layer}")
    if hint:
        parts.append(f"likely cause: {hint}")
    return "; ".join(parts) + " (run with --debug for the traceback)"
