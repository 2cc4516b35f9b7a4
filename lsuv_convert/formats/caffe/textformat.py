"""Protobuf text format (what ``.prototxt`` files are) into Caffe messages, with line numbers.

Two steps, so every error names a line: a tokenizer + parser turn the text into a tree of
fields (syntax errors), then :func:`bind` fills a message from the tree using its descriptor
(unknown fields, bad values). Unlike ``google.protobuf.text_format`` this can be strict where
a typo would silently change the network (a layer's execution parameters) and lenient where
files legitimately carry settings the tool never uses (solver settings, data sources, the
parameter blocks of layer types from Caffe forks).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor

from .schema import LENIENT


class TextFormatError(ValueError):
    """A syntax or schema error at ``line``/``column`` (1-based)."""

    def __init__(self, message: str, line: int, column: int | None = None):
        where = f"line {line}" + (f", column {column}" if column else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.column = column


@dataclass
class Token:
    kind: str  # "ident", "number", "string", "punct", "end"
    text: str
    line: int
    column: int
    value: object = None  # decoded string / number text


@dataclass
class Field:
    """One ``name: value`` or ``name { ... }`` occurrence in the text."""

    name: str
    line: int
    column: int
    token: Token | None = None  # scalar value
    children: list["Field"] | None = None  # message value

    @property
    def is_message(self) -> bool:
        return self.children is not None


_TOKEN_RE = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:,;\[\]])
    """,
    re.VERBOSE,
)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
            "f": "\f", "v": "\v", "?": "?"}


def _unescape(body: str, line: int, column: int) -> str:
    out = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        elif nxt == "x" and re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]):
            digits = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:]).group()
            out.append(chr(int(digits, 16)))
            i += 2 + len(digits)
        else:
            raise TextFormatError(f"invalid escape '\\{nxt}' in string", line, column)
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    line, line_start, pos = 1, 0, 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        column = pos - line_start + 1
        if m is None:
            snippet = text[pos:pos + 10].split("\n")[0]
            raise TextFormatError(f"unexpected character(s) {snippet!r}", line, column)
        kind = m.lastgroup
        chunk = m.group()
        if kind == "newline":
            line += 1
            line_start = m.end()
        elif kind == "string":
            tokens.append(Token("string", chunk, line, column, _unescape(chunk[1:-1], line, column)))
        elif kind in ("number", "ident", "punct"):
            tokens.append(Token(kind, chunk, line, column, chunk))
        pos = m.end()
    tokens.append(Token("end", "end of file", line, pos - line_start + 1))
    return tokens


MAX_DEPTH = 64  # Caffe's schema nests a few levels; far deeper is a hostile file, not a net


def _short(text: str, limit: int = 40) -> str:
    """A token as quoted in an error: never more than a short piece of the file."""
    return text if len(text) <= limit else text[:limit] + "..."


