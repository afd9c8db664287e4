"""Accuracy records (overall and per class) and top-1 comparisons between runtimes."""

import numpy as np


def accuracy_record(top1, labels, class_names):
    per_class = {}
    for c, name in enumerate(class_names):
        mask = labels == c
        per_class[name] = round(float((top1[mask] == c).mean()), 6) if mask.any() else None
    return {"accuracy": round(float((top1 == labels).mean()), 6), "per_class": per_class, "samples": int(len(labels))}


def top_k_accuracy(scores, labels, k):
    """The fraction of samples whose true class is among the k highest scores; classes tied with the k-th
    score count as in the top k (tf.math.in_top_k's rule)."""
    scores = np.asarray(scores, np.float64).reshape(len(labels), -1)
    true = scores[np.arange(len(labels)), labels]
    with np.errstate(invalid="ignore"):
        above = (scores > true[:, None]).sum(axis=1)
    return round(float(((above < k) & np.isfinite(true)).mean()), 6)  # a NaN or inf true score is a miss


def with_top_k(record, scores, labels, k):
    """The record with its top-k accuracy when k > 1 (task.top_k)."""
    if k > 1:
        record["top_k"] = {"k": int(k), "accuracy": top_k_accuracy(scores, labels, k)}
    return record


def finite_max(values):
    """The largest finite value (an int for integer values; 0 when there is none): a manifest never holds
    a NaN."""
    if np.issubdtype(values.dtype, np.integer):
        return int(values.max()) if values.size else 0
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def nonfinite(outputs):
    """How many output values are NaN or inf (0 for integer outputs)."""
    return 0 if np.issubdtype(outputs.dtype, np.integer) else int((~np.isfinite(outputs)).sum())


def compare(target_out, host_out, labels, ids, class_names):
    """Target vs host on the same inputs. Integer outputs differ in quantization steps; float outputs
    in their own units (bit-exact is then exact float equality)."""
    integer = np.issubdtype(host_out.dtype, np.integer)
    wide = np.int32 if integer else np.float64
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or inf outputs: counted below, never a warning
        diff = np.abs(target_out.astype(wide) - host_out.astype(wide))
    t1, h1 = target_out.argmax(1), host_out.argmax(1)
    rec = accuracy_record(t1, labels, class_names)
    top_two = np.sort(host_out.reshape(len(host_out), -1), axis=1)[:, -2:] if host_out.shape[-1] > 1 else None
    tied = np.zeros(len(h1), bool) if top_two is None else top_two[:, 0] == top_two[:, 1]
    rec.update(
        bitexact_fraction=round(float((diff == 0).mean()), 6),
        max_abs_diff=finite_max(diff),
        nonfinite_outputs=nonfinite(target_out),
        output_dtype=str(host_out.dtype),
        top1_agreement=round(float((t1 == h1).mean()), 6),
        flipped_ids=[str(s) for s in ids[t1 != h1]],
        # disagreements where the host's own top score is an exact tie (argmax takes the lowest index there)
        tied_flips=int((tied & (t1 != h1)).sum()),
    )
    return rec
