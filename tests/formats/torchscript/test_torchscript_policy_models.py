"""Real models that only compute pass the operator policy and convert: torchvision FCN-ResNet50,
DeepLabV3 and LRASPP (``aten::_upsample_nearest_exact1d``), a transformers wav2vec2 trace
(``aten::_weight_norm``), a silero-VAD-style ``torch.set_grad_enabled`` model; SSDlite
(``aten::unique_dim``, ``torchvision::nms``) passes the code and pickle checks. Built with
``weights=None, weights_backbone=None`` (nothing downloaded), converted by the CLI, the output
re-read with ``torch.jit.load``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from conftest import invoke

pytestmark = pytest.mark.slow  # scripting and converting real architectures: tens of seconds


class GradModeNet(nn.Module):
    """Like silero VAD: the scripted forward switches autograd off itself."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 8, 5, padding=2)
        self.fc = nn.Linear(8, 1)

    def forward(self, x):
        torch.set_grad_enabled(False)
        h = torch.relu(self.conv(x))
        return torch.sigmoid(self.fc(h.mean(dim=2)))


def _segmentation(name):
    import torchvision

    builder = getattr(torchvision.models.segmentation, name)
    return torch.jit.script(builder(weights=None, weights_backbone=None, num_classes=3).eval()), (2, 3, 32, 32)


def _wav2vec2():
    transformers = pytest.importorskip("transformers")
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
                                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, torchscript=True)
    model = transformers.Wav2Vec2Model(config).eval()
    return torch.jit.trace(model, torch.randn(2, 400), strict=False), (2, 400)


CASES = {
    "fcn_resnet50": (lambda: _segmentation("fcn_resnet50"), "_upsample"),
    "deeplabv3_mobilenet_v3_large": (lambda: _segmentation("deeplabv3_mobilenet_v3_large"), "_upsample"),
    "lraspp_mobilenet_v3_large": (lambda: _segmentation("lraspp_mobilenet_v3_large"), "_upsample_nearest_exact1d"),
    "wav2vec2": (_wav2vec2, "_weight_norm"),
    "set_grad_enabled": (lambda: (torch.jit.script(GradModeNet().eval()), (4, 1, 64)), "set_grad_enabled"),
}


def _code(path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return "\n".join(zf.read(n).decode() for n in zf.namelist() if n.endswith(".py"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_compute_only_models_convert_and_reload(tmp_path, name):
    make, op = CASES[name]
    torch.manual_seed(0)
    module, shape = make()
    model = tmp_path / f"{name}.pt"
    torch.jit.save(module, str(model))
    assert op in _code(model)  # the operator the old hand list refused is really there
    batch = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(tmp_path / "x.npy", batch)
    out, log = tmp_path / "out.pt", tmp_path / "log.json"
    proc = invoke(model, "--data", tmp_path / "x.npy", "-o", out, "--log", log, "--allow-unconverged")
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(log.read_text())["layers"]
    assert layers and sum(layer["converged"] for layer in layers) >= len(layers) // 2
    reloaded = torch.jit.load(str(out))
    before = dict(torch.jit.load(str(model)).named_parameters())
    changed = [k for k, v in reloaded.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) >= len(layers)
    with torch.no_grad():
        result = reloaded(torch.from_numpy(batch))
    first = result if isinstance(result, torch.Tensor) else next(iter(result.values() if isinstance(result, dict)
                                                                      else result))
    assert torch.isfinite(first).all()


def test_ssdlite_passes_the_code_and_pickle_checks(tmp_path):
    import torchvision

    from lsuv_convert.formats.torchscript.archive import inspect_archive

    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                       num_classes=3).eval()
    path = tmp_path / "ssdlite.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    code = _code(path)
    assert "unique" in code and "torchvision.nms" in code
    info = inspect_archive(path, check_code=True)
    assert info.uses_torchvision_ops
