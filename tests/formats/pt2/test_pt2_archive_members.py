"""Every member of a .pt2 archive that torch.export.load would execute is checked first: pickled
sample inputs, weights marked use_pickle, opaque and custom-class constants, AOTInductor code,
deep graph JSON. Each payload would create a marker file; each refusal is exactly one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from archive_helpers import assert_refused, member, payload_torch_save, read_member, rewrite_zip
from conftest import invoke


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pt2members")
    torch.manual_seed(0)
    batch = torch.randn(4, 3, 8, 8)
    np.save(folder / "x.npy", batch.numpy())
    path = folder / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (batch,)), str(path))
    return path


@pytest.fixture
def work(tmp_path, program):
    return tmp_path, tmp_path / "marker", program


def _convert(path, program):
    return invoke(path, "--data", program.parent / "x.npy", "-o", path.with_suffix(".out.pt2"))


def test_pickled_sample_inputs_are_checked_before_torch_reads_them(work):
    tmp, marker, program = work
    name = member(program, "data/sample_inputs/model.pt")
    hostile = rewrite_zip(program, tmp / "inputs.pt2", replace={name: payload_torch_save(marker)})
    line = assert_refused(_convert(hostile, program), marker, "sample_inputs/model.pt", "io.open",
                          "--trust-code")
    assert "weights-only" in line
    assert not hostile.with_suffix(".out.pt2").exists()


def test_the_sample_input_payload_is_a_real_hazard(work):
    """torch.export.load alone falls back to a full unpickle and runs it."""
    tmp, marker, program = work
    name = member(program, "data/sample_inputs/model.pt")
    hostile = rewrite_zip(program, tmp / "inputs.pt2", replace={name: payload_torch_save(marker)})
    try:
        torch.export.load(str(hostile))
    except Exception:  # noqa: BLE001 - whatever torch makes of the object afterwards
        pass
    assert marker.exists()


def test_a_weight_marked_use_pickle_is_checked(work):
    tmp, marker, program = work
    config_name = member(program, "model_weights_config.json")
    config = json.loads(read_member(program, config_name))
    key = next(iter(config["config"]))
    config["config"][key]["use_pickle"] = True
    weight = config_name.rsplit("/", 1)[0] + "/" + config["config"][key]["path_name"]
    hostile = rewrite_zip(program, tmp / "weight.pt2", replace={
        config_name: json.dumps(config).encode(), weight: payload_torch_save(marker, w=torch.zeros(2))})
    assert_refused(_convert(hostile, program), marker, config["config"][key]["path_name"], "io.open")


@pytest.mark.parametrize("prefix, words", [("opaque_obj", ("opaque Python object", "pickle.loads")),
                                           ("custom_obj", ("custom-class object",))])
def test_object_constants_are_refused(work, prefix, words):
    tmp, marker, program = work
    config_name = member(program, "model_constants_config.json")
    config = json.loads(read_member(program, config_name))
    config["config"]["sneaky"] = {"path_name": f"{prefix}_0", "is_param": False, "use_pickle": False, "tensor_meta": None}
    folder = config_name.rsplit("/", 1)[0]
    hostile = rewrite_zip(program, tmp / f"{prefix}.pt2", replace={config_name: json.dumps(config).encode()},
                          add={f"{folder}/{prefix}_0": payload_torch_save(marker)})
    assert_refused(_convert(hostile, program), marker, "sneaky", *words)


def test_any_other_pickle_member_is_checked(work):
    tmp, marker, program = work
    root = member(program, "archive_format").split("/")[0]
    hostile = rewrite_zip(program, tmp / "other.pt2", add={f"{root}/data/notes.pkl": payload_torch_save(marker)})
    assert_refused(_convert(hostile, program), marker, "notes.pkl", "io.open")


def test_compiled_code_is_refused(work):
    tmp, marker, program = work
    root = member(program, "archive_format").split("/")[0]
    hostile = rewrite_zip(program, tmp / "aoti.pt2", add={f"{root}/data/aotinductor/model/model.so": b"\x7fELF"})
    assert_refused(_convert(hostile, program), marker, "AOTInductor", "--trust-code")


def test_a_deeply_nested_graph_is_one_clean_line(work):
    tmp, marker, program = work
    name = member(program, "models/model.json")
    deep = b"[" * 100_000 + b"]" * 100_000
    hostile = rewrite_zip(program, tmp / "deep.pt2", replace={name: deep})
    assert_refused(_convert(hostile, program), marker, "nested too deeply")
    deep_object = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    hostile = rewrite_zip(program, tmp / "deep2.pt2", replace={name: deep_object})
    assert_refused(_convert(hostile, program), marker, "nested too deeply")


def test_names_that_torch_resolves_differently_are_refused(work):
    """torch finds members without case: a second models/MODEL.json would make the checked and
    the loaded graph differ."""
    tmp, marker, program = work
    name = member(program, "models/model.json")
    hostile = rewrite_zip(program, tmp / "case.pt2", add={name.replace("model.json", "MODEL.json"): b"{}"})
    assert_refused(_convert(hostile, program), marker, "without case")


def test_the_second_line_refuses_an_unchecked_full_unpickle(work, monkeypatch):
    """Should the member checks miss a pickle, torch.export.load still never unpickles it in full."""
    from lsuv_convert.formats.pt2 import vetting

    tmp, marker, program = work
    monkeypatch.setattr(vetting, "_check_pickles", lambda archive: None)
    name = member(program, "data/sample_inputs/model.pt")
    hostile = rewrite_zip(program, tmp / "inputs.pt2", replace={name: payload_torch_save(marker)})
    assert_refused(_convert(hostile, program), marker, "cannot vouch for")


def test_a_plain_program_still_converts_and_reloads(work):
    tmp, marker, program = work
    out = tmp / "plain.out.pt2"
    proc = invoke(program, "--data", program.parent / "x.npy", "-o", out)
    assert proc.returncode == 0, proc.stderr
    reloaded = torch.export.load(str(out)).module()
    assert reloaded(torch.randn(4, 3, 8, 8)).shape == (4, 2)


class Sized(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) * (x.shape[0] // 2)  # a symbolic size expression in the graph


@pytest.fixture(scope="module")
def dynamic_program(program):
    path = program.parent / "sized.pt2"
    batch = torch.export.Dim("batch", min=2)
    torch.export.save(torch.export.export(Sized().eval(), (torch.randn(4, 3, 8, 8),), dynamic_shapes=({0: batch},)),
                      str(path))
    return path


def _with_expression(source, dest, marker):
    """The program with one symbolic-size expression turned into Python that creates ``marker``."""
    name = member(source, "models/model.json")
    text = read_member(source, name).decode()
    found = text.index("\"Symbol('")
    end = text.index('"', found + 1)
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch() or {text[found + 1:end]}"
    return rewrite_zip(source, dest, replace={name: (text[:found + 1] + payload.replace('"', '\\"') + text[end:]).encode()})


def test_symbolic_size_expressions_are_checked_before_sympy_evaluates_them(work, dynamic_program):
    tmp, marker, program = work
    hostile = _with_expression(dynamic_program, tmp / "sympy.pt2", marker)
    assert_refused(_convert(hostile, program), marker, "symbolic size expression", "evaluate it as Python",
                   "--trust-code")


def test_the_expression_payload_is_a_real_hazard(work, dynamic_program):
    """torch.export.load hands expr_str to sympy.sympify, which evaluates it."""
    tmp, marker, _ = work
    hostile = _with_expression(dynamic_program, tmp / "sympy.pt2", marker)
    try:
        torch.export.load(str(hostile))
    except Exception:  # noqa: BLE001 - whatever torch then raises, the payload has already run
        pass
    assert marker.exists()


def test_a_dynamic_program_passes(work, dynamic_program):
    tmp, marker, program = work
    proc = invoke(dynamic_program, "--data", program.parent / "x.npy", "-o", tmp / "sized.out.pt2")
    assert proc.returncode == 0, proc.stderr
