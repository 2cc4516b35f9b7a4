"""Hugging Face folders fed the data users have, prepared the way the folder says: a BERT folder
with its WordPiece tokenizer and a text file, a wav2vec2 folder with its feature extractor and
clips at several rates and channel counts, an image model whose ViTImageProcessor normalizes. All
through the CLI as typed; the written folder is re-read with from_pretrained, the batch rebuilt
from the written folder's own processor (its hash must be the one the log records) and every
conv / linear output measured there."""

from __future__ import annotations

import hashlib
import inspect
import json
from math import gcd

import numpy as np
import pytest
import torch

from conftest import invoke

transformers = pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

WORDS = "the cat sat on mat a dog ran in park and bird flew over tree".split()
TEXTS = ["the cat sat on the mat", "", "the dog ran in the park and the bird flew over the tree and the cat sat",
         "a dog", "birds flew over the park trees"]


def batch_hash(arrays) -> str:
    """The log's ``batch.sha256``: dtype, shape and bytes of each array as fed, in input order."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.dtype.str}{tuple(a.shape)}".encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def layer_variances(model, *args, **kwargs) -> dict[str, float]:
    """Each conv / linear module's output variance on one forward pass, by hooks."""
    out = {}

    def hook_for(name):
        def hook(module, inputs, output):
            out.setdefault(name, float(output.double().var(unbiased=False)))
        return hook

    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            module.register_forward_hook(hook_for(name))
    with torch.no_grad():
        model.eval()(*args, **kwargs)
    return out


def wordpiece_tokenizer(vocab_file):
    """A BERT WordPiece tokenizer from a vocab.txt (transformers 5 names the argument ``vocab``)."""
    params = inspect.signature(transformers.BertTokenizerFast.__init__).parameters
    return transformers.BertTokenizerFast(**{("vocab_file" if "vocab_file" in params else "vocab"): str(vocab_file)})


def _log(path):
    return json.loads(path.read_text())


