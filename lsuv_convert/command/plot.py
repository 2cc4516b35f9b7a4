"""``--plot``: per-layer output variance before and after LSUV as a bar chart (matplotlib extra)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_path
from ..errors import LsuvError, UsageError


def require_matplotlib() -> None:
    """--plot's dependency, checked before any work (not found after the model was written)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib, which is not installed: pip install 'lsuv-convert[plot]'; "
                         "nothing was done")


def write_plot(log: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise LsuvError("--plot needs matplotlib: pip install 'lsuv-convert[plot]'", path=path) from None
    import numpy as np

    layers = [layer for layer in log["layers"] if layer.get("var_before") is not None]
    before = np.array([layer["var_before"] for layer in layers], dtype=float)
    after = np.array([layer["var_after"] if layer.get("var_after") is not None else np.nan for layer in layers])
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.25 * len(layers) + 2), 4))
    ax.bar(x - 0.2, before, 0.4, label="before LSUV (after pre-init)")
    ax.bar(x + 0.2, after, 0.4, label="after LSUV")
    ax.axhline(log["settings"]["target_var"], color="k", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("layer (execution order)")
    ax.set_ylabel("output variance")
    ax.set_title(Path(log["model"]).name)
    if len(layers) <= 40:
        ax.set_xticks(x, [layer["name"] for layer in layers], rotation=90, fontsize=6)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
