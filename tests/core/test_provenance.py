"""Provenance: what the log (every format) and metadata-carrying files record about a run."""

from __future__ import annotations

import numpy as np

from lsuv_convert.batch.load import Batch
from lsuv_convert.command.convert import ConvertOptions, provenance
from lsuv_convert.formats.shared.safetensors_io import provenance_of, with_provenance


def test_batch_hash_covers_values_dtype_and_shape():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    h = Batch([a], "", []).sha256
    assert h == Batch([a.copy()], "", []).sha256 and len(h) == 64
    assert h != Batch([a.reshape(4, 3, 2)], "", []).sha256  # same bytes, other shape
    assert h != Batch([a.astype(np.float64)], "", []).sha256
    b = a.copy()
    b[1, 2, 3] += 1
    assert h != Batch([b], "", []).sha256
    assert Batch([a[:, ::2]], "", []).sha256 == Batch([np.ascontiguousarray(a[:, ::2])], "", []).sha256


def test_provenance_round_trips_through_safetensors_metadata():
    record = provenance(ConvertOptions(), Batch([np.ones((2, 2), np.float32)], "", []))
    assert record["tool"] == "lsuv-convert" and record["seed"] == 0 and record["settings"]["max_iter"] == 20
    metadata = with_provenance({"format": "pt", "lsuv_convert.seed": "41"}, record)
    assert all(isinstance(v, str) for v in metadata.values()) and metadata["format"] == "pt"
    assert provenance_of(metadata) == record
