"""Tiny transformers models of the architectures people convert (random weights from configs,
nothing downloaded), their batches, and a measurement of a written folder loaded back by
transformers' own ``from_pretrained`` in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent

_TEXT = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)

# name: (model class, config class, config keyword arguments, batch kind)
ARCHITECTURES = {
    "vit": ("ViTModel", "ViTConfig", _VIT, "image"),
    "vit_classifier": ("ViTForImageClassification", "ViTConfig", dict(_VIT, num_labels=5), "image"),
    "deit": ("DeiTModel", "DeiTConfig", _VIT, "image"),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                   mlp_ratio=2, image_size=32, patch_size=8), "image"),
    "swin": ("SwinModel", "SwinConfig", dict(embed_dim=16, depths=[1, 1], num_heads=[2, 2], image_size=32,
                                             patch_size=4, window_size=4), "image"),
    "beit": ("BeitModel", "BeitConfig", _VIT, "image"),
    "wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2), "audio"),
    "bert": ("BertModel", "BertConfig", _TEXT, "text"),
    "gpt2": ("GPT2LMHeadModel", "GPT2Config", dict(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64),
             "text"),
    "t5": ("T5ForConditionalGeneration", "T5Config", dict(vocab_size=96, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                              num_heads=2), "text"),
    "llama": ("LlamaForCausalLM", "LlamaConfig", dict(_TEXT, num_key_value_heads=1), "text"),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", dict(_TEXT, num_key_value_heads=1), "text"),
    "distilbert": ("DistilBertModel", "DistilBertConfig", dict(vocab_size=96, dim=32, n_layers=2, n_heads=2,
                                                                hidden_dim=64, max_position_embeddings=64), "text"),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict(hidden_size=32, num_hidden_layers=2,
                                                                num_attention_heads=2, intermediate_size=64,
                                                                image_size=32, patch_size=8), "image"),
    "resnet": ("ResNetModel", "ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                   layer_type="basic"), "image"),
}


def tiny_model(name: str, seed: int = 0):
    import torch
    import transformers

    model_cls, config_cls, kwargs, _ = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).eval()


def batch(name: str, path: Path) -> Path:
    """The batch of an architecture's kind, saved as ``path`` (.npy)."""
    rng = np.random.default_rng(0)
    kind = ARCHITECTURES[name][3]
    if kind == "image":
        arr = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    elif kind == "audio":
        arr = rng.standard_normal((2, 4000)).astype(np.float32)
    else:
        arr = rng.integers(0, 96, (4, 12)).astype(np.int64)
    np.save(path, arr)
    return path


def measure_folder(path, batch_path) -> dict[str, list[float]]:
    """``{module name: [output variance, or one per q / k / v]}`` of every linear / conv layer of
    the folder as ``from_pretrained`` loads it (local files only), run once on the batch."""
    import torch
    import transformers

    os.environ["HF_HUB_OFFLINE"] = "1"
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    model = getattr(transformers, config.architectures[0]).from_pretrained(path, local_files_only=True).eval()
    x = torch.from_numpy(np.load(batch_path))
    conv1d = transformers.pytorch_utils.Conv1D
    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, conv1d)
    stats, handles = {}, []

    def hook_for(name, parts):
        def hook(module, inputs, output):
            if name in stats or not isinstance(output, torch.Tensor):
                return
            pieces = output.split(output.shape[-1] // parts, dim=-1) if parts > 1 else [output]
            stats[name] = [float(p.double().var(unbiased=False)) for p in pieces]

        return hook

    for name, m in model.named_modules():
        if isinstance(m, layers):
            parts = 3 if isinstance(m, conv1d) and name.endswith("c_attn") else 1  # GPT-2's packed q, k, v
            handles.append(m.register_forward_hook(hook_for(name, parts)))
    kwargs = {}
    if config.is_encoder_decoder:  # the decoder reads the ids shifted right behind its start token
        start = next((t for t in (getattr(config, "decoder_start_token_id", None), getattr(config, "pad_token_id", None))
                      if isinstance(t, int)), 0)
        kwargs["decoder_input_ids"] = torch.cat([torch.full_like(x[:, :1], start), x[:, :-1]], dim=1)
    with torch.no_grad():
        model(x, **kwargs)
    for h in handles:
        h.remove()
    return stats


_FRESH = r'''
import json, sys
import hf_helpers
print(json.dumps({job["path"]: hf_helpers.measure_folder(job["path"], job["batch"]) for job in json.loads(sys.argv[1])}))
'''


def fresh_variances(jobs: list[tuple[Path, Path]]) -> dict[str, dict[str, list[float]]]:
    """:func:`measure_folder` of each (folder, batch), in a new interpreter."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(TESTS))
    arg = json.dumps([{"path": str(folder), "batch": str(b)} for folder, b in jobs])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_FRESH), arg], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
