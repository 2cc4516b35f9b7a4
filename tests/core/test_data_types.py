"""The batch as the model takes it: integer ids and bool masks keep their type, float data for
an integer input is refused, synthetic ids stay below the embedding size; batch hash and stats."""

from __future__ import annotations

import numpy as np
import pytest

from lsuv_convert.batch.load import load_batch, synthetic
from lsuv_convert.errors import DataError
from lsuv_convert.formats.model_graph import InputSpec

IDS = InputSpec("input_ids", (None, 12), dtype="int64", high=30)
MASK = InputSpec("attention_mask", (None, 12), dtype="bool")
IMAGE = InputSpec("x", (None, 3, 8, 8))


def test_npz_inputs_by_name_keep_their_types(tmp_path):
    ids = np.random.default_rng(0).integers(0, 30, (4, 12)).astype(np.int32)
    mask = np.ones((4, 12), dtype=np.int64)
    path = tmp_path / "batch.npz"
    np.savez(path, attention_mask=mask, input_ids=ids)
    batch = load_batch(path, [IDS, MASK])
    assert batch.arrays[0].dtype == np.int64 and np.array_equal(batch.arrays[0], ids)
    assert batch.arrays[1].dtype == np.bool_ and batch.arrays[1].all()
    assert batch.names == ["input_ids", "attention_mask"]
    stats = batch.stats()
    assert stats[0]["name"] == "input_ids" and stats[0]["mean"] == pytest.approx(ids.mean())
    assert stats[0]["var"] == pytest.approx(ids.var())


def test_float_data_for_an_integer_input_is_refused(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.zeros((4, 12), dtype=np.float32))
    with pytest.raises(DataError, match="input_ids"):
        load_batch(path, [IDS])


def test_ids_beyond_the_vocabulary_are_refused(tmp_path):
    path = tmp_path / "ids.npy"
    np.save(path, np.full((4, 12), 30, dtype=np.int64))
    with pytest.raises(DataError, match=r"\[0, 30\)"):
        load_batch(path, [IDS])


def test_integer_data_for_a_float_input_is_cast(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(4 * 3 * 64, dtype=np.int16).reshape(4, 3, 8, 8) % 7 - 3)
    assert load_batch(path, [IMAGE]).arrays[0].dtype == np.float32
    np.save(path, np.full((4, 3, 8, 8), 255, dtype=np.uint8) - np.arange(4, dtype=np.uint8)[:, None, None, None])
    image = load_batch(path, [IMAGE]).arrays[0]
    assert image.dtype == np.float32 and image.max() == pytest.approx(1.0)


def test_synthetic_ids_and_masks():
    ids, mask, x = synthetic([IDS, MASK, IMAGE], seed=0)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 30 and len(np.unique(ids)) > 10
    assert mask.dtype == np.bool_ and mask.all()
    assert x.dtype == np.float32
    unknown = synthetic([InputSpec("position", (2, 5), dtype="int64")], seed=0)[0]
    assert unknown.min() >= 0 and unknown.max() < 2
    int_mask = synthetic([InputSpec("attention_mask", (2, 5), dtype="int64")], seed=0)[0]
    assert int_mask.dtype == np.int64 and (int_mask == 1).all()


def test_batch_hash_names_the_bytes(tmp_path):
    a = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    path = tmp_path / "a.npy"
    np.save(path, a)
    first = load_batch(path, [IMAGE]).sha256
    assert first == load_batch(path, [IMAGE]).sha256 and len(first) == 64
    a[0, 0, 0, 0] += 1
    np.save(path, a)
    assert load_batch(path, [IMAGE]).sha256 != first
    assert load_batch(None, [IMAGE], seed=0).to_log()["sha256"] == load_batch(None, [IMAGE], seed=0).sha256


def test_unnormalized_images_warn_once(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "raw.npy"
    np.save(path, (rng.random((4, 3, 8, 8)) * 255).astype(np.float32))
    warnings = load_batch(path, [IMAGE]).warnings
    assert len(warnings) == 1 and "--mean/--std" in warnings[0] and "0-255" in warnings[0]
    np.save(path, rng.random((4, 3, 8, 8)).astype(np.float32))  # ToTensor() without Normalize
    assert "variance" in load_batch(path, [IMAGE]).warnings[0]
    np.save(path, rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
    assert load_batch(path, [IMAGE]).warnings == []
    from lsuv_convert.batch.load import ImageOptions

    np.save(path, (rng.random((4, 3, 8, 8)) * 255).astype(np.float32))
    given = load_batch(path, [IMAGE], image=ImageOptions(mean=(127.0,), std=(70.0,))).warnings
    assert given == []
