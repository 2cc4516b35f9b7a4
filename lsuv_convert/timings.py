"""Stage timings for the log's ``seconds``, recorded from wherever a stage runs.

The pipeline times its own steps (imports, load, batch, prepare, pre_init, lsuv, save); a
plug-in marks the steps inside them (``with stage("fidelity_gate"):``) without knowing about
the log. A stage inside another is recorded under a dotted name (``prepare.fidelity_gate``),
so the top-level names add up to the run and the dotted ones say where their time went.
Outside a recording (a plug-in used on its own) ``stage`` only runs its block.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar

_current: ContextVar[dict | None] = ContextVar("lsuv_stage_seconds", default=None)
_enclosing: ContextVar[str] = ContextVar("lsuv_stage_prefix", default="")


@contextlib.contextmanager
def recording(seconds: dict[str, float]):
    """Stages run inside this block add their seconds to ``seconds``."""
    token, outer = _current.set(seconds), _enclosing.set("")
    try:
        yield seconds
    finally:
        _enclosing.reset(outer)
        _current.reset(token)


@contextlib.contextmanager
def stage(name: str):
    """Time this block as stage ``name`` (added up if the stage runs more than once)."""
    full = _enclosing.get() + name
    token = _enclosing.set(full + ".")
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _enclosing.reset(token)
        seconds = _current.get()
        if seconds is not None:
            seconds[full] = seconds.get(full, 0.0) + elapsed
