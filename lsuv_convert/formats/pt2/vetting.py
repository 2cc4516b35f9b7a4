"""Everything a ``.pt2`` archive could make ``torch.export.load`` execute, checked before it runs.

``torch.export.load`` reads more than the graph: it evaluates each symbolic-size expression
with ``sympy.sympify`` (Python's ``eval``), it unpickles the sample inputs and any weight
or constant marked ``use_pickle`` (falling back to a full ``torch.load(weights_only=False)``),
hands ``opaque_obj_*`` constants to ``pickle.loads`` and ``custom_obj_*`` ones to TorchScript's
unpickler, loads ``data/aotinductor/`` shared libraries, and resolves every node target of the
graph to a live callable (an operator of any namespace registered in the process, or any
``torch.*`` attribute). So, unless the user passes ``--trust-code``:

* the archive's directory passes :func:`..shared.archive_guard.open_archive` (always, trusted or not);
* every pickle torch would read (sample inputs, pickled weights and constants, legacy weight
  files, any other ``.pt`` / ``.pkl`` member) passes the weights-only rules of
  :mod:`..shared.archive_guard`; opaque and custom-class objects and compiled code are refused;
* every symbolic-size expression (``expr_str``, which torch hands to ``sympy.sympify``, an
  ``eval`` of Python) is sympy's printed form of size arithmetic and nothing else;
* every node target of the serialized graphs (``models/*.json``, read without deserializing,
  ``cond`` / ``map`` subgraphs and operators passed as arguments included) is an operator
  :mod:`..shared.operator_policy` allows, a higher-order operator of its list, or the scalar
  arithmetic torch.export writes for symbolic sizes.

Then torch reads the archive inside :func:`..shared.archive_guard.unpickling_refused`, so that a
full unpickle nothing here vouched for is refused rather than run. The first problem is one line.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from ...errors import ModelFormatError
from ..shared.archive_guard import TRUST_HINT, Archive, check_torch_save_member, open_archive, torch_key
from ..shared.operator_policy import HIGHER_ORDER_OPS, SCALAR_CALLABLES, classify, refusal

MAX_JSON_BYTES = 1 << 30  # a graph or config JSON larger than this is not read


def vet_archive(path: Path, *, trust_code: bool = False) -> None:
    """Raise ModelFormatError naming the first member or operator the checks refuse."""
    archive = open_archive(path)
    with archive.zf:
        if trust_code:
            return
        _refuse_compiled_code(archive)
        _check_pickles(archive)
        for member, kind, value in _graph_items(archive):
            if kind == "expression":
                _check_expression(value, member, path)
                continue
            why = _refused(value)
            if why is not None:
                name = _operator_name(value)
                raise ModelFormatError(f"its program {refusal(name, member, why)}", path=path)


def graph_targets(path: Path) -> list[str]:
    """Every callable name the archive's serialized graphs hold, in order of appearance."""
    archive = open_archive(path)
    with archive.zf:
        return [value for _, kind, value in _graph_items(archive) if kind == "target"]


def _members(archive: Archive, folder: str):
    """(name below ``folder``, info) of the members in ``<root>/<folder>/``, names as torch compares them."""
    start = f"{archive.root}/{folder}/"
    return [(key[len(start):], info) for key, info in archive.members.items()
            if key.startswith(start) and not info.is_dir()]


def _refuse_compiled_code(archive: Archive) -> None:
    compiled = _members(archive, "data/aotinductor")
    if compiled:
        raise ModelFormatError(f"holds AOTInductor compiled code ({compiled[0][1].filename}), which torch.export.load "
                               f"loads as a native library: refused, nothing ran ({TRUST_HINT})", path=archive.where)


def _check_pickles(archive: Archive) -> None:
    """Sample inputs, pickled weights and constants, legacy files and any other pickle member."""
    checked: set[str] = set()

    def check(info) -> None:
        if info.filename not in checked:
            checked.add(info.filename)
            check_torch_save_member(archive, info)

    for folder, kind in (("data/weights", "weights"), ("data/constants", "constants")):
        members = dict(_members(archive, folder))
        for name, info in members.items():
            if not name.endswith(f"_{kind}_config.json"):
                continue
            config = _read_json(archive, info).get("config")
            if not isinstance(config, dict):
                raise ModelFormatError(f"its {info.filename} has no 'config' mapping", path=archive.where)
            for fqn, payload in config.items():
                if not isinstance(payload, dict) or not isinstance(payload.get("path_name"), str):
                    raise ModelFormatError(f"its {info.filename} entry {fqn!r} names no payload file", path=archive.where)
                file_name = payload["path_name"]
                if file_name.startswith("custom_obj"):
                    _refuse_object(archive, fqn, "a TorchScript custom-class object (torch.classes), built by its C++ code")
                if file_name.startswith("opaque_obj"):
                    _refuse_object(archive, fqn, "an opaque Python object, which torch.export.load unpickles with "
                                                 "pickle.loads")
                if payload.get("use_pickle"):
                    member = members.get(torch_key(file_name))
                    if member is None:
                        raise ModelFormatError(f"its {info.filename} names a missing payload {file_name!r}",
                                               path=archive.where)
                    check(member)
    for key, info in archive.members.items():
        if not info.is_dir() and (key.startswith(f"{archive.root}/data/sample_inputs/")
                                  or key.endswith((".pt", ".pkl", ".pth"))):
            check(info)


