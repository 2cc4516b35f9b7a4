"""Formats without a processor (ONNX here) fed the data users have, through the CLI as typed:
a sample of several ``.npy`` parts given as a quoted glob (and capped with ``--samples``), text
through ``--tokenizer``, raw audio through ``--sample-rate``; the written model re-read by
onnxruntime and its layers measured on the same sample. The up-to-date record hashes every part."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import invoke
from onnx_helpers import eligible_layers, export_module, feeds, ort_layer_variances


class SmallConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _onnx(module, example, path, name="x", axes=(0,)):
    """``module`` exported to ONNX with input ``name`` free along ``axes`` (the batch, ...)."""
    torch.manual_seed(0)
    return export_module(module, example, path, "ts17", input_names=[name],
                         dynamic_axes={name: {axis: f"d{axis}" for axis in axes}})


def _variances(model_path, batch):
    model = onnx.load(str(model_path))
    return ort_layer_variances(model, feeds(model, batch), list(eligible_layers(model)))


@pytest.fixture
def parts(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "parts"
    folder.mkdir()
    arrays = []
    for k, n in enumerate((3, 4, 5)):
        a = (rng.standard_normal((n, 3, 8, 8)) * (k + 1) + k).astype(np.float32)  # parts unlike each other
        np.save(folder / f"p{k}.npy", a)
        arrays.append(a)
    model = _onnx(SmallConvNet(), torch.zeros(2, 3, 8, 8), tmp_path / "net.onnx")
    return tmp_path, model, arrays


def test_a_quoted_glob_of_parts_is_one_sample_and_the_written_model_is_unit_variance_on_it(parts):
    work, model, arrays = parts
    proc = invoke(model, "--data", str(work / "parts" / "*.npy"), "--log", work / "log.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = json.loads((work / "log.json").read_text())
    sample = np.concatenate(arrays)
    assert log["batch"]["samples"] == 12 and log["batch"]["files"] == 3
    assert log["batch"]["inputs"][0]["var"] == pytest.approx(float(sample.astype(np.float64).var()))
    variances = _variances(work / "net.lsuv.onnx", sample)
    assert len(variances) == 3 and all(abs(v - 1) < 0.021 for v in variances.values()), variances
    # the sample decides: the same model fitted to the first part alone is not at unit variance on the whole
    proc = invoke(model, "--data", work / "parts" / "p0.npy", "-o", work / "first.onnx", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert any(abs(v - 1) > 0.05 for v in _variances(work / "first.onnx", sample).values())


def test_samples_caps_the_sample(parts):
    work, model, arrays = parts
    proc = invoke(model, "--data", str(work / "parts" / "*.npy"), "--samples", "5", "--log", work / "log.json",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = json.loads((work / "log.json").read_text())
    assert log["batch"]["samples"] == 5 and log["batch"]["files"] == 2 and "5 samples from 2 file(s)" in log["data"]
    variances = _variances(work / "net.lsuv.onnx", np.concatenate(arrays)[:5])
    assert all(abs(v - 1) < 0.021 for v in variances.values()), variances


def test_the_record_hashes_every_part(parts):
    work, model, arrays = parts
    glob = str(work / "parts" / "*.npy")
    assert invoke(model, "--data", glob, "--device", "cpu").returncode == 0
    again = invoke(model, "--data", glob, "--device", "cpu")
    assert again.returncode == 0 and "up to date" in again.stderr.lower()
    np.save(work / "parts" / "p1.npy", arrays[1] * 2)  # one part changed
    changed = invoke(model, "--data", glob, "--device", "cpu")
    assert changed.returncode == 0 and "up to date" not in changed.stderr.lower()
    np.save(work / "parts" / "p3.npy", arrays[0])  # one part more
    grown = invoke(model, "--data", glob, "--device", "cpu")
    assert grown.returncode == 0 and "up to date" not in grown.stderr.lower()


def test_a_glob_the_shell_expanded_is_refused_before_any_work(parts):
    work, model, _ = parts
    parts_ = sorted((work / "parts").glob("*.npy"))
    proc = invoke(model, "--data", *parts_)  # what `--data parts/*.npy` becomes without quotes
    assert proc.returncode == 2 and f"{parts_[1]} is data, not a model" in proc.stderr and "quoted" in proc.stderr
    assert not (work / "net.lsuv.onnx").exists()


def test_the_budget_check_names_the_sample_before_reading(parts, monkeypatch):
    work, model, _ = parts
    monkeypatch.setenv("LSUV_CONVERT_MEMORY_LIMIT", "10000")  # the sample needs 18 KiB
    proc = invoke(model, "--data", str(work / "parts" / "*.npy"), "--device", "cpu")
    assert proc.returncode == 1
    assert "the sample of 12 rows from 3 file(s) (shape (12, 3, 8, 8))" in proc.stderr and "--samples N" in proc.stderr
    assert not (work / "net.lsuv.onnx").exists()


class TinyTextNet(torch.nn.Module):
    def __init__(self, vocab=30):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 16)
        self.fc1 = torch.nn.Linear(16, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, input_ids):
        return self.fc2(torch.tanh(self.fc1(self.embed(input_ids)))).mean(1)


def test_text_for_an_onnx_model_needs_tokenizer_and_is_tokenized_by_it(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away"]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(
        tmp_path / "tok")
    model = _onnx(TinyTextNet(), torch.zeros(2, 6, dtype=torch.int64), tmp_path / "text.onnx", "input_ids", (0, 1))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran far away\nthe cat ran\n")

    proc = invoke(model, "--data", corpus)
    assert proc.returncode == 1 and "--tokenizer" in proc.stderr and str(corpus) in proc.stderr
    proc = invoke(model, "--data", corpus, "--tokenizer", tmp_path / "tok", "--log", tmp_path / "log.json",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["batch"]["processor"]["source"] == str(tmp_path / "tok")
    ids = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok", local_files_only=True)(
        corpus.read_text().splitlines(), padding="longest", return_tensors="np")["input_ids"]
    assert log["batch"]["inputs"][0]["shape"] == list(ids.shape) == [3, 6]
    variances = _variances(tmp_path / "text.lsuv.onnx", ids)
    assert len(variances) == 2 and all(abs(v - 1) < 0.021 for v in variances.values()), variances


class TinyAudioNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv1d(1, 8, 16, stride=4)
        self.c2 = torch.nn.Conv1d(8, 8, 8, stride=4)

    def forward(self, audio):
        return self.c2(torch.relu(self.c1(audio.unsqueeze(1))))


def test_raw_audio_for_an_onnx_model_needs_sample_rate(tmp_path):
    soundfile = pytest.importorskip("soundfile")
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    for k, (rate, seconds, ext) in enumerate([(8000, 0.2, "wav"), (22050, 0.1, "mp3"), (44100, 0.15, "flac")]):
        data = rng.uniform(-0.5, 0.5, (int(rate * seconds), 2 if k == 2 else 1))
        soundfile.write(tmp_path / "clips" / f"{k}.{ext}", data, rate)
    model = _onnx(TinyAudioNet(), torch.zeros(2, 1600), tmp_path / "audio.onnx", "audio", (0, 1))
    proc = invoke(model, "--data", tmp_path / "clips")
    assert proc.returncode == 1 and "needs --sample-rate" in proc.stderr
    proc = invoke(model, "--data", tmp_path / "clips", "--sample-rate", "16000", "--log", tmp_path / "log.json",
                  "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    (audio,) = json.loads((tmp_path / "log.json").read_text())["batch"]["inputs"]
    assert audio["shape"] == [3, 3200]  # the longest clip (0.2 s) at 16 kHz
