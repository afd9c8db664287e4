"""Per-layer error of a quantized .tflite: each quantized op output, dequantized, against the float
model's activation at the same point (what `pipeline.model.layer_refs` computes), on a fixed subset of
the test set.

For each tensor: SNR in dB (10 log10 of the float activation's power over the error's power, over every
element of every sample), cosine similarity and the largest absolute error; and `lost_db`, the SNR this
op loses against the worst of its inputs' (the nearest compared tensors upstream, or the model's input;
at most the ideal SNR of the tensor's width).
A tensor quantized with too coarse a step loses many dB at its own op while the ops after it only carry
the error on, so the report ranks by `lost_db`: the first row names where the error comes from.
"""

import numpy as np

from pipeline.device import tflite_info

WORST = 5  # the rows the manifest's "worst" lists keep
# The SNR of a full-range uniform signal quantized to `bits` (6.02 bits + 1.76 dB): the most a tensor of
# that width can hold, and so the start of `lost_db` for an op fed an input more exact than that (a
# model input of 0-255 pixels at scale 1/255 is exact; its first op would otherwise "lose" 100 dB).
IDEAL_SNR_DB = {"int8": 49.93, "int16": 98.09}


def graph(path):
    """The quantized op outputs of a .tflite main graph in execution order, and what each op reads:
    ({tensor index: {"op", "op_index", "name", "shape", "dtype", "scale", "zero_point"}},
    {tensor index: [input tensor indices of the op that writes it]}, the graph's input tensor indices)."""
    from ai_edge_litert import schema_py_generated as schema

    model = tflite_info.read_model(path)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    g = model.subgraphs[0]
    ops = tflite_info.op_outputs(path)
    tensors, reads = {}, {}
    for (index, op_name, outs), op in zip(ops, g.operators):
        ins = [int(t) for t in (op.inputs if op.inputs is not None else []) if t >= 0]
        for t, name in outs:
            reads[t] = ins
            q = g.tensors[t].quantization
            if q is None or q.scale is None or len(q.scale) != 1 or types[g.tensors[t].type] not in ("INT8", "INT16"):
                continue
            tensors[t] = {"op": op_name, "op_index": index, "name": name, "dtype": types[g.tensors[t].type].lower(),
                          "shape": [int(d) for d in g.tensors[t].shape], "scale": float(q.scale[0]),
                          "zero_point": int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0}
    return tensors, reads, [int(t) for t in g.inputs]


def tensor_error(quantized, scale, zero_point, reference):
    """{"snr_db", "cosine", "max_abs_error"} of raw quantized values (N, ...) against float `reference`
    of the same size; snr_db is None when the float activation is all zero, or the error is."""
    q = (np.asarray(quantized, np.float64).reshape(len(reference), -1) - zero_point) * scale
    f = np.asarray(reference, np.float64).reshape(len(reference), -1)
    err = q - f
    signal, noise = float((f * f).sum()), float((err * err).sum())
    norms = float(np.sqrt((q * q).sum() * signal))
    return {"snr_db": round(float(10 * np.log10(signal / noise)), 2) if signal > 0 and noise > 0 else None,
            "cosine": round(float((q * f).sum()) / norms, 6) if norms > 0 else None,
            "max_abs_error": round(float(np.abs(err).max()), 6) if err.size else 0.0}


def report(path, dumps, references, layers, input_snr):
    """Every compared tensor's row, in execution order: {"layer", "op", "tensor", "snr_db", "cosine",
    "max_abs_error", "lost_db"}. `dumps` {tensor index: raw values (N, ...)} from the runtime, `references`
    {tensor index: float activation (N, ...)}, `layers` {tensor index: the float layer's name},
    `input_snr` the SNR of the quantized model input (the start of every path)."""
    tensors, reads, inputs = graph(path)
    snr = {t: input_snr for t in inputs}
    rows = []

    def upstream(t, seen):
        """The worst SNR among the nearest compared tensors feeding t (the model input's when none)."""
        if t in snr:
            return snr[t]
        if t in seen or t not in reads:
            return None
        seen.add(t)
        found = [v for v in (upstream(i, seen) for i in reads[t]) if v is not None]
        return min(found) if found else None

    for t, info in sorted(tensors.items(), key=lambda kv: kv[1]["op_index"]):
        if t not in references or t not in dumps or t not in layers:
            continue
        if np.asarray(dumps[t]).size != np.asarray(references[t]).size:
            continue
        row = {"layer": layers[t], "op": info["op"], "tensor": info["name"][:160],
               **tensor_error(dumps[t], info["scale"], info["zero_point"], references[t])}
        before = [min(v, IDEAL_SNR_DB[info["dtype"]]) for v in (upstream(i, set()) for i in reads[t]) if v is not None]
        row["lost_db"] = (round(float(min(before) - row["snr_db"]), 2)
                          if before and row["snr_db"] is not None else None)
        if row["snr_db"] is not None:
            snr[t] = row["snr_db"]
        rows.append(row)
    return rows


def worst(rows, n=WORST):
    """The `n` rows that lose the most SNR at their own op (then the lowest SNR), worst first."""
    ranked = [r for r in rows if r["lost_db"] is not None]
    return sorted(ranked, key=lambda r: (-r["lost_db"], r["snr_db"]))[:n]


def summary(rows, samples, where):
    """The record kept for one runtime: the subset size, every row and the worst."""
    return {"samples": samples, "where": where, "tensors": rows, "worst": worst(rows)}


def worst_line(section):
    """"worst layer: conv1 (SNR 11.2 dB, 23.4 dB lost there)" from a summary, or '' when there is none."""
    top = (section or {}).get("worst") or []
    if not top:
        return ""
    r = top[0]
    return f"worst layer: {r['layer']} (SNR {r['snr_db']:.1f} dB, {r['lost_db']:.1f} dB lost there)"


def save_references(path, x, input_snr, layers, refs):
    """What the targets compare with, in one .npz: the subset's model inputs `x`, the quantized input's
    SNR, {tensor index: float layer name} and {tensor index: the float activation}."""
    import json

    from pipeline.engine.fsutil import atomic_save_npz

    atomic_save_npz(path, x=x, input_snr=np.float64(np.nan if input_snr is None else input_snr),
                    layers=np.array(json.dumps({str(t): n for t, n in layers.items()})),
                    **{f"r{t}": np.asarray(v, np.float32) for t, v in refs.items()})


def load_references(path):
    """(x, input_snr or None, {tensor index: layer name}, {tensor index: float activation}) from the
    file save_references wrote."""
    import json

    with np.load(path) as f:
        snr = float(f["input_snr"])
        layers = {int(t): n for t, n in json.loads(str(f["layers"])).items()}
        return (f["x"], None if np.isnan(snr) else snr, layers,
                {int(k[1:]): f[k] for k in f.files if k.startswith("r")})
