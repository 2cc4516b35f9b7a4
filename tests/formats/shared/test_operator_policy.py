"""The operator policy classifies torch's whole schema registry; every denied operator is refused
in TorchScript code and in a .pt2 graph with one line naming it and its file."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from archive_helpers import assert_refused
from conftest import invoke
from lsuv_convert.formats.shared import operator_policy as policy
from safety_helpers import HolderNet, rewrite_code, scripted_bytes

FORWARD = "    d = self.d\n"


_REGISTRY: list[str] = []


def _full_registry() -> list[str]:
    """Every operator torch registers once the libraries that add some are imported (torchvision:
    ``torchvision::``, ``image::``; torch.distributed: ``c10d``, ``symm_mem``), read in a fresh
    interpreter: this one holds the test suite's own custom operators."""
    if not _REGISTRY:
        code = ("import json, torch, torch.distributed, torchvision; "
                "print(json.dumps(sorted({s.name for s in torch._C._jit_get_all_schemas()})))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
        _REGISTRY.extend(json.loads(out.stdout.strip().splitlines()[-1]))
    return _REGISTRY


def test_every_registered_operator_is_classified():
    names = _full_registry()
    assert len(names) > 2000
    missing = policy.unclassified(names)
    assert not missing, f"namespaces without a decision in operator_policy ({len(missing)} ops): {missing[:40]}"


def test_names_that_look_like_side_effects_have_a_decision():
    pattern = re.compile(policy.SIDE_EFFECT_WORDS, re.I)
    undecided = [n for n in _full_registry()
                 if n.partition("::")[0] in policy.COMPUTE_NAMESPACES and pattern.search(n.partition("::")[2])
                 and n not in policy.DENIED_OPS and n not in policy.REVIEWED_ALLOWED]
    assert not undecided, f"add these to DENIED_OPS or REVIEWED_ALLOWED, with a reason: {undecided}"


def test_the_lists_name_real_operators():
    names = set(_full_registry())
    stale = [n for n in (*policy.DENIED_OPS, *policy.REVIEWED_ALLOWED) if n not in names]
    assert not stale, f"no longer registered by torch: {stale}"
    assert all(policy.DENIED_OPS.values()) and all(policy.DENIED_NAMESPACES.values())


def test_verdicts():
    assert policy.classify("aten::_upsample_nearest_exact1d").allowed
    assert policy.classify("aten::_weight_norm").allowed
    assert policy.classify("aten::set_grad_enabled").allowed
    assert policy.classify("aten::unique_dim.default").allowed
    assert policy.classify("torchvision::nms").allowed
    assert not policy.classify("aten::from_file").allowed
    assert not policy.classify("prim::Print").allowed
    assert not policy.classify("c10d::barrier").allowed
    assert "custom operator" in policy.classify("mylib::launch").reason


@pytest.fixture(scope="module")
def base() -> bytes:
    return scripted_bytes(HolderNet())


def _denied_examples() -> list[str]:
    ops = sorted(policy.DENIED_OPS)
    by_namespace = {}
    for name in _full_registry():
        ns = name.partition("::")[0]
        if ns in policy.DENIED_NAMESPACES:
            by_namespace.setdefault(ns, name)
    return ops + sorted(by_namespace.values())


@pytest.mark.parametrize("op", _denied_examples())
def test_denied_operators_are_refused_in_torchscript_code(base, tmp_path, op):
    ns, _, name = op.partition("::")
    model = rewrite_code(base, tmp_path / "m.pt", FORWARD, f"{FORWARD}    _9 = ops.{ns}.{name}(x)\n")
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 8, 8), np.float32))
    proc = invoke(model, "--data", tmp_path / "x.npy")
    line = assert_refused(proc, tmp_path / "never", op, ".py", "--trust-code")
    assert policy.classify(op).reason in line
