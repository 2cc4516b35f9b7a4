"""Check a TorchScript archive's code before ``torch.jit.load`` compiles and runs any of it.

``torch.jit.load`` runs code at load time (a class's ``__setstate__``) and the model's
``forward`` runs on our batch; TorchScript can call any registered operator, including
``aten::from_file`` (read any file), ``aten::save`` (write one), ``prim::Print`` (write on our
stdout) and custom operators of any library that happens to be loaded. So the archive's
sources (``code/**/*.py``, the TorchScript subset of Python that ``torch.jit.save`` prints)
are parsed here with :mod:`ast`, never executed, and every operator they name must be on an
allowlist of pure tensor operators (:mod:`.allowlist`):

- ``torch.NAME`` is ``aten::NAME`` (or a TorchScript builtin such as ``torch.len``); a name
  this torch doesn't register can't run, and is left to ``torch.jit.load`` to report,
- ``ops.NS.NAME`` / ``torch.ops.NS.NAME`` is ``NS::NAME``; an unknown namespace is a custom op,
- ``__torch__.…`` names the archive's own classes and functions (checked here too), except
  ``__torch__.torch.classes.…`` (custom C++ classes, refused),
- a bare call (``print``, ``range``) must be a TorchScript builtin on the list or a name the
  archive defines; a method call must name a method the archive defines or an allowed op.

The first name outside the list is refused with one line naming it and its file; ``--trust-code``
loads the archive anyway.
"""

from __future__ import annotations

import ast
import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFormatError
from .allowlist import ALLOWED_BUILTINS, ALLOWED_OPS, ALLOWED_TORCH_NAMES, DENIED_EXPLAINED

MAX_CODE_BYTES = 64 << 20  # all sources of one archive together


@dataclass(frozen=True)
class Finding:
    name: str  # "aten::from_file", "print", "ops.mylib.op"
    file: str  # archive member
    line: int


def check_archive_code(zf: zipfile.ZipFile, prefix: str, path: Path) -> None:
    """Raise ModelFormatError naming the first call outside the allowlist (with its file)."""
    finding = first_disallowed(read_sources(zf, prefix, path))
    if finding is not None:
        why = DENIED_EXPLAINED.get(finding.name, "not on the allowlist of pure tensor operators")
        raise ModelFormatError(
            f"its TorchScript code calls {finding.name} ({why}) in {finding.file}, line {finding.line}; "
            "refused before loading, nothing ran (pass --trust-code to load it anyway)",
            path=path,
        )


def read_sources(zf: zipfile.ZipFile, prefix: str, path: Path) -> dict[str, str]:
    """{member name: source text} of the archive's code, with a cap on their total size."""
    sources, total = {}, 0
    for info in zf.infolist():
        name = info.filename
        if not (name.startswith(f"{prefix}/code/") and name.endswith(".py")):
            continue
        total += info.file_size
        if total > MAX_CODE_BYTES:
            raise ModelFormatError(f"its TorchScript code is larger than {MAX_CODE_BYTES >> 20} MiB; refused", path=path)
        try:
            sources[name] = zf.read(name).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"{name} in the archive is not TorchScript source (not UTF-8 text)", path=path) from None
    return sources


def first_disallowed(sources: dict[str, str]) -> Finding | None:
    """The first call outside the allowlist, in file-name order, or None.

    Each file is parsed and walked once into what it defines and the names it calls that only
    a definition elsewhere in the archive can allow; the verdict needs every file's definitions.
    """
    facts = {}
    for name, text in sources.items():
        fact = _file_facts(text)
        if isinstance(fact, int):
            return Finding("source that does not parse as TorchScript", name, fact)
        facts[name] = fact
    defined = set().union(*(f.defined for f in facts.values())) if facts else set()
    for name in sorted(facts):
        for kind, called, line in facts[name].needs:
            if kind == "denied" or called not in defined:
                return Finding(called if kind == "denied" else _denied_call(kind, called), name, line)
    return None


def _denied_call(kind: str, called: str) -> str:
    if kind == "method":
        return f"method {called}"
    return "prim::Print (print)" if called == "print" else called


