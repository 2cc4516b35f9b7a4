"""Variance and mean of a layer output computed by another runtime (onnxruntime, OpenCV,
torch.jit): the one statistic ``verify`` compares with what LSUV measured.

Two-pass in float64, so it is exact enough to judge |Var - 1| < tol whatever produced the
array. (The engine's own, faster statistic is :func:`lsuv_convert.engine.output_stats`.)
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