class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: Token | None = None) -> TextFormatError:
        tok = tok or self.peek()
        return TextFormatError(message, tok.line, tok.column)

    def message(self, closer: str | None, opener: Token | None = None) -> list[Field]:
        if self.depth >= MAX_DEPTH:
            raise self.error(f"messages nested deeper than {MAX_DEPTH} levels (not a Caffe net)", opener)
        self.depth += 1
        try:
            return self._message(closer, opener)
        finally:
            self.depth -= 1

    def _message(self, closer: str | None, opener: Token | None = None) -> list[Field]:
        fields: list[Field] = []
        while True:
            tok = self.peek()
            if closer is not None and tok.kind == "punct" and tok.text == closer:
                self.take()
                return fields
            if tok.kind == "end":
                if closer is None:
                    return fields
                where = f" of {_short(opener.text)!r} opened at line {opener.line}" if opener else ""
                raise self.error(f"missing '{closer}'{where} before the end of the file")
            if closer is None and tok.kind == "punct" and tok.text in "}>":
                raise self.error(f"unmatched {_short(tok.text)!r}")
            fields.extend(self.field())

    def field(self) -> list[Field]:
        name_tok = self.take()
        if name_tok.kind != "ident" or name_tok.text.startswith("-"):
            raise self.error(f"expected a field name, found {_short(name_tok.text)!r}", name_tok)
        colon = self.peek().kind == "punct" and self.peek().text == ":"
        if colon:
            self.take()
        tok = self.peek()
        out: list[Field]
        if tok.kind == "punct" and tok.text in "{<":
            self.take()
            children = self.message("}" if tok.text == "{" else ">", name_tok)
            out = [Field(name_tok.text, name_tok.line, name_tok.column, children=children)]
        elif not colon:
            raise self.error(f"expected ':' or '{{' after {_short(name_tok.text)!r}, found {_short(tok.text)!r}")
        elif tok.kind == "punct" and tok.text == "[":
            self.take()
            out = []
            if not (self.peek().kind == "punct" and self.peek().text == "]"):
                while True:
                    out.append(self.list_item(name_tok))
                    sep = self.take()
                    if sep.kind == "punct" and sep.text == "]":
                        break
                    if not (sep.kind == "punct" and sep.text == ","):
                        raise self.error(f"expected ',' or ']' in the list of {_short(name_tok.text)!r}", sep)
            else:
                self.take()
        else:
            out = [Field(name_tok.text, name_tok.line, name_tok.column, token=self.scalar(name_tok))]
        nxt = self.peek()
        if nxt.kind == "punct" and nxt.text in ",;":
            self.take()
        return out

    def list_item(self, name_tok: Token) -> Field:
        tok = self.peek()
        if tok.kind == "punct" and tok.text in "{<":
            self.take()
            return Field(name_tok.text, tok.line, tok.column, children=self.message("}" if tok.text == "{" else ">", name_tok))
        return Field(name_tok.text, tok.line, tok.column, token=self.scalar(name_tok))

    def scalar(self, name_tok: Token) -> Token:
        tok = self.take()
        if tok.kind == "string":
            # Adjacent string literals concatenate, as in C.
            parts = [tok.value]
            while self.peek().kind == "string":
                parts.append(self.take().value)
            return Token("string", tok.text, tok.line, tok.column, "".join(parts))
        if tok.kind in ("number", "ident"):
            return tok
        raise self.error(f"expected a value for {_short(name_tok.text)!r}, found {_short(tok.text)!r}", tok)


def parse_text(text: str) -> list[Field]:
    """The tree of top-level fields of a text-format message."""
    return _Parser(tokenize(text)).message(None)


# ---------------------------------------------------------------------------------------------
# Binding a field tree to a message
# ---------------------------------------------------------------------------------------------

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_FLOAT_WORDS = {"inf": math.inf, "infinity": math.inf, "-inf": -math.inf, "-infinity": -math.inf,
                "nan": math.nan, "-nan": math.nan}


@dataclass
class BindContext:
    """Where we are, for error messages: the innermost named layer, if any."""

    layer: str | None = None
    skipped: set[str] = field(default_factory=set)  # names of unknown parameter blocks skipped

    def prefix(self) -> str:
        return f"layer {self.layer!r}: " if self.layer else ""


def bind(message, fields: list[Field], ctx: BindContext | None = None, block: str | None = None) -> None:
    """Fill ``message`` from ``fields``; raise :class:`TextFormatError` on the first problem.

    ``block`` is the field name the message was given under, for messages."""
    ctx = ctx or BindContext()
    desc = message.DESCRIPTOR
    outer_layer = ctx.layer
    if desc.name in ("LayerParameter", "V1LayerParameter"):
        names = [f for f in fields if f.name == "name" and f.token is not None]
        ctx.layer = names[0].token.value if names and names[0].token.kind == "string" else "?"
    try:
        for f in fields:
            fd = desc.fields_by_name.get(f.name)
            if fd is None:
                if desc.name in LENIENT or _skippable_param(desc.name, f):
                    ctx.skipped.add(f.name)
                    continue
                what = _describe(desc.name) if block is None or desc.name in ("LayerParameter", "V1LayerParameter") else block
                raise TextFormatError(f"{ctx.prefix()}{what} has no field {f.name!r}", f.line, f.column)
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                _bind_message_field(message, fd, f, ctx)
            else:
                _bind_scalar_field(message, fd, f, ctx)
    finally:
        ctx.layer = outer_layer


def _skippable_param(message_name: str, f: Field) -> bool:
    """A ``*_param { }`` block of a layer type this schema doesn't know (a Caffe fork's)."""
    return message_name in ("LayerParameter", "V1LayerParameter") and f.name.endswith("_param") and f.is_message