@pytest.mark.slow
def test_bert_folder_with_its_wordpiece_tokenizer_and_a_text_file(tmp_path):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ed"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=24)
    torch.manual_seed(0)
    bert = tmp_path / "bert"
    transformers.BertModel(config).save_pretrained(bert)
    wordpiece_tokenizer(tmp_path / "vocab.txt").save_pretrained(bert)
    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS) + "\n")

    proc = invoke(bert, "--data", tmp_path / "corpus.txt", "--log", tmp_path / "log.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = _log(tmp_path / "log.json")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "bert.lsuv", local_files_only=True)
    assert log["batch"]["processor"] == {"class": type(tokenizer).__name__, "source": str(bert)}
    assert "tokenized by" in log["data"] and type(tokenizer).__name__ in log["data"]
    assert [i["name"] for i in log["batch"]["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]

    texts = [t for t in TEXTS if t]  # a blank line is no text
    encoded = tokenizer(texts, padding="longest", truncation=True, max_length=24, return_tensors="np")
    arrays = [encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")]
    assert encoded["attention_mask"].min() == 0 and (encoded["input_ids"] > 4).any()  # padded; real words, not [UNK]
    assert log["batch"]["sha256"] == batch_hash(arrays)
    model = transformers.BertModel.from_pretrained(tmp_path / "bert.lsuv", local_files_only=True)
    names = ("input_ids", "attention_mask", "token_type_ids")
    variances = layer_variances(model, **{k: torch.from_numpy(v) for k, v in zip(names, arrays)})
    assert len(variances) == 13 and all(abs(v - 1) < 0.021 for v in variances.values()), variances

    proc = invoke(bert, "--data", tmp_path / "corpus.txt", "--max-length", "8", "-o", tmp_path / "short",
                  "--log", tmp_path / "short.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert _log(tmp_path / "short.json")["batch"]["inputs"][0]["shape"] == [4, 8]  # truncated and padded to 8
    proc = invoke(bert, "--data", tmp_path / "corpus.txt", "--max-length", "64", "-o", tmp_path / "long")
    assert proc.returncode == 1 and "--max-length 64 is more than the model's 24 positions" in proc.stderr


def _tone(rng, rate, seconds, channels):
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    return np.stack([x, 0.5 * x], 1) if channels == 2 else x


def test_wav2vec2_folder_with_clips_at_three_rates_mono_and_stereo(tmp_path):
    from scipy.signal import resample_poly

    config = transformers.Wav2Vec2Config(
        vocab_size=12, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="group")
    torch.manual_seed(0)
    folder = tmp_path / "w2v"
    transformers.Wav2Vec2Model(config).save_pretrained(folder)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(folder)
    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(0)
    soundfile.write(clips / "a_8k_mono.wav", _tone(rng, 8000, 0.3, 1), 8000)
    soundfile.write(clips / "b_16k_mono.flac", _tone(rng, 16000, 0.5, 1), 16000)
    soundfile.write(clips / "c_44k_stereo.wav", _tone(rng, 44100, 0.4, 2), 44100)
    soundfile.write(clips / "d_16k_stereo.ogg", _tone(rng, 16000, 0.2, 2), 16000)

    proc = invoke(folder, "--data", clips, "--log", tmp_path / "log.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = _log(tmp_path / "log.json")
    assert log["batch"]["processor"] == {"class": "Wav2Vec2FeatureExtractor", "source": str(folder)}
    (values,) = log["batch"]["inputs"]
    assert values["name"] == "input_values" and values["shape"] == [4, 8000]  # the longest clip: 0.5 s at 16 kHz
    assert values["var"] == pytest.approx(1.0, abs=1e-3)  # the extractor's own normalization

    # the documented recipe, by hand: mono, resampled to the extractor's rate, through the written folder's extractor
    waves = []
    for path in sorted(clips.iterdir()):
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        mono = data.mean(axis=1, dtype=np.float64)
        step = gcd(rate, 16000)
        waves.append((resample_poly(mono, 16000 // step, rate // step) if rate != 16000 else mono).astype(np.float32))
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path / "w2v.lsuv", local_files_only=True)
    batch = extractor(waves, sampling_rate=16000, padding="max_length", max_length=8000, return_tensors="np")
    assert log["batch"]["sha256"] == batch_hash([batch["input_values"]])
    model = transformers.Wav2Vec2Model.from_pretrained(tmp_path / "w2v.lsuv", local_files_only=True)
    variances = layer_variances(model, torch.from_numpy(batch["input_values"]))
    # The layers that read the audio (feature encoder convs, projection) are at unit variance in the written
    # folder. The weight-normed positional conv and what follows it are the plug-in's known gap with weight
    # norm (issue 24: the effective weight is not the one written), not the data's, so they are left out here.
    weight_normed = {n for n, m in model.named_modules() if hasattr(m, "weight_g") or hasattr(m, "parametrizations")}
    assert weight_normed == {"encoder.pos_conv_embed.conv"}
    first = {n: v for n, v in variances.items() if n.startswith(("feature_extractor.", "feature_projection."))}
    assert len(first) == 3 and all(abs(v - 1) < 0.021 for v in first.values()), first

    proc = invoke(folder, "--data", clips, "--sample-rate", "8000", "-o", tmp_path / "other")
    assert proc.returncode == 1 and "--sample-rate 8000: the model's feature extractor takes 16000 Hz" in proc.stderr


def _image_model(kind: str):
    if kind == "vit":  # transformers 5 renames its modules; the folder keeps the checkpoint's keys
        config = transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=32, image_size=16, patch_size=4)
        return transformers.ViTModel(config)
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    return transformers.ResNetModel(config)


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_image_folder_prepared_by_the_models_vit_image_processor(tmp_path, kind):
    from PIL import Image

    mean, std = [0.2, 0.4, 0.6], [0.1, 0.2, 0.3]
    folder = tmp_path / kind
    torch.manual_seed(0)
    model = _image_model(kind)
    model.save_pretrained(folder)
    model_class = type(model)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=mean, image_std=std).save_pretrained(folder)
    images = tmp_path / "images"
    images.mkdir()
    colors = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (51, 102, 153), (200, 200, 30), (30, 30, 30)]
    rng = np.random.default_rng(0)
    for k, color in enumerate(colors):  # odd sizes: the processor resizes each to 16 x 16; noise that never clips
        noise = rng.integers(-8, 9, (20 + 3 * k, 30, 3))
        Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(images / f"{k}.png")

    proc = invoke(folder, "--data", images, "--log", tmp_path / "log.json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    log = _log(tmp_path / "log.json")
    assert log["batch"]["processor"] == {"class": "ViTImageProcessor", "source": str(folder)}
    (pixels,) = log["batch"]["inputs"]
    assert pixels["shape"] == [6, 3, 16, 16]
    expected = [(np.mean([c[ch] for c in colors]) / 255 - mean[ch]) / std[ch] for ch in range(3)]
    assert pixels["channel_mean"] == pytest.approx(expected, abs=0.02)  # the processor's mean / std applied
    assert not any("unnormalized" in line for line in proc.stderr.splitlines())

    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path / f"{kind}.lsuv", local_files_only=True)
    batch = np.concatenate([processor(images=[Image.open(p).convert("RGB")], return_tensors="np")["pixel_values"]
                            for p in sorted(images.iterdir())])
    assert log["batch"]["sha256"] == batch_hash([batch])
    model = model_class.from_pretrained(tmp_path / f"{kind}.lsuv", local_files_only=True)
    variances = layer_variances(model, torch.from_numpy(batch))
    assert len(variances) >= 5 and all(abs(v - 1) < 0.021 for v in variances.values()), variances

    proc = invoke(folder, "--data", images, "--mean", "0.5", "-o", tmp_path / "other")
    assert proc.returncode == 1 and "--mean applies to models without an image processor" in proc.stderr
