"""Check a TorchScript archive's code before ``torch.jit.load`` compiles and runs any of it.

``torch.jit.load`` runs code at load time (a class's ``__setstate__``) and the model's
``forward`` runs on our batch; TorchScript can call any registered operator, including
``aten::from_file`` (read any file), ``aten::save`` (write one), ``prim::Print`` (write on the
terminal) and custom operators of any library that happens to be loaded. So the archive's
sources (``code/**/*.py``, found without case as torch's zip reader finds them, so that
``__torch__.PY`` is read too) are parsed here with :mod:`ast`, never executed, and every
operator they name is judged by :mod:`..shared.operator_policy`:

- ``torch.NAME`` is ``aten::NAME``; ``ops.NS.NAME`` / ``torch.ops.NS.NAME`` is ``NS::NAME``;
  a method call ``x.NAME(...)`` is the archive's own method or ``aten::NAME`` / ``prim::NAME``;
  ``print`` is ``prim::Print``; an aten / prim name this torch doesn't register can't compile,
  and is left to ``torch.jit.load`` to report;
- ``__torch__.…`` names the archive's own classes and functions (checked here too), except
  ``__torch__.torch.classes.…`` (custom C++ classes, refused, as is ``torch.classes``);
- a bare call must be one of TorchScript's builtins or a name the archive defines.

The first refused name is reported in one line naming it and its file; ``--trust-code``
loads the archive anyway.
"""

from __future__ import annotations

import ast
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFormatError
from ..shared.operator_policy import classify, is_registered, refusal

MAX_CODE_BYTES = 64 << 20  # all sources of one archive together

# bare calls of TorchScript's Python subset (the language, not operators)
TORCHSCRIPT_BUILTINS: frozenset[str] = frozenset("""
range len int float bool str complex tuple list dict isinstance unchecked_cast annotate uninitialized
getattr hasattr enumerate zip min max abs round divmod ord chr all any sum sorted reversed hash id
fork awaitable awaitable_wait awaitable_nowait bin hex oct pow _unwrap_optional
""".split())

@dataclass(frozen=True)
class Finding:
    name: str  # "aten::from_file", "prim::Print", "mylib::op"
    why: str
    file: str  # archive member
    line: int


def check_archive_code(sources: dict[str, str], path: Path) -> None:
    """Raise ModelFormatError naming the first operator the policy refuses (with its file)."""
    finding = first_disallowed(sources)
    if finding is not None:
        raise ModelFormatError(
            f"its TorchScript code {refusal(finding.name, f'{finding.file}, line {finding.line}', finding.why)}",
            path=path)


def read_sources(archive, prefix: str, path: Path) -> dict[str, str]:
    """{member name: source text} of the archive's code, with a cap on their total size.

    ``archive`` is an :class:`..shared.archive_guard.Archive` (names compared as torch does)."""
    sources, total = {}, 0
    for key, info in sorted(archive.members.items()):
        if info.is_dir() or not (key.startswith(f"{prefix}/code/") and key.endswith(".py")):
            continue
        total += info.file_size
        if total > MAX_CODE_BYTES:
            raise ModelFormatError(f"its TorchScript code is larger than {MAX_CODE_BYTES >> 20} MiB; refused", path=path)
        try:
            sources[info.filename] = archive.read_info(info, MAX_CODE_BYTES).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelFormatError(f"{info.filename} in the archive is not TorchScript source (not UTF-8 text)",
                                   path=path) from None
    return sources


def first_disallowed(sources: dict[str, str]) -> Finding | None:
    """The first refused name, in file-name order, or None.

    Each file is parsed and walked once into what it defines and the names it uses that the
    policy or a definition elsewhere in the archive must allow; the verdict needs every file's
    definitions.
    """
    facts = {}
    for name, text in sources.items():
        fact = _file_facts(text)
        if isinstance(fact, int):
            return Finding("source that does not parse as TorchScript", "nothing in it can be checked", name, fact)
        facts[name] = fact
    defined = set().union(*(f.defined for f in facts.values())) if facts else set()
    for name in sorted(facts):
        for kind, called, line in facts[name].needs:
            refused = _refused(kind, called, defined)
            if refused is not None:
                return Finding(*refused, file=name, line=line)
    return None