def _refuse_object(archive: Archive, fqn: str, what: str) -> None:
    raise ModelFormatError(f"its constant {fqn!r} is {what}: refused, nothing ran ({TRUST_HINT})", path=archive.where)


def _read_json(archive: Archive, info) -> dict:
    """A JSON member, any parse failure (size, encoding, nesting) as one line."""
    data = archive.read_info(info, MAX_JSON_BYTES)
    try:
        document = json.loads(data)
    except RecursionError:
        raise ModelFormatError(f"its {info.filename} is nested too deeply to be read", path=archive.where) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"its {info.filename} is not valid JSON ({exc})", path=archive.where) from None
    if not isinstance(document, dict):
        raise ModelFormatError(f"its {info.filename} is not a JSON object", path=archive.where)
    return document


def _graph_items(archive: Archive) -> list[tuple[str, str, str]]:
    """(member, "target" | "expression", text) for every node target, operator argument and
    symbolic-size expression of every graph."""
    graphs = [info for name, info in _members(archive, "models") if name.endswith(".json") and "/" not in name]
    if not graphs:
        raise ModelFormatError(f"holds no serialized graph (models/*.json) whose operators could be checked "
                               f"({TRUST_HINT})", path=archive.where)
    found: list[tuple[str, str, str]] = []
    for info in graphs:
        found += [(info.filename, kind, text) for kind, text in _collect(_read_json(archive, info))]
    return found


def _collect(document) -> list[tuple[str, str]]:
    """Node targets (a dict with ``target`` and ``inputs``), operators passed as arguments
    (``as_operator``) and symbolic-size expressions (``expr_str``), anywhere in the document:
    subgraphs of control-flow nodes included. Iterative: the document's depth is the file's choice."""
    found: list[tuple[str, str]] = []
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            target = value.get("target")
            if isinstance(target, str) and "inputs" in value:
                found.append(("target", target))
            operator = value.get("as_operator")
            if isinstance(operator, str):
                found.append(("target", operator))
            expression = value.get("expr_str")
            if expression is not None:
                found.append(("expression", expression if isinstance(expression, str) else repr(expression)))
            pending.extend(reversed([v for v in value.values() if isinstance(v, (dict, list))]))
        elif isinstance(value, list):
            pending.extend(reversed([v for v in value if isinstance(v, (dict, list))]))
    return found


# torch.export.load hands every ``expr_str`` to ``sympy.sympify``, which evaluates the string as
# Python: only sympy's printed form of size arithmetic may pass (calls of these classes, numbers,
# operators, a Symbol's name).
_SYMPY_CALLS = frozenset("""
Symbol Dummy Integer Float Rational Add Mul Pow Mod Max Min Abs floor ceiling sqrt sign Piecewise ExprCondPair
Eq Ne Lt Le Gt Ge Equality Unequality StrictLessThan StrictGreaterThan LessThan GreaterThan And Or Not Xor
BooleanTrue BooleanFalse Infinity NegativeInfinity IntInfinity NegativeIntInfinity Tuple
""".split())
_SYMBOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _torch_sympy_functions() -> frozenset[str]:
    """The size functions torch defines for sympy (FloorDiv, CeilToInt, ...)."""
    import sympy
    from torch.utils._sympy import functions

    return frozenset(name for name, value in vars(functions).items()
                     if isinstance(value, type) and issubclass(value, sympy.Basic) and not name.startswith("_"))


def _check_expression(text: str, member: str, path: Path) -> None:
    if not _plain_expression(text):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ModelFormatError(f"its {member} holds a symbolic size expression that is not plain arithmetic "
                               f"({shown!r}); torch.export.load would evaluate it as Python: refused, nothing ran "
                               f"({TRUST_HINT})", path=path)


def _plain_expression(text: str) -> bool:
    if len(text) > 100_000:
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    calls = _SYMPY_CALLS | _torch_sympy_functions()
    pending = [tree.body]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in calls):
                return False
            for keyword in node.keywords:
                if keyword.arg is None or not (isinstance(keyword.value, ast.Constant)
                                               and isinstance(keyword.value.value, (bool, int))):
                    return False
            if node.func.id in ("Symbol", "Dummy") and node.args:
                name, *rest = node.args
                if not (isinstance(name, ast.Constant) and isinstance(name.value, str) and _SYMBOL_NAME.match(name.value)):
                    return False
                pending.extend(rest)
            else:
                pending.extend(node.args)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, (bool, int, float)):
                return False
        elif isinstance(node, ast.Name):
            if node.id.startswith("_"):
                return False
        elif isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp)):
            pending.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))
        else:
            return False
    return True


def _operator_name(target: str) -> str:
    parts = target.split(".")
    if len(parts) >= 4 and parts[:2] == ["torch", "ops"]:
        return f"{parts[2]}::{parts[3]}"
    return target


def _refused(target: str) -> str | None:
    """Why ``target`` is refused, or None."""
    if target in SCALAR_CALLABLES:
        return None
    parts = target.split(".")
    if len(parts) < 4 or parts[:2] != ["torch", "ops"]:
        return "not an operator of torch's own namespaces"
    if parts[2] == "higher_order":
        return None if parts[3] in HIGHER_ORDER_OPS else "a higher-order operator outside the reviewed list"
    verdict = classify(f"{parts[2]}::{parts[3]}")
    return None if verdict.allowed else verdict.reason