@dataclass(frozen=True)
class _Facts:
    """What one source file defines, and its calls in visiting order that the allowlist alone
    doesn't allow: ("denied", op, line), or ("call" | "method", name, line), allowed only when
    the archive defines ``name``."""

    defined: frozenset[str]
    needs: tuple[tuple[str, str, int], ...]


_FACTS: dict[bytes, _Facts | int] = {}  # source digest -> facts (or the line of a syntax error)
_FACTS_LIMIT = 8192  # files; a zoo of one architecture reads the same sources again


def _file_facts(text: str) -> _Facts | int:
    """The facts of one source file (cached by content), or the line where it fails to parse."""
    key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=20).digest()
    found = _FACTS.get(key)
    if found is not None:
        return found
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        found = getattr(exc, "lineno", 0) or 0
    else:
        collector = _Collector()
        try:
            collector.visit(tree)
        except RecursionError:
            found = 0
        else:
            found = _Facts(frozenset(collector.defined), tuple(collector.needs))
    if len(_FACTS) >= _FACTS_LIMIT:
        _FACTS.clear()
    _FACTS[key] = found
    return found


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for an attribute chain rooted at a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Collector(ast.NodeVisitor):
    """One walk of a file: the names it defines (functions, methods, classes, arguments,
    variables) and, in order, the references and calls the allowlist alone doesn't allow."""

    def __init__(self):
        self.defined: set[str] = set()
        self.needs: list[tuple[str, str, int]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.defined.add(node.name)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.defined.add(node.name)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self.defined.add(node.arg)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Store):
            self.defined.add(node.id)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is None:
            self.generic_visit(node)
            return
        denied = _check_reference(dotted)
        if denied is not None:
            self.needs.append(("denied", denied, getattr(node, "lineno", 0)))
        # the whole chain is judged at once: don't judge its prefixes again

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in ALLOWED_BUILTINS:
                self.needs.append(("call", func.id, getattr(node, "lineno", 0)))
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            root = dotted.split(".", 1)[0] if dotted else None
            if root not in ("torch", "ops", "__torch__", "CONSTANTS"):
                # a method call on a value: one the archive defines, or a tensor / list method
                if func.attr not in ALLOWED_TORCH_NAMES and f"aten::{func.attr}" not in ALLOWED_OPS:
                    self.needs.append(("method", func.attr, getattr(node, "lineno", 0)))
                self.visit(func.value)
            else:
                self.visit(func)
        else:
            self.visit(func)
        for arg in node.args:
            self.visit(arg)
        for kw in node.keywords:
            self.visit(kw.value)


def _check_reference(dotted: str) -> str | None:
    """The operator name to refuse for a reference such as ``torch.ops.aten.save``, or None."""
    parts = dotted.split(".")
    root = parts[0]
    if root == "__torch__":
        if dotted.startswith("__torch__.torch.classes."):
            return f"custom class {'.'.join(parts[3:]) or dotted}"
        return None
    if root == "torch" and len(parts) >= 2 and parts[1] == "classes":
        return f"custom class {'.'.join(parts[2:]) or dotted}"
    if root == "torch" and len(parts) >= 2 and parts[1] == "ops":
        parts = parts[1:]
        root = "ops"
    if root == "ops":
        if len(parts) < 3:
            return dotted  # a namespace handed around as a value
        op = f"{parts[1]}::{parts[2]}"
        if op in ALLOWED_OPS or (parts[1] in ("aten", "prim") and not _registered(op)):
            return None  # allowed, or an aten/prim op this torch doesn't have (it can't compile)
        return op
    if root == "torch":
        if len(parts) == 1:
            return "torch"  # the namespace itself, handed around as a value
        if len(parts) > 2:
            return dotted
        name = parts[1]
        if name in ALLOWED_TORCH_NAMES or f"aten::{name}" in ALLOWED_OPS or not _registered(f"aten::{name}"):
            return None  # an operator this torch doesn't have can't run: torch.jit.load says it doesn't compile
        return f"aten::{name}"
    return None


def _registered(op: str) -> bool:
    """Whether this torch knows ``op`` (so that TorchScript code naming it would compile and run)."""
    import torch

    try:
        return bool(torch._C._jit_get_schemas_for_operator(op))
    except (RuntimeError, AttributeError):
        return True  # can't tell: treat it as real