def _refused(kind: str, called: str, defined: set[str]) -> tuple[str, str] | None:
    """(name, why) to refuse for one use, or None when it is allowed."""
    if kind == "denied":
        if called.startswith("custom class"):
            return called, "custom C++ code"
        return called, "a namespace handed around as a value, which could reach any operator"
    if kind == "op":
        verdict = classify(called)
        return None if verdict.allowed else (called, verdict.reason)
    if kind == "call":
        if called == "print":
            return "prim::Print", classify("prim::Print").reason
        return None if called in defined else (called, "neither a TorchScript builtin nor defined in the archive")
    # a method: a denied operator of that name is refused whatever the archive defines (a
    # tensor's method resolves to the operator); else the archive's own method, or a
    # registered aten / prim operator the policy allows
    for op in (f"aten::{called}", f"prim::{called}"):
        verdict = classify(op)
        if not verdict.allowed and is_registered(op):
            return op, verdict.reason
    return None


@dataclass(frozen=True)
class _Facts:
    """What one source file defines, and its uses in visiting order: ("denied", name, line),
    ("op", "NS::NAME", line), ("call", name, line) or ("method", name, line)."""

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
            found = _Facts(frozenset(collector.defined), tuple(collector.needs) + _text_needs(text))
    if len(_FACTS) >= _FACTS_LIMIT:
        _FACTS.clear()
    _FACTS[key] = found
    return found


_OPS_TEXT = re.compile(r"(?<![\w.])(?:torch\s*\.\s*)?ops\s*\.\s*([A-Za-z_]\w*)\s*\.\s*([A-Za-z_]\w*)")
_TORCH_TEXT = re.compile(r"(?<![\w.])torch\s*\.\s*([A-Za-z_]\w*)")
_PRINT_TEXT = re.compile(r"(?<![\w.])print\s*\(")


def _text_needs(text: str) -> tuple[tuple[str, str, int], ...]:
    """The operators the raw text names, strings and all: Python's parser and TorchScript's may
    disagree on what is code (a string here, a call there), so a denied name anywhere is judged."""
    needs = []
    for found in _OPS_TEXT.finditer(text):
        use = _reference(f"ops.{found.group(1)}.{found.group(2)}")
        if use is not None:
            needs.append((*use, text.count("\n", 0, found.start()) + 1))
    for found in _TORCH_TEXT.finditer(text):
        name = found.group(1)
        if name in ("ops", "classes"):
            continue  # judged with what follows, above and by the syntax tree
        use = _reference(f"torch.{name}")
        if use is not None and not classify(use[1]).allowed:
            needs.append((*use, text.count("\n", 0, found.start()) + 1))
    for found in _PRINT_TEXT.finditer(text):
        needs.append(("call", "print", text.count("\n", 0, found.start()) + 1))
    return tuple(needs)


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
    variables) and, in order, the references and calls the operator policy judges."""

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
        elif node.id in ("torch", "ops"):  # a namespace as a value: getattr(torch, "from_file") would reach any op
            self.needs.append(("denied", node.id, getattr(node, "lineno", 0)))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        dotted = _dotted(node)
        if dotted is None:
            self.generic_visit(node)
            return
        use = _reference(dotted)
        if use is not None:
            self.needs.append((*use, getattr(node, "lineno", 0)))
        # the whole chain is judged at once: don't judge its prefixes again

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id not in TORCHSCRIPT_BUILTINS:
                self.needs.append(("call", func.id, getattr(node, "lineno", 0)))
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            root = dotted.split(".", 1)[0] if dotted else None
            if root not in ("torch", "ops", "__torch__", "CONSTANTS"):
                # a method call on a value: the archive's own, or a tensor / list / str method
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


def _reference(dotted: str) -> tuple[str, str] | None:
    """What a reference such as ``torch.ops.aten.save`` uses: ("op", "NS::NAME"), ("denied", what)
    for a custom class or a namespace handed around as a value, or None."""
    parts = dotted.split(".")
    root = parts[0]
    if root == "__torch__":
        if dotted.startswith("__torch__.torch.classes."):
            return "denied", f"custom class {'.'.join(parts[3:]) or dotted}"
        return None
    if root == "torch" and len(parts) >= 2 and parts[1] == "classes":
        return "denied", f"custom class {'.'.join(parts[2:]) or dotted}"
    if root == "torch" and len(parts) >= 2 and parts[1] == "ops":
        parts = parts[1:]
        root = "ops"
    if root == "ops":
        if len(parts) < 3:
            return "denied", dotted  # a namespace handed around as a value
        op = f"{parts[1]}::{parts[2]}"
        if parts[1] in ("aten", "prim") and not is_registered(op):
            return None  # an operator this torch doesn't have can't compile: torch.jit.load says so
        return "op", op
    if root == "torch":
        if len(parts) == 1:
            return "denied", "torch"  # the namespace itself, handed around as a value
        op = f"aten::{parts[1]}"
        return ("op", op) if is_registered(op) else None
    return None
