"""Variance and mean of a layer output computed by another runtime (onnxruntime, OpenCV,
torch.jit): the one statistic ``verify`` compares with what LSUV measured. And the check every
writer makes that a weight is finite.

Two-pass in float64, so it is exact enough to judge |Var - 1| < tol whatever produced the
array. (The engine's own, faster statistic is :func:`lsuv_convert.lsuv.engine.output_stats`.)
"""

from __future__ import annotations

import numpy as np


def population_stats(array) -> tuple[float, float]:
    """(population variance, mean) over all elements; NaN for an empty array."""
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().double().numpy()
    values = np.asarray(array, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return float("nan"), float("nan")
    mean = float(values.mean())
    centred = values - mean
    return float(np.dot(centred, centred) / values.size), mean


def all_finite(values) -> bool:
    """Whether every element of a torch tensor or numpy array is finite, in one read when it is: a
    finite sum proves it (an inf or a NaN makes the sum non-finite); only a non-finite sum (an
    inf or NaN, or an overflow of finite values) looks element by element. What the writers check
    before a weight goes into a file."""
    if hasattr(values, "detach"):  # a torch tensor
        import torch

        with torch.no_grad():
            return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())
    array = np.asarray(values)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return bool(np.isfinite(array.sum())) or bool(np.isfinite(array).all())
    except TypeError:  # an element type numpy's isfinite doesn't know (bfloat16)
        return bool(np.isfinite(array.astype(np.float64)).all())
