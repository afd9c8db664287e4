"""Turn an unexpected exception from a stage into one or two readable lines."""


def explain(exc):
    name = type(exc).__name__
    text = str(exc).strip().splitlines()
    first = next((ln.strip() for ln in text if ln.strip()), "")
    hints = {
        "TracerBoolConversionError": "Python control flow (if/while) on a traced value: use keras.ops.cond/where",
        "ConcretizationTypeError": "a traced value was used where a concrete Python value is needed",
        "TracerArrayConversionError": "a NumPy call on a traced value inside call(): use keras.ops instead",
    }
    hint = hints.get(name)
    layer = None
    for ln in text:
        if "Exception encountered when calling" in ln:
            layer = ln.split("calling", 1)[1].strip(" .")
    parts = [f"{name}: {first[:300]}"]
    if layer:
        parts.append(f"in {layer}")
    if hint:
        parts.append(f"likely cause: {hint}")
    return "; ".join(parts) + " (run with --debug for the traceback)"
