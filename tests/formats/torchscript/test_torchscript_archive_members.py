"""A TorchScript archive is read member by member before torch.jit.load: names as torch's zip
reader resolves them (without case), every pickle under the weights-only rules (plus the archive's
own classes), code found whatever the case of its name. Each payload would create a marker file
or read one; each refusal is exactly one line."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from archive_helpers import assert_refused, member, payload_pickle, rewrite_zip
from conftest import invoke
from safety_helpers import HolderNet, rewrite_code, scripted_bytes

SETSTATE = "self.b = (state)[0]"


@pytest.fixture(scope="module")
def base() -> bytes:
    return scripted_bytes(HolderNet())


@pytest.fixture
def work(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32))
    (tmp_path / "secret.txt").write_bytes(b"\0" * 12)
    return tmp_path


def _convert(model, work):
    return invoke(model, "--data", work / "x.npy", "-o", work / "out.pt")


def test_code_named_with_another_case_is_checked(base, work):
    """torch's zip reader finds ``code/__torch__/x.PY`` when it looks for ``x.py``."""
    hostile = rewrite_code(base, work / "lower.pt", SETSTATE, f'self.b = torch.from_file("{work / "secret.txt"}", None, 3)')
    source = member(hostile, "safety_helpers.py")
    upper = rewrite_zip(hostile, work / "upper.pt", rename={source: source[:-3] + ".PY"})
    assert_refused(_convert(upper, work), work / "out.pt", "aten::from_file", ".PY", "--trust-code")
    trusted = invoke("inspect", upper, "--trust-code")  # torch does read it: the check is not moot
    assert trusted.returncode == 0, trusted.stderr


def test_an_operator_reached_through_getattr_is_refused(base, work):
    hostile = rewrite_code(base, work / "m.pt", SETSTATE, f'self.b = getattr(torch, "from_file")("{work / "secret.txt"}")')
    assert_refused(_convert(hostile, work), work / "out.pt", "torch", "namespace", "--trust-code")


def test_a_payload_in_constants_pkl_is_refused(base, work):
    marker = work / "marker"
    hostile = rewrite_zip(base, work / "m.pt", replace={member(base, "/constants.pkl"): payload_pickle(marker)})
    assert_refused(_convert(hostile, work), marker, "constants.pkl", "io.open", "--trust-code")


def test_a_payload_in_data_pkl_after_a_module_class_is_refused(base, work):
    """data.pkl starts like a TorchScript module, then calls a global."""
    marker = work / "marker"
    text = str(marker).encode()
    data = (b"\x80\x02c__torch__.safety_helpers\nHolderNet\n)\x81" + b"cio\nopen\nX" + struct.pack("<I", len(text))
            + text + b"X\x01\x00\x00\x00w\x86R" + b"b.")
    hostile = rewrite_zip(base, work / "m.pt", replace={member(base, "/data.pkl"): data})
    assert_refused(_convert(hostile, work), marker, "data.pkl", "io.open")


def test_debug_info_and_other_pickles_are_checked(base, work):
    marker = work / "marker"
    debug = [n for n in _names(base) if n.endswith(".debug_pkl")][0]
    hostile = rewrite_zip(base, work / "debug.pt", replace={debug: payload_pickle(marker)})
    assert_refused(_convert(hostile, work), marker, ".debug_pkl", "io.open")
    root = _names(base)[0].split("/")[0]
    other = rewrite_zip(base, work / "other.pt", add={f"{root}/extra/state.pkl": payload_pickle(marker)})
    assert_refused(_convert(other, work), marker, "state.pkl", "io.open")


def test_a_custom_class_in_a_pickle_is_refused(base, work):
    data = b"\x80\x02c__torch__.torch.classes.mylib\nThing\n)\x81."
    hostile = rewrite_zip(base, work / "m.pt", replace={member(base, "/constants.pkl"): data})
    assert_refused(_convert(hostile, work), work / "never", "__torch__.torch.classes.mylib.Thing")


@pytest.mark.parametrize("name, words", [
    ("{root}/code/__torch__/safety_helpers.py", ("twice",)),
    ("{root}/CODE/__torch__/safety_helpers.py", ("without case",)),
    ("other/evil.py", ("outside the archive's root",)),
    ("{root}/../evil.py", ("'..'",)),
    ("{root}/./code/evil.py", ("'.'",)),
    ("/tmp/evil.py", ("absolute",)),
    ("{root}\\code\\evil.py", ("Windows-style",)),
])
def test_names_torch_would_resolve_otherwise_are_refused(base, work, name, words):
    root = _names(base)[0].split("/")[0]
    hostile = rewrite_zip(base, work / "m.pt", add={name.format(root=root): b"def f(x):\n    return x\n"})
    assert_refused(_convert(hostile, work), work / "never", *words)


def test_a_symlink_member_is_refused(base, work):
    root = _names(base)[0].split("/")[0]
    hostile = rewrite_zip(base, work / "m.pt", add={f"{root}/extra/link": b"/etc/passwd"},
                          symlinks=(f"{root}/extra/link",))
    assert_refused(_convert(hostile, work), work / "never", "symbolic link")


def test_the_original_still_converts_and_loads(base, work):
    model = work / "m.pt"
    model.write_bytes(base)
    proc = _convert(model, work)
    assert proc.returncode in (0, 3), proc.stderr  # 3: a layer that can't reach the target variance (tanh net)
    loaded = torch.jit.load(str(work / "out.pt"))
    assert loaded(torch.randn(2, 2, 8, 8)).shape == (2, 2, 8, 8)


def _names(data: bytes) -> list[str]:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return zf.namelist()
