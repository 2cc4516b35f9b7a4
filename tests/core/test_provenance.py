"""Provenance: what the log (every format) and metadata-carrying files record about a run."""

from __future__ import annotations

import numpy as np

from lsuv_convert.data import Batch
from lsuv_convert.pipeline import ConvertOptions, batch_sha256, provenance
from lsuv_convert.safetensors_io import provenance_of, with_provenance


def test_batch_hash_covers_values_dtype_and_shape():
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    h = batch_sha256(Batch([a], "", []))
    assert h == batch_sha256(Batch([a.copy()], "", [])) and len(h) == 64
    assert h != batch_sha256(Batch([a.reshape(4, 3, 2)], "", []))  # same bytes, other shape
    assert h != batch_sha256(Batch([a.astype(np.float64)], "", []))
    b = a.copy()
    b[1, 2, 3] += 1
    assert h != batch_sha256(Batch([b], "", []))
    assert batch_sha256(Batch([a[:, ::2]], "", [])) == batch_sha256(Batch([np.ascontiguousarray(a[:, ::2])], "", []))


def test_provenance_round_trips_through_safetensors_metadata():
    record = provenance(ConvertOptions(), Batch([np.ones((2, 2), np.float32)], "", []))
    assert record["tool"] == "lsuv-convert" and record["seed"] == 0 and record["settings"]["max_iter"] == 20
    metadata = with_provenance({"format": "pt", "lsuv_convert.seed": "41"}, record)
    assert all(isinstance(v, str) for v in metadata.values()) and metadata["format"] == "pt"
    assert provenance_of(metadata) == record
