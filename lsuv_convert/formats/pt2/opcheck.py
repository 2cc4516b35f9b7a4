"""Which operators a ``.pt2`` program calls, checked before ``torch.export.load`` sees the file.

``torch.export.load`` runs no pickled Python, but the program's graph names the callables its
nodes call, and loading resolves each name to a live callable: an operator of any namespace
registered in the process (a custom op runs whatever code its library registered), or any
``torch.*`` attribute (``torch.load``). So the graph is read from the archive's serialized JSON
(``<name>/models/*.json``) without deserializing anything, and every node's target, inside
``cond`` / ``map`` subgraphs too, and every operator handed to a node as an argument
(``auto_functionalized(mylib.foo, ...)``), must be on the allowlist:

* ``torch.ops.NS.OP[.OVERLOAD]`` of torch's own operator namespaces (:data:`ALLOWED_NAMESPACES`),
  except the few that touch files (:data:`DENIED_EXPLAINED`); of ``higher_order``, only the
  control-flow and wrapper operators listed in :data:`ALLOWED_HIGHER_ORDER`;
* the scalar arithmetic export writes for symbolic sizes (``_operator.add``, ``math.trunc``,
  ``torch.sym_max``, ...).

The first name outside the list is refused with one line naming it; ``--trust-code`` loads the
program anyway. The design follows the TorchScript plug-in's code allowlist.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFormatError

ALLOWED_NAMESPACES = frozenset({"aten", "prims", "prim", "rngprims", "quantized", "quantized_decomposed", "_quantized"})

ALLOWED_HIGHER_ORDER = frozenset("""
cond while_loop map_impl scan associative_scan wrap_with_set_grad_enabled wrap_with_autocast auto_functionalized
auto_functionalized_v2 invoke_subgraph flex_attention out_dtype with_effects run_and_save_rng_state run_with_rng_state
""".split())

DENIED_EXPLAINED: dict[str, str] = {
    "aten::from_file": "reads a file",
    "aten::save": "writes a file",
    "aten::_save": "writes a file",
    "aten::load": "reads a file",
}

# What torch.export writes for scalar (symbolic size) arithmetic: pure functions of numbers.
ALLOWED_SCALAR_OPS = frozenset("""
_operator.add _operator.sub _operator.mul _operator.truediv _operator.floordiv _operator.mod _operator.pow
_operator.neg _operator.pos _operator.eq _operator.ne _operator.lt _operator.le _operator.gt _operator.ge
_operator.and_ _operator.or_ _operator.not_ _operator.lshift _operator.rshift _operator.getitem _operator.abs
math.trunc math.ceil math.floor math.sqrt
torch.sym_int torch.sym_float torch.sym_max torch.sym_min torch.sym_not torch.sym_ite torch._sym_sqrt
torch.sym_sum torch.sym_fresh_size
""".split())

_MAX_GRAPH_BYTES = 1 << 30  # a graph JSON larger than this is not read (refused as unreadable)


@dataclass(frozen=True)
class Finding:
    name: str  # the operator as refused: ``mylib::foo``, or the callable's dotted name
    why: str


def check_program_ops(path: Path) -> None:
    """Raise ModelFormatError naming the first operator of the program outside the allowlist."""
    finding = first_disallowed(graph_targets(path))
    if finding is not None:
        raise ModelFormatError(
            f"its program calls {finding.name} ({finding.why}); refused before loading, nothing ran "
            "(pass --trust-code to load it anyway)", path=path)


def graph_targets(path: Path) -> list[str]:
    """Every callable name the archive's serialized graphs hold, in order of appearance."""
    try:
        with zipfile.ZipFile(path) as zf:
            graphs = [info for info in zf.infolist()
                      if info.filename.count("/") == 2 and info.filename.split("/")[1] == "models"
                      and info.filename.endswith(".json")]
            if not graphs:
                raise ModelFormatError("holds no serialized graph (models/*.json) whose operators could be checked "
                                       "(pass --trust-code to load it anyway)", path=path)
            names: list[str] = []
            for info in graphs:
                if info.file_size > _MAX_GRAPH_BYTES:
                    raise ModelFormatError(f"its graph {info.filename} is {info.file_size} bytes: too large to check "
                                           "(pass --trust-code to load it anyway)", path=path)
                try:
                    document = json.loads(zf.read(info))
                except ValueError as exc:
                    raise ModelFormatError(f"its graph {info.filename} is not valid JSON ({exc})", path=path) from None
                _collect(document, names)
            return names
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelFormatError(f"cannot read the archive: {exc}", path=path) from None


def _collect(value, names: list[str]) -> None:
    """Node targets (a dict with ``target`` and ``inputs``) and operators passed as arguments
    (``as_operator``), anywhere in the document: subgraphs of control-flow nodes included."""
    if isinstance(value, dict):
        target = value.get("target")
        if isinstance(target, str) and "inputs" in value:
            names.append(target)
        operator = value.get("as_operator")
        if isinstance(operator, str):
            names.append(operator)
        for item in value.values():
            if isinstance(item, (dict, list)):
                _collect(item, names)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, (dict, list)):
                _collect(item, names)


def first_disallowed(targets: list[str]) -> Finding | None:
    for target in targets:
        finding = _check(target)
        if finding is not None:
            return finding
    return None


def _check(target: str) -> Finding | None:
    if target in ALLOWED_SCALAR_OPS:
        return None
    parts = target.split(".")
    if len(parts) < 4 or parts[:2] != ["torch", "ops"]:
        return Finding(target, "not an operator of torch's own namespaces")
    namespace, op = parts[2], parts[3]
    qualified = f"{namespace}::{op}"
    if namespace == "higher_order":
        if op in ALLOWED_HIGHER_ORDER:
            return None
        return Finding(qualified, "a higher-order operator outside the allowlist")
    if namespace not in ALLOWED_NAMESPACES:
        return Finding(qualified, "a custom operator: it runs the code of whatever library registered it")
    if qualified in DENIED_EXPLAINED:
        return Finding(qualified, DENIED_EXPLAINED[qualified])
    return None
