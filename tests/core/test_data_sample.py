"""The data a batch is made of, as users have it: several array files (a glob) joined along the
batch axis, ``--samples``, text files, audio clips and images; every refusal names the file and
what is wrong. The end-to-end runs (models written back and re-read) are in tests/cli/test_data_kinds.py
and tests/formats/huggingface/test_huggingface_data.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lsuv_convert.batch.load import DataOptions, ImageOptions, load_batch
from lsuv_convert.errors import DataError
from lsuv_convert.formats.model_graph import InputSpec

IMAGE = InputSpec("x", (None, 3, 4, 4))
IDS = InputSpec("input_ids", (None, None), "int64", high=30)
MASK = InputSpec("attention_mask", None, "int64", high=2, optional=True)
AUDIO = InputSpec("audio", (None, None))


def _parts(folder, sizes, seed=0, shape=(3, 4, 4)):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal((n, *shape)).astype(np.float32) for n in sizes]
    for k, a in enumerate(arrays):
        np.save(folder / f"part{k:02d}.npy", a)
    return arrays


def test_a_quoted_glob_joins_every_part_in_sorted_order(tmp_path):
    arrays = _parts(tmp_path / "parts", [3, 4, 5])
    batch = load_batch(DataOptions(sources=(str(tmp_path / "parts" / "*.npy"),)), [IMAGE])
    assert np.array_equal(batch.arrays[0], np.concatenate(arrays))
    assert batch.files == sorted((tmp_path / "parts").glob("*.npy"))
    stats = batch.stats()[0]  # over the whole sample, not one part
    assert stats["shape"] == [12, 3, 4, 4] and stats["var"] == pytest.approx(float(np.concatenate(arrays).var()))


def test_repeated_data_values_keep_their_order_and_a_file_named_twice_is_read_once(tmp_path):
    a, b = _parts(tmp_path / "p", [2, 3])
    first, second = tmp_path / "p" / "part00.npy", tmp_path / "p" / "part01.npy"
    batch = load_batch(DataOptions(sources=(second, first, str(tmp_path / "p" / "*.npy"))), [IMAGE])
    assert np.array_equal(batch.arrays[0], np.concatenate([b, a]))


def test_samples_caps_the_sample_and_reads_only_the_parts_it_needs(tmp_path):
    arrays = _parts(tmp_path / "parts", [3, 4, 5])
    batch = load_batch(DataOptions(sources=(str(tmp_path / "parts" / "*.npy"),), samples=5), [IMAGE])
    assert np.array_equal(batch.arrays[0], np.concatenate(arrays)[:5])
    one = load_batch(DataOptions(sources=(tmp_path / "parts" / "part01.npy",), samples=2), [IMAGE])
    assert np.array_equal(one.arrays[0], arrays[1][:2])


def test_the_budget_names_the_sample_before_reading_it(tmp_path, monkeypatch):
    _parts(tmp_path / "parts", [30, 30, 30], shape=(3, 8, 8))
    monkeypatch.setenv("LSUV_CONVERT_MEMORY_LIMIT", str(60 * 3 * 8 * 8 * 8))  # stored float32 + its copy: 60 rows fit
    data = DataOptions(sources=(str(tmp_path / "parts" / "*.npy"),))
    with pytest.raises(DataError, match=r"sample of 90 rows from 3 file\(s\) \(shape \(90, 3, 8, 8\)\).*--samples N.*60 fit"):
        load_batch(data, [InputSpec("x", (None, 3, 8, 8))])
    batch = load_batch(DataOptions(sources=data.sources, samples=60), [InputSpec("x", (None, 3, 8, 8))])
    assert batch.arrays[0].shape[0] == 60


def test_parts_that_do_not_join_are_named(tmp_path):
    _parts(tmp_path / "parts", [2])
    np.save(tmp_path / "parts" / "part01.npy", np.ones((2, 3, 5, 4), np.float32))
    with pytest.raises(DataError, match=r"part01\.npy: shape \(2, 3, 5, 4\) does not join shape \(2, 3, 4, 4\)"):
        load_batch(DataOptions(sources=(str(tmp_path / "parts" / "*.npy"),)), [IMAGE])


def test_npz_parts_join_per_input_and_must_hold_the_same_arrays(tmp_path):
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 30, (n, 6)) for n in (2, 3)]
    for k, a in enumerate(ids):
        np.savez(tmp_path / f"b{k}.npz", input_ids=a, attention_mask=np.ones_like(a))
    batch = load_batch(DataOptions(sources=(str(tmp_path / "b*.npz"),)), [IDS, MASK])
    assert batch.names == ["input_ids", "attention_mask"]
    assert np.array_equal(batch.arrays[0], np.concatenate(ids)) and batch.arrays[1].shape == (5, 6)
    np.savez(tmp_path / "b2.npz", input_ids=ids[0])
    with pytest.raises(DataError, match=r"b2\.npz: holds no array 'attention_mask'"):
        load_batch(DataOptions(sources=(str(tmp_path / "b*.npz"),)), [IDS, MASK])
    # an optional input left out of every part is simply not fed
    assert load_batch(tmp_path / "b2.npz", [IDS, MASK]).names == ["input_ids"]


@pytest.mark.parametrize("case, message", [
    ("nothing", "no file matches this pattern"),
    ("mixed", "one kind of data"),
    ("csv", "unsupported data file"),
    ("empty_text", "text file is empty"),
    ("blank_text", "holds no text"),
    ("jsonl", 'line 2 has no "text" string field'),
    ("latin1", "not UTF-8"),
    ("no_tokenizer", "--tokenizer"),
    ("text_for_images", "takes float32 values"),
    ("bad_audio", "cannot read audio"),
    ("no_rate", "--sample-rate"),
    ("bad_image", "cannot read image"),
    ("max_length_for_arrays", "--max-length applies to text"),
    ("samples_without_data", "--samples applies to the data given with --data"),
    ("audio_for_ids", "takes int64 token ids"),
    ("mean_for_text", "--mean applies to .npy arrays or .npz archives or images, but the data is text"),
])
def test_every_data_error_names_the_file_and_what_is_wrong(tmp_path, case, message):
    specs = [IMAGE]
    named = tmp_path / "data.txt"
    options = {}
    if case == "nothing":
        named = tmp_path / "parts" / "*.npy"
    elif case == "mixed":
        _parts(tmp_path / "p", [1])
        (tmp_path / "p" / "z.txt").write_text("hello\n")
        named = tmp_path / "p" / "*"
    elif case == "csv":
        named = tmp_path / "data.csv"
        named.write_text("1,2\n")
    elif case == "empty_text":
        named.write_text("")
        specs = [IDS]
    elif case == "blank_text":
        named.write_text("\n   \n\n")
        specs = [IDS]
    elif case == "jsonl":
        named = tmp_path / "data.jsonl"
        named.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
        specs = [IDS]
    elif case == "latin1":
        named.write_bytes("caf\xe9\n".encode("latin-1"))
        specs = [IDS]
    elif case == "no_tokenizer":
        named.write_text("a text\n")
        specs = [IDS]
    elif case == "text_for_images":
        named.write_text("a text\n")
    elif case == "bad_audio":
        named = tmp_path / "clip.wav"
        named.write_bytes(b"RIFF but not really a wave file")
        specs = [AUDIO]
    elif case == "no_rate":
        import soundfile

        named = tmp_path / "clip.wav"
        soundfile.write(named, np.sin(np.arange(800) / 5.0), 8000)
        specs = [AUDIO]
    elif case in ("audio_for_ids", "mean_for_text"):
        import soundfile

        named = tmp_path / ("clip.wav" if case == "audio_for_ids" else "data.txt")
        if case == "audio_for_ids":
            soundfile.write(named, np.sin(np.arange(800) / 5.0), 8000)
            options = {"sample_rate": 8000}
        else:
            named.write_text("a text\n")
            options = {"image": ImageOptions(mean=(0.5,))}
        specs = [IDS]
    elif case == "bad_image":
        (tmp_path / "imgs").mkdir()
        named = tmp_path / "imgs" / "broken.png"
        named.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    elif case == "max_length_for_arrays":
        _parts(tmp_path / "p", [2])
        named = tmp_path / "p" / "part00.npy"
        options = {"max_length": 8}
    elif case == "samples_without_data":
        with pytest.raises(DataError, match=message):
            load_batch(DataOptions(samples=3), [InputSpec("x", (None, 3, 4, 4))])
        return
    with pytest.raises(DataError) as caught:
        load_batch(DataOptions(sources=(str(named),), **options), specs)
    text = str(caught.value)
    assert message in text, text
    assert str(named) in text, text


def test_text_lines_tokenized_by_a_tokenizer_json_with_mask(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "dog"])}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "a.txt").write_text("the cat sat on the mat\n\nthe dog\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "a cat", "label": 1}) + "\n")
    data = DataOptions(sources=(str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")), tokenizer=tmp_path / "tokenizer.json")
    batch = load_batch(data, [IDS, MASK])
    ids, mask = batch.arrays
    assert batch.names == ["input_ids", "attention_mask"] and ids.shape == (3, 6)  # padded to the longest text
    assert ids[1, :2].tolist() == [2, 7] and mask.sum(axis=1).tolist() == [6, 2, 2]  # "a" is unknown: [UNK]
    transformers = pytest.importorskip("transformers")
    assert batch.processor["class"] == transformers.PreTrainedTokenizerFast.__name__
    assert tmp_path / "tokenizer.json" in batch.files
    fixed = load_batch(DataOptions(sources=data.sources, tokenizer=data.tokenizer, max_length=4), [IDS, MASK])
    assert fixed.arrays[0].shape == (3, 4)  # truncated and padded to --max-length
    one = load_batch(DataOptions(sources=data.sources, tokenizer=data.tokenizer, samples=1), [IDS, MASK])
    assert one.arrays[0].shape[0] == 1 and one.files == [tmp_path / "a.txt", tmp_path / "tokenizer.json"]


def test_audio_is_down_mixed_resampled_and_padded_without_a_feature_extractor(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    (tmp_path / "clips").mkdir()
    t = np.arange(int(44100 * 0.4)) / 44100
    tone = 0.4 * np.sin(2 * np.pi * 250 * t)
    soundfile.write(tmp_path / "clips" / "a.wav", np.stack([tone, 0.5 * tone], 1), 44100)  # stereo, 44.1 kHz
    soundfile.write(tmp_path / "clips" / "b.flac", tone[: int(44100 * 0.1)], 44100)
    batch = load_batch(DataOptions(sources=(tmp_path / "clips",), sample_rate=16000), [AUDIO])
    audio = batch.arrays[0]
    assert audio.shape == (2, 6400)  # the longest clip, at 16 kHz
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert np.fft.rfftfreq(6400, 1 / 16000)[spectrum.argmax()] == pytest.approx(250, abs=2.5)
    assert np.abs(audio[0, 500:6000]).max() == pytest.approx(0.3, rel=0.02)  # the mean of the channels
    assert np.all(audio[1, 1700:] == 0)  # the short clip padded with silence
    cropped = load_batch(DataOptions(sources=(tmp_path / "clips",), sample_rate=8000, audio_seconds=0.05), [AUDIO])
    assert cropped.arrays[0].shape == (2, 400)
    declared = load_batch(DataOptions(sources=(tmp_path / "clips" / "a.wav",)), [InputSpec("audio", (None, 1, 4410))])
    assert declared.arrays[0].shape == (1, 1, 4410)  # the model's own length, at the clip's own rate


def test_images_without_a_processor_keep_image_size_mean_and_std(tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for k, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (9, 7), color).save(tmp_path / "imgs" / f"{k}.png")
    image = ImageOptions(size=(4, 4), mean=(0.5,), std=(0.25,))
    batch = load_batch(DataOptions(sources=(tmp_path / "imgs",), image=image), [InputSpec("x", (None, 3, None, None))])
    stats = batch.stats()[0]
    assert stats["shape"] == [3, 3, 4, 4]
    assert stats["channel_mean"] == pytest.approx([(1 / 3 - 0.5) / 0.25] * 3, abs=1e-5)
    assert len(batch.files) == 3 and not batch.warnings


def test_statistics_of_a_large_sample_are_taken_a_slab_at_a_time_and_exact(monkeypatch):
    from lsuv_convert.batch import load

    monkeypatch.setattr(load, "MOMENTS_CHUNK", 500)  # many slabs
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((37, 3, 9, 7)) * np.array([1.0, 2.0, 3.0])[:, None, None] + 5).astype(np.float32)
    (stats,) = load.Batch([a], "", [], ["x"]).stats()
    exact = a.astype(np.float64)
    assert stats["mean"] == pytest.approx(exact.mean(), rel=1e-12) and stats["var"] == pytest.approx(exact.var(), rel=1e-12)
    assert stats["channel_var"] == pytest.approx(exact.var(axis=(0, 2, 3)).tolist(), rel=1e-12)


def test_a_folder_is_its_images_or_clips_else_its_array_parts(tmp_path):
    from PIL import Image

    arrays = _parts(tmp_path / "parts", [2, 3])
    (tmp_path / "parts" / "README.txt").write_text("how these were made\n")  # not data when parts are there
    batch = load_batch(tmp_path / "parts", [IMAGE])
    assert np.array_equal(batch.arrays[0], np.concatenate(arrays))
    (tmp_path / "imgs" / ".cache").mkdir(parents=True)
    Image.new("RGB", (4, 4), (10, 200, 30)).save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (4, 4), (90, 20, 130)).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "imgs" / ".cache" / "c.png").write_bytes(b"hidden: never read")
    (tmp_path / "imgs" / "labels.txt").write_text("cat\ndog\n")
    np.save(tmp_path / "imgs" / "mean.npy", np.zeros(3))
    assert load_batch(tmp_path / "imgs", [IMAGE]).files == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png"]
