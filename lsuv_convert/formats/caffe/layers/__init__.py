"""Caffe layer converters, one module per family, all registered in :mod:`.registry`
(``CONVERTERS``: layer type -> converter), which refuses a second converter for a type.

- :mod:`.conv`: the layers LSUV initializes (Convolution, Deconvolution, depthwise types, InnerProduct)
- :mod:`.pooling`, :mod:`.normalization`, :mod:`.activations`, :mod:`.shape`, :mod:`.arithmetic`
- :mod:`.resize` (Upsample, Interp), :mod:`.parameters` (Embed, Parameter), :mod:`.recurrent` (LSTM, RNN)
- :mod:`.common`: the rules several families share (axes, kernel/stride/pad, blob layouts)

Importing this package registers every converter. May import torch, the Caffe plug-in's
``context`` and ``modules``, and each other (families import only ``common`` and ``registry``).
"""

from __future__ import annotations

from . import activations, arithmetic, conv, normalization, parameters, pooling, recurrent, resize, shape  # noqa: F401 - registers the converters
from .registry import CONVERTERS, TAIL_ONLY, converter, unsupported_here

__all__ = ["CONVERTERS", "TAIL_ONLY", "converter", "unsupported_here"]
