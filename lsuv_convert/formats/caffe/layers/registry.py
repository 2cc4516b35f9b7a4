"""The registry of Caffe layer converters: one converter per layer type, registered once.

A converter takes ``(ctx, bottoms)`` (a :class:`~..context.LayerContext` and one
:class:`~..context.Blob` per bottom) and returns one ``Blob`` per top; it checks its parameters
and shapes the way Caffe's ``LayerSetUp`` / ``Reshape`` do and emits fx nodes with Caffe's
TEST-phase semantics. Shapes carry ``None`` for the batch axis, which Caffe lets change freely.
A second converter for a type already registered is a programming error, refused at import.
"""

from __future__ import annotations

from typing import Callable

CONVERTERS: dict[str, Callable] = {}

# Types whose output nothing on a target's path can use: known, but only ever left out.
TAIL_ONLY = frozenset({"PriorBox", "DetectionOutput", "DetectionEvaluate", "Accuracy", "Silence"})


def unsupported_here(type_name: str) -> str:
    """Why a layer of ``type_name`` on a path to a target can't be built (one line)."""
    if type_name in TAIL_ONLY:
        return f"a {type_name} layer can only come after the last Convolution/InnerProduct (it is then left out)"
    return f"unknown layer type {type_name!r}"


def converter(*types: str):
    """Register the decorated function as the converter of each Caffe layer type in ``types``;
    a type that already has one is refused (ValueError), nothing registered."""

    def register(fn):
        taken = {t: CONVERTERS[t] for t in types if t in CONVERTERS}
        if taken:
            t, other = next(iter(taken.items()))
            raise ValueError(f"Caffe layer type {t!r} already has a converter ({other.__module__}.{other.__qualname__}); "
                             f"{fn.__module__}.{fn.__qualname__} would replace it")
        if len(set(types)) != len(types):
            raise ValueError(f"{fn.__qualname__} lists a Caffe layer type twice: {types}")
        for t in types:
            CONVERTERS[t] = fn
        return fn

    return register
