"""The archive guard on its own: the pickle scan follows torch's weights-only rules (real torch.save
files pass, payloads and the opcodes it doesn't accept are refused, the process's safe globals
count), zip directories are checked before zipfile holds them, and the runtime second line refuses
full unpickles."""

from __future__ import annotations

import io
import logging
import pickle
import zipfile

import pytest
import torch

from archive_helpers import Payload, payload_pickle, payload_torch_save
from lsuv_convert.errors import ModelFormatError
from lsuv_convert.formats.shared import archive_guard as guard


def _saved(obj, **kwargs) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("legacy", [False, True])
def test_real_checkpoints_pass(legacy):
    obj = {"w": torch.randn(3, 2), "p": torch.nn.Parameter(torch.zeros(2)), "h": torch.zeros(2, dtype=torch.bfloat16),
           "meta": [1, 2.5, "x", None, True, (3, 4)], "od": __import__("collections").OrderedDict(a=torch.ones(1))}
    guard.check_torch_save_stream(io.BytesIO(_saved(obj, _use_new_zipfile_serialization=not legacy)), "m", "m.pt")


def test_a_payload_names_its_global(tmp_path):
    with pytest.raises(ModelFormatError, match=r"wants the global io\.open.*--trust-code"):
        guard.check_torch_save_stream(io.BytesIO(payload_torch_save(tmp_path / "marker")), "m", "m.pt")
    assert not (tmp_path / "marker").exists()


@pytest.mark.parametrize("protocol, opcode", [(4, "FRAME"), (0, "pickle opcode")])
def test_opcodes_the_weights_only_unpickler_refuses_are_refused(tmp_path, protocol, opcode):
    with pytest.raises(guard.PickleRefused, match=opcode):
        guard.scan_pickle(payload_pickle(tmp_path / "marker", protocol=protocol))


def test_stack_global_and_calls_on_other_values_are_refused():
    stack_global = b"\x80\x02X\x02\x00\x00\x00ioX\x04\x00\x00\x00open\x93."
    with pytest.raises(guard.PickleRefused, match="STACK_GLOBAL"):
        guard.scan_pickle(stack_global)
    reduce_on_string = b"\x80\x02X\x01\x00\x00\x00a)R."
    with pytest.raises(guard.PickleRefused, match="not an allowed global"):
        guard.scan_pickle(reduce_on_string)
    persistent_other = b"\x80\x02X\x03\x00\x00\x00foo\x85Q."
    with pytest.raises(guard.PickleRefused, match="persistent id"):
        guard.scan_pickle(persistent_other)
    with pytest.raises(guard.PickleRefused, match="STOP"):
        guard.scan_pickle(b"\x80\x02N")


def test_torchscript_pickles_may_name_the_archives_classes_but_not_custom_classes():
    module = b"\x80\x02c__torch__.model\nNet\n)\x81}b."
    guard.scan_pickle(module, torchscript=True)
    with pytest.raises(guard.PickleRefused):
        guard.scan_pickle(module)  # not in a checkpoint
    with pytest.raises(guard.PickleRefused, match="torch.classes"):
        guard.scan_pickle(b"\x80\x02c__torch__.torch.classes.lib\nThing\n)\x81.", torchscript=True)


class Point:
    def __init__(self, x=0):
        self.x = x


def test_the_processs_safe_globals_count():
    data = pickle.dumps(Point(3), protocol=2)
    with pytest.raises(guard.PickleRefused, match="Point"):
        guard.scan_pickle(data)
    with torch.serialization.safe_globals([Point]):
        guard.scan_pickle(data)


def test_a_zip_bomb_and_an_oversized_directory_are_refused(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data/0", b"\0" * (8 << 20))
    with pytest.raises(ModelFormatError, match="zip bomb"):
        guard.open_archive(bomb)
    many = tmp_path / "many.pt"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(8):
            zf.writestr(f"archive/{i}", b"")
    monkeypatch.setattr(guard, "MAX_MEMBERS", 5)
    with pytest.raises(ModelFormatError, match="8 members"):
        guard.open_archive(many)


def test_the_second_line_refuses_full_unpickles(tmp_path):
    marker = tmp_path / "marker"
    data = payload_torch_save(marker)
    with guard.unpickling_refused("a test member"):
        with pytest.raises(guard.UnvettedUnpickle, match="a test member"):
            torch.load(io.BytesIO(data), weights_only=False)
        with pytest.raises(guard.UnvettedUnpickle):
            torch._C._pickle_load_obj(b"")
        from torch.export.pt2_archive import _package

        with pytest.raises(guard.UnvettedUnpickle):
            _package.pickle.loads(pickle.dumps(Payload(marker)))
        assert torch.load(io.BytesIO(_saved({"w": torch.ones(2)})))["w"].sum() == 2  # weights load as before
    assert not marker.exists()
    assert torch.load is not None and _package.pickle is pickle  # restored


def test_torch_logs_are_quiet_inside(caplog):
    with caplog.at_level(logging.WARNING), guard.quiet_torch_logs():
        logging.getLogger("torch._export.serde.serialize").warning("Fallback to weights_only=False succeeded")
    assert not caplog.records
