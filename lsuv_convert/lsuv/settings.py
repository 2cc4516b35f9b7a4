"""The LSUV settings and their defaults, defined once.

The engine, the Python API, the pipeline, the CLI's options and the log all read
:data:`DEFAULTS` and :class:`LsuvSettings`; none of them spells a default of its own.
Kept free of torch so that the CLI can build its ``--help`` from it instantly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PRE_INIT_MODES = ("orthonormal", "gaussian", "keep")
SEED_RANGE = (0, 2**63 - 1)  # what torch.Generator.manual_seed and numpy's default_rng both take


@dataclass(frozen=True)
class LsuvSettings:
    """How LSUV runs (Algorithm 1's knobs); the defaults follow the paper's own code (LSUVinit)."""

    pre_init: str = "orthonormal"  # weights before LSUV: orthonormal (Saxe), gaussian, or keep
    tol: float = 0.02  # |Var(B_L) - target_var| below which a layer is done
    max_iter: int = 20  # most scaling steps per layer
    target_var: float = 1.0  # the variance every layer's output is scaled to
    center: bool = False  # also set biases so that each output has mean 0
    seed: int | None = None  # seed of the pre-init; None draws from torch's global generator

    def validate(self) -> "LsuvSettings":
        """Raise ValueError naming the setting and the accepted range; returns self."""
        for problem in self.problems():
            raise ValueError(problem)
        return self

    def problems(self) -> list[str]:
        out = []
        if self.pre_init not in PRE_INIT_MODES:
            out.append(f"pre_init must be one of {', '.join(PRE_INIT_MODES)}, got {self.pre_init!r}")
        if not (isinstance(self.tol, (int, float)) and math.isfinite(self.tol) and self.tol > 0):
            out.append(f"tol must be a finite number > 0, got {self.tol}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            out.append(f"max_iter must be an integer >= 1, got {self.max_iter}")
        if not (isinstance(self.target_var, (int, float)) and math.isfinite(self.target_var) and self.target_var > 0):
            out.append(f"target_var must be a finite number > 0, got {self.target_var}")
        if self.seed is not None and not (isinstance(self.seed, int) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            out.append(f"seed must be an integer in [{SEED_RANGE[0]}, 2**63 - 1], got {self.seed}")
        return out

    def to_log(self) -> dict:
        """The settings as the log's ``settings`` object (the seed has its own field)."""
        out = asdict(self)
        out.pop("seed")
        return out


DEFAULTS = LsuvSettings()
