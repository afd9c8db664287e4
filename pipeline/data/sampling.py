"""Stratified sampling: the same share of every class, reproducible from a seed."""

import numpy as np


def stratified_subset(labels, n, seed):
    """At most n indices into `labels`, the same share of every class, in a fixed order."""
    if not n or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.RandomState(seed)
    classes = np.unique(labels)
    per = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    chosen = []
    while len(chosen) < n:
        for c in classes:
            if per[c] and len(chosen) < n:
                chosen.append(per[c].pop(0))
    return np.sort(np.asarray(chosen))
