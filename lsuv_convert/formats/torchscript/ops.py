"""How to run one TorchScript node from Python, with exactly the op TorchScript runs.

Three kinds of callables, chosen per node:

- the dispatcher overload the node's schema names (``torch.ops.aten.conv2d.default``), called
  with the node's inputs (keyword-only ones by keyword): the common case, cheap, and readable
  in an fx graph;
- a small Python function for the structural ``prim::`` nodes (list / tuple construction and
  unpacking) and for list / dict ops that mutate their argument in place, because going
  through the JIT would copy the Python list and lose the mutation;
- for anything else (ops with generic ``t`` types, varargs, nodes without a schema) a one-node
  TorchScript function cloned from the node itself, so the JIT runs it with the node's own
  typed inputs.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from ...errors import first_line


class UnsupportedNode(Exception):
    """A node that neither path can run (e.g. it mutates a list through an op we don't model)."""


def _build_list(*items):
    return list(items)


def _build_tuple(*items):
    return tuple(items)


def _build_dict(*items):
    return {items[i]: items[i + 1] for i in range(0, len(items), 2)}


def _unpack(seq):
    return tuple(seq)


def _identity(x):
    return x


def _uninitialized():
    return None


def _raise_exception(msg, cls=None):
    prefix = f"{cls.rsplit('.', 1)[-1]}: " if cls else ""
    raise RuntimeError(f"the model raised {prefix}{msg}")


def _warn(message, stacklevel=2):
    warnings.warn(message, UserWarning, stacklevel=2)


def _print(*values):
    print(*values)


def _append(lst, item):
    lst.append(item)
    return lst


def _extend(lst, other):
    lst.extend(other)


def _extend_in_place(lst, other):
    lst.extend(other)
    return lst


def _insert(lst, index, item):
    lst.insert(index, item)


def _pop(container, *key):
    return container.pop(*key)


def _clear(container):
    container.clear()


def _set_item(container, key, value):
    container[key] = value
    return container


def _delete(container, key):
    del container[key]


def _remove(lst, item):
    lst.remove(item)


def _reverse(lst):
    lst.reverse()


def _sort(lst, reverse=False):
    lst.sort(reverse=reverse)


def _update(d, other):
    d.update(other)


def _setdefault(d, key, default):
    return d.setdefault(key, default)


def _getitem(container, key):
    return container[key]


def _len(x):
    return len(x)


def _is(a, b):
    return a is b


def _is_not(a, b):
    return a is not b


# Nodes without a usable schema that every TorchScript graph is full of.
STRUCTURAL: dict[str, Callable] = {
    "prim::ListConstruct": _build_list,
    "prim::TupleConstruct": _build_tuple,
    "prim::DictConstruct": _build_dict,
    "prim::ListUnpack": _unpack,
    "prim::TupleUnpack": _unpack,
    "prim::TupleIndex": _getitem,
    "prim::unchecked_cast": _identity,
    "prim::Uninitialized": _uninitialized,
    "prim::RaiseException": _raise_exception,
    # run by TorchScript's interpreter itself, not reachable through torch.ops
    "aten::warn": _warn,
    "prim::Print": _print,
}

UNPACKING = {"prim::ListUnpack", "prim::TupleUnpack"}

# Ops on Python containers (first input a list / dict / str), run in Python so that
# in-place mutation and aliasing behave as in TorchScript.
CONTAINER_OPS: dict[str, Callable] = {
    "aten::__getitem__": _getitem,
    "aten::len": _len,
    "aten::append": _append,
    "aten::extend": _extend,
    "aten::insert": _insert,
    "aten::pop": _pop,
    "aten::clear": _clear,
    "aten::_set_item": _set_item,
    "aten::Delete": _delete,
    "aten::remove": _remove,
    "aten::reverse": _reverse,
    "aten::sort": _sort,
    "aten::update": _update,
    "aten::setdefault": _setdefault,
    "aten::add_": _extend_in_place,  # list += list
}

ANY_VALUE_OPS: dict[str, Callable] = {"aten::__is__": _is, "aten::__isnot__": _is_not}


# Ops TorchScript's interpreter implements itself (torch.ops refuses them): run as a
# one-node TorchScript function.
_INTERPRETER_ONLY = {"aten::wait"}


class Resolved:
    """A node's callable: ``fn(*args[:n_positional], **dict(zip(kw_names, args[n_positional:])))``."""

    __slots__ = ("fn", "kw_names", "unpack", "n_outputs")

    def __init__(self, fn: Callable, kw_names: tuple[str, ...] = (), unpack: bool = False, n_outputs: int = 1):
        self.fn = fn
        self.kw_names = kw_names
        self.unpack = unpack  # the result is a sequence holding the node's outputs
        self.n_outputs = n_outputs

    def __call__(self, *args):
        if self.kw_names:
            n = len(args) - len(self.kw_names)
            return self.fn(*args[:n], **dict(zip(self.kw_names, args[n:])))
        return self.fn(*args)


def resolve(node) -> Resolved:
    """The callable that runs ``node`` (a ``torch._C.Node`` without blocks)."""
    kind = node.kind()
    n_out = node.outputsSize()
    if kind in STRUCTURAL:
        return Resolved(STRUCTURAL[kind], unpack=kind in UNPACKING, n_outputs=n_out)
    inputs = list(node.inputs())
    if kind in CONTAINER_OPS and inputs and _is_container(inputs[0].type()):
        return Resolved(CONTAINER_OPS[kind], n_outputs=n_out)
    if kind in ANY_VALUE_OPS:
        return Resolved(ANY_VALUE_OPS[kind], n_outputs=n_out)
    schema = _parsed_schema(node)
    if schema is not None and _mutates_container(schema):
        # Going through torch.ops or the JIT would change a copy of the Python list.
        raise UnsupportedNode(f"{kind} changes a list or dict in place, which lsuv-convert does not model")
    overload = _dispatcher_overload(node) if kind not in _INTERPRETER_ONLY else None
    if overload is not None:
        kw = tuple(a.name for a in overload._schema.arguments if a.kwarg_only)
        return Resolved(overload, kw, unpack=n_out > 1, n_outputs=n_out)
    return Resolved(node_function(node), unpack=n_out > 1, n_outputs=n_out)


def _parsed_schema(node):
    try:
        text = node.schema()
    except RuntimeError:
        return None
    return _schema_of(text) if text and text != "(no schema)" else None


# Schema text -> parsed schema / dispatcher overload (or None): a graph names the same few
# schemas hundreds of times, and a zoo the same ones again in every model.
_SCHEMAS: dict[str, Any] = {}
_OVERLOADS: dict[str, Any] = {}


def _schema_of(text: str):
    if text not in _SCHEMAS:
        try:
            _SCHEMAS[text] = torch._C.parse_schema(text)
        except RuntimeError:
            _SCHEMAS[text] = None
    return _SCHEMAS[text]


def _is_container(t) -> bool:
    return t.kind() in ("ListType", "DictType", "StringType")


def _dispatcher_overload(node):
    """``torch.ops.ns.name.overload`` for the node's schema when it has concrete types."""
    try:
        text = node.schema()
    except RuntimeError:
        return None
    if not text or text == "(no schema)" or "..." in text:
        return None
    if text in _OVERLOADS:
        overload = _OVERLOADS[text]
    else:
        try:
            overload = _OVERLOADS[text] = _overload_of(text)
        except LookupError:  # not registered (yet: a library may load it later): not cached
            return None
    if overload is None:
        return None
    schema = overload._schema
    if len(schema.arguments) != node.inputsSize() or len(schema.returns) != node.outputsSize():
        return None
    return overload


def _overload_of(text: str):
    """The dispatcher overload a schema names when it has concrete types, else None;
    LookupError when no such operator is registered."""
    schema = _schema_of(text)
    if schema is None:
        return None
    try:
        ns, name = schema.name.split("::", 1)
        packet = getattr(getattr(torch.ops, ns), name)
        overload = getattr(packet, schema.overload_name or "default")
    except (AttributeError, RuntimeError, ValueError) as exc:
        raise LookupError(schema.name) from exc
    schema = overload._schema
    if any(_is_generic(a.type) for a in list(schema.arguments) + list(schema.returns)):
        return None
    return overload


def _is_generic(t) -> bool:
    if t.kind() in ("VarType", "AnyType", "AnyListType", "AnyTupleType", "AnyClassType", "AnyEnumType"):
        return True
    return any(_is_generic(c) for c in t.containedTypes())


def _mutates_container(schema) -> bool:
    for arg in schema.arguments:
        info = arg.alias_info
        if info is not None and info.is_write and _is_container(arg.type):
            return True
    return False


def node_function(node) -> Callable[..., Any]:
    """A TorchScript function holding a clone of ``node``: runs any op with the JIT's own typing."""
    sub = torch._C.Graph()
    mapping = {}
    for value in node.inputs():
        new = sub.addInput()
        new.setType(value.type())
        mapping[value.unique()] = new
    clone = sub.createClone(node, lambda v: mapping[v.unique()])
    sub.insertNode(clone)
    outputs = list(clone.outputs())
    if len(outputs) == 1:
        sub.registerOutput(outputs[0])
    elif outputs:
        pack = sub.create("prim::TupleConstruct", outputs)
        pack.output().setType(torch._C.TupleType([o.type() for o in outputs]))
        sub.insertNode(pack)
        sub.registerOutput(pack.output())
    else:
        sub.registerOutput(sub.insertConstant(None))
    try:
        function = torch._C._create_function_from_graph("ts_node", sub)
    except RuntimeError as exc:
        raise UnsupportedNode(f"cannot run {node.kind()} outside its graph: {first_line(exc)}") from exc

    def run(*args):
        return function(*args)

    run.__name__ = "ts_" + node.kind().replace("::", "_").strip("_")
    run.__qualname__ = run.__name__
    return run