def _describe(message_name: str) -> str:
    words = {"NetParameter": "the net", "LayerParameter": "the layer", "V1LayerParameter": "the V1 layer",
             "SolverParameter": "the solver"}
    return words.get(message_name, message_name)


def _bind_message_field(message, fd, f: Field, ctx: BindContext) -> None:
    if not f.is_message:
        raise TextFormatError(f"{ctx.prefix()}{f.name!r} is a block: write {f.name} {{ ... }}", f.line, f.column)
    if _repeated(fd):
        sub = getattr(message, f.name).add()
    else:
        if message.HasField(f.name):
            raise TextFormatError(f"{ctx.prefix()}{f.name!r} is given more than once", f.line, f.column)
        sub = getattr(message, f.name)
        sub.SetInParent()
    bind(sub, f.children, ctx, f.name)


def _bind_scalar_field(message, fd, f: Field, ctx: BindContext) -> None:
    if f.is_message:
        raise TextFormatError(f"{ctx.prefix()}{f.name!r} takes a value, not a block", f.line, f.column)
    value = _convert(fd, f.token, ctx)
    if _repeated(fd):
        getattr(message, f.name).append(value)
        return
    if message.HasField(f.name):
        raise TextFormatError(f"{ctx.prefix()}{f.name!r} is given more than once", f.line, f.column)
    setattr(message, f.name, value)


def _convert(fd, tok: Token, ctx: BindContext):
    def bad(what: str) -> TextFormatError:
        return TextFormatError(f"{ctx.prefix()}{fd.name!r} {what}, got {_short(tok.text)}", tok.line, tok.column)

    t = fd.type
    if t == FieldDescriptor.TYPE_STRING:
        if tok.kind != "string":
            raise bad("takes a quoted string")
        return tok.value
    if t == FieldDescriptor.TYPE_BYTES:
        if tok.kind != "string":
            raise bad("takes a quoted string")
        return tok.value.encode("latin-1")
    if t == FieldDescriptor.TYPE_BOOL:
        word = tok.text
        if word in ("true", "True", "t", "1"):
            return True
        if word in ("false", "False", "f", "0"):
            return False
        raise bad("takes true or false")
    if t == FieldDescriptor.TYPE_ENUM:
        enum = fd.enum_type
        if tok.kind == "ident":
            value = enum.values_by_name.get(tok.text)
            if value is None:
                raise bad(f"takes one of {', '.join(enum.values_by_name)}")
            return value.number
        if tok.kind == "number" and _is_int(tok.text) and int(tok.text, 0) in enum.values_by_number:
            return int(tok.text, 0)
        raise bad(f"takes one of {', '.join(enum.values_by_name)}")
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        if tok.kind == "ident" and tok.text.lower() in _FLOAT_WORDS:
            return _FLOAT_WORDS[tok.text.lower()]
        if tok.kind != "number":
            raise bad("takes a number")
        text = tok.text
        if _is_int(text) and text.lower().lstrip("-").startswith("0x"):
            return float(int(text, 16))
        return float(text.rstrip("fF"))
    if t in _INT_RANGES:
        if tok.kind != "number" or not _is_int(tok.text):
            raise bad("takes an integer")
        value = _parse_int(tok.text)
        lo, hi = _INT_RANGES[t]
        if not lo <= value <= hi:
            raise bad("is out of range" if lo < 0 else "takes a non-negative integer")
        return value
    raise bad("has a type this reader doesn't handle")  # pragma: no cover - schema has none


def _repeated(fd) -> bool:
    """``is_repeated`` on protobuf >= 5.28 (where ``label`` is gone), ``label`` before."""
    flag = getattr(fd, "is_repeated", None)
    return bool(flag) if flag is not None else fd.label == FieldDescriptor.LABEL_REPEATED


def _is_int(text: str) -> bool:
    return re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", text) is not None


def _parse_int(text: str) -> int:
    neg = text.startswith("-")
    body = text[1:] if neg else text
    if body.lower().startswith("0x"):
        value = int(body, 16)
    elif len(body) > 1 and body.startswith("0") and body.isdigit() and set(body) <= set("01234567"):
        value = int(body, 8)
    else:
        value = int(body)
    return -value if neg else value
