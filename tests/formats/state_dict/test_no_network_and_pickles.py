"""Checkpoints and the architectures built for them: every pickle of a torch.save file is read
(opcodes only) before torch.load, other members and legacy files included; library builders are
called with their pretrained arguments off and nothing reaches the network while a model is built,
the user's own factory included (one line naming who tried)."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from archive_helpers import assert_refused, payload_pickle, payload_torch_save, rewrite_zip
from conftest import invoke

ARCH = ("--arch", "torchvision:squeezenet1_1(num_classes=4)", "--input-shape", "2,3,32,32")


@pytest.fixture(scope="module")
def weights() -> bytes:
    import torchvision

    buf = io.BytesIO()
    torch.save(torchvision.models.squeezenet1_1(weights=None, num_classes=4).state_dict(), buf)
    return buf.getvalue()


def test_a_legacy_pickle_checkpoint_is_read_opcode_by_opcode(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pth"
    path.write_bytes(payload_torch_save(marker, legacy=True, w=torch.zeros(2)))
    assert_refused(invoke(path, *ARCH), marker, "io.open", "weights-only")


def test_another_pickle_member_of_a_checkpoint_is_checked(tmp_path, weights):
    marker = tmp_path / "marker"
    root = zipfile.ZipFile(io.BytesIO(weights)).namelist()[0].split("/")[0]
    path = rewrite_zip(weights, tmp_path / "extra.pth", add={f"{root}/notes.pkl": payload_pickle(marker)})
    assert_refused(invoke(path, *ARCH), marker, "notes.pkl", "io.open")


@pytest.mark.parametrize("name, words", [("{root}/../../escape.bin", ("'..'",)),
                                         ("{root}/DATA.PKL", ("without case",))])
def test_checkpoint_member_names_are_checked(tmp_path, weights, name, words):
    root = zipfile.ZipFile(io.BytesIO(weights)).namelist()[0].split("/")[0]
    path = rewrite_zip(weights, tmp_path / "names.pth", add={name.format(root=root): b"\x80\x02N."})
    assert_refused(invoke(path, *ARCH), tmp_path / "never", *words)


def test_a_user_factory_that_downloads_is_refused_in_one_line(tmp_path, weights):
    (tmp_path / "netfactory.py").write_text(
        "import torch, torchvision, urllib.request\n"
        "def build():\n"
        "    try:\n"
        "        urllib.request.urlopen('http://example.com/weights.pth', timeout=1)\n"
        "    except Exception:\n"
        "        pass  # a library that swallows the error and carries on\n"
        "    return torchvision.models.squeezenet1_1(weights=None, num_classes=4)\n")
    (tmp_path / "w.pth").write_bytes(weights)
    proc = invoke(tmp_path / "w.pth", "--arch", "netfactory:build", "--input-shape", "2,3,32,32", cwd=tmp_path)
    line = assert_refused(proc, tmp_path / "never", "--arch netfactory:build tried to download http://example.com/")
    assert "never reaches the network" in line


def test_switching_pretrained_weights_on_is_refused(tmp_path, weights):
    (tmp_path / "w.pth").write_bytes(weights)
    proc = invoke(tmp_path / "w.pth", "--arch", "torchvision:squeezenet1_1(weights='DEFAULT')", "--input-shape",
                  "2,3,32,32")
    assert_refused(proc, tmp_path / "never", "would download")


def test_builder_arguments_come_from_the_signature():
    from lsuv_convert.formats.state_dict.arch import offline_arguments

    def builder(*, weights=None, progress=True, weights_backbone="IMAGENET", pretrained_backbone=True,
                checkpoint_path="x.ckpt", num_classes=10, **kwargs):
        return None

    got = offline_arguments(builder, {"num_classes": 3}, "x", None)
    assert got == {"num_classes": 3, "weights": None, "progress": False, "weights_backbone": None,
                   "pretrained_backbone": False, "checkpoint_path": None}


def test_a_segmentation_builder_makes_no_connection_and_no_cache_folder(tmp_path, monkeypatch):
    """lraspp's builder downloads an ImageNet backbone by default; built here, nothing is fetched."""
    from lsuv_convert.formats.state_dict.arch import build_architecture

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with torch.device("meta"):
        arch = build_architecture("torchvision:lraspp_mobilenet_v3_large", tmp_path / "x.pth")
    assert type(arch.module).__name__ == "LRASPP"
    assert not (tmp_path / "torch_home").exists()


@pytest.mark.slow
def test_every_torchvision_builder_builds_offline(tmp_path, monkeypatch):
    """Every builder of torchvision's registry, called as --arch calls it: no connection attempt
    (one would raise the no-network refusal), no hub cache folder. On the meta device where the
    builder allows it (no memory, no time), else for real."""
    import torchvision

    from lsuv_convert.errors import ModelFormatError
    from lsuv_convert.formats.state_dict.arch import build_architecture

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    tried, built = [], []
    for name in torchvision.models.list_models():
        try:
            try:
                with torch.device("meta"):
                    build_architecture(f"torchvision:{name}", tmp_path / "x.pth")
            except ModelFormatError:
                raise
            except Exception:  # noqa: BLE001 - a builder that copies tensor data (regnet): build it for real
                build_architecture(f"torchvision:{name}", tmp_path / "x.pth")
        except ModelFormatError as exc:
            if "network" in str(exc):
                tried.append(str(exc))
            else:
                raise
        else:
            built.append(name)
    assert not tried, tried
    assert len(built) == len(torchvision.models.list_models())
    assert not (tmp_path / "torch_home").exists()


def test_deep_json_in_safetensors_metadata_is_kept_as_text(tmp_path, weights):
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in torch.load(io.BytesIO(weights), weights_only=True).items()}
    deep = "[" * 100_000 + "]" * 100_000
    save_file(tensors, str(tmp_path / "w.safetensors"), metadata={"lsuv_convert.seed": deep})
    proc = invoke("inspect", tmp_path / "w.safetensors", *ARCH)
    assert proc.returncode == 0, proc.stderr
