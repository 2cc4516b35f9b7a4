"""Helpers for the checkpoint formats' tests (state_dict, .pt2, Hugging Face folders).

``tiny_transformer`` is also an ``--arch checkpoint_helpers:tiny_transformer`` factory. The
``fresh_*`` functions re-read written files in a NEW Python process with the library's own
loader (torch.load(weights_only=True), safetensors, torch.export.load, transformers'
from_pretrained) and measure every conv / linear output there, independently of lsuv_convert.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

TESTS = Path(__file__).resolve().parent


class TinyTransformer(nn.Module):
    """Embedding-free encoder over float features: (seq, batch, 16) -> (batch, 4)."""

    def __init__(self, d_model: int = 16, layers: int = 2):
        super().__init__()
        self.inp = nn.Linear(8, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=False)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 4)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x)).mean(0))


def tiny_transformer() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer()


# A script run in a fresh interpreter: loads each written file with its library's loader,
# hooks every conv / linear there, and prints {"file": {"layer": variance}} plus what the file holds.
_FRESH = r'''
import json, sys
import numpy as np
import torch

def stats_by_hooks(model, args):
    out = {}
    def hook_for(name):
        def hook(m, i, o):
            if name not in out and isinstance(o, torch.Tensor):
                out[name] = float(o.double().var(unbiased=False))
        return hook
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            m.register_forward_hook(hook_for(name))
    model.eval()
    with torch.no_grad():
        model(*args)
    return out

def describe(obj):
    """Structure, keys, dtypes and non-tensor values of a checkpoint object."""
    if isinstance(obj, torch.Tensor):
        return ["tensor", str(obj.dtype), list(obj.shape)]
    if isinstance(obj, dict):
        return {str(k): describe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [type(obj).__name__] + [describe(v) for v in obj]
    return repr(obj)

results = {}
for job in json.loads(sys.argv[1]):
    kind, path = job["kind"], job["path"]
    batch = [torch.from_numpy(np.load(p)) for p in job["batch"]]
    entry = {}
    if kind in ("torch", "safetensors"):
        if kind == "torch":
            obj = torch.load(path, weights_only=True, map_location="cpu")
        else:
            from safetensors.torch import load_file
            from safetensors import safe_open
            obj = load_file(path)
            with safe_open(path, "pt") as fh:
                entry["metadata"] = fh.metadata()
        entry["structure"] = describe(obj)
        sd = obj
        for key in job.get("where", []):
            sd = sd[key]
        prefix = job.get("prefix", "")
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        if job["arch"].startswith("torchvision:"):
            import torchvision
            model = torchvision.models.get_model(job["arch"].split(":", 1)[1], weights=None)
        else:
            sys.path.insert(0, job["tests"])
            import checkpoint_helpers
            model = checkpoint_helpers.tiny_transformer()
        model.load_state_dict(sd, strict=True)
        entry["vars"] = stats_by_hooks(model, batch)
    elif kind == "pt2":
        extra = {"lsuv_convert.json": "", **{k: "" for k in job.get("extra", [])}}
        ep = torch.export.load(path, extra_files=extra)
        entry["extra"] = extra
        entry["state_dict"] = {k: [str(v.dtype), list(v.shape)] for k, v in ep.state_dict.items()}
        gm = ep.module()
        layers = {}
        class Recorder(torch.fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                name = getattr(n.target, "__name__", str(n.target))
                if n.op == "call_function" and name.split(".")[0] in ("conv2d", "linear", "conv1d", "conv3d"):
                    w = n.args[1]
                    if w.op == "get_attr" and w.target not in layers:
                        layers[w.target] = float(out.double().var(unbiased=False))
                return out
        with torch.no_grad():
            Recorder(gm).run(*batch)
        entry["vars"] = layers
    elif kind == "hf":
        import os, transformers
        os.environ["HF_HUB_OFFLINE"] = "1"
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        cls = getattr(transformers, config.architectures[0])
        model = cls.from_pretrained(path, local_files_only=True)
        entry["tied"] = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                         and m.weight is model.get_input_embeddings().weight]
        entry["vars"] = stats_by_hooks(model, [b.long() for b in batch])
    results[path] = entry
print(json.dumps(results))
'''


def fresh_measure(jobs: list[dict]) -> dict:
    """Run the checks of ``jobs`` in a new interpreter; {path: {"vars": {...}, ...}}."""
    for job in jobs:
        job.setdefault("tests", str(TESTS))
        job["path"] = str(job["path"])
        job["batch"] = [str(b) for b in job["batch"]]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(TESTS))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_FRESH), json.dumps(jobs)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_unit_variances(vars_by_layer: dict, tol: float = 0.02, least: int = 1) -> None:
    assert len(vars_by_layer) >= least, vars_by_layer
    bad = {k: v for k, v in vars_by_layer.items() if abs(v - 1.0) >= tol + 1e-3}
    assert not bad, bad
