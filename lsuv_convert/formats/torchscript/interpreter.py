"""The exact path: run a Program op by op in Python, control flow included.

:class:`ProgramModule` is an ``nn.Module`` whose target layers are real submodules, called
through ``__call__`` wherever the graph uses them, inside ``prim::If`` / ``prim::Loop``
blocks too. The engine's forward-hook walker therefore sees every layer at its first use
in execution order and scales it on its cached input, so LSUV stays linear in cost on
models with data-dependent control flow. Values are dropped after their last use.
The same code runs the If / Loop nodes of the fx path (see :func:`make_control_flow_call`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...errors import DataError, first_line
from .layers import build_layer
from .program import Block, Const, Op, Program, free_values


class BatchErrors:
    """Mixin for the module handed to the engine: an op failing on the batch is the batch's
    DataError (TorchScript's own words), as in the fidelity check, which may have seen only the
    first samples (:func:`.read.prepare_inputs`); a batch size baked into a trace shows here."""

    lsuv_source = None  # the file, for the message

    def __call__(self, *inputs, **kwargs):
        try:
            return super().__call__(*inputs, **kwargs)
        except RuntimeError as exc:
            shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
            raise DataError(f"the model cannot run on the batch of shape {shapes}: {first_line(exc)}",
                            path=self.lsuv_source) from exc


class ProgramModule(BatchErrors, nn.Module):
    """Runs a Program; holds its target layers (by module path) and the tensors it reads."""

    def __init__(self, program: Program):
        super().__init__()
        object.__setattr__(self, "program", program)  # not a submodule, not state
        params = {path: nn.Parameter(t.detach(), requires_grad=False) for path, t in program.params.items()}
        self.param_home: dict[str, tuple[str, str]] = {}
        for module_path in sorted(program.layers, key=lambda p: p.count(".")):
            variants = program.layers[module_path]
            weight_path, bias_path = variants[0].weight_path, variants[0].bias_path
            bias = params[bias_path] if bias_path is not None else None
            extra = {attr: params[path] for attr, path in variants[0].extra_params.items()}
            layer = build_layer(variants, params[weight_path], bias, extra)
            for attr, path in variants[0].extra_params.items():
                self.param_home.setdefault(path, (module_path, attr))
            layer.lsuv_parts = program.layer_parts.get(module_path, 1)
            _install(self, module_path, layer)
            self.param_home.setdefault(weight_path, (module_path, "weight"))
            if bias_path is not None:
                self.param_home.setdefault(bias_path, (module_path, "bias"))
        # Parameters read only by non-layer ops still come from the layer that owns them;
        # a parameter no layer owns is kept with the other tensors.
        state = nn.Module()
        self.state_names: dict[str, str] = {}
        loose_params = [
            (p, t.detach().clone() if p in program.written else t.detach())
            for p, t in program.params.items()
            if p not in self.param_home
        ]
        taken: set[str] = set()
        for key, tensor in list(program.tensors.items()) + loose_params:
            name = _buffer_name(key, taken)
            state.register_buffer(name, tensor, persistent=False)
            self.state_names[key] = name
        self._ts_state = state

    def read_target(self, key: str) -> str:
        """Qualified name (from this module) of the tensor a ``read`` op with ``key`` returns."""
        home = self.param_home.get(key)
        if home is not None:
            return f"{home[0]}.{home[1]}"
        return f"_ts_state.{self.state_names[key]}"

    def forward(self, *inputs):
        program = self.program
        if len(inputs) != len(program.inputs):
            raise TypeError(f"the model takes {len(program.inputs)} input(s), got {len(inputs)}")
        env = {d.value_id: x for d, x in zip(program.inputs, inputs)}
        run = _Run(self, self)
        run.block(program.body, env)
        (out,) = program.body.outputs
        return run.value(out, env)


def _buffer_name(key: str, taken: set[str]) -> str:
    """``layer1.0.bn1.running_mean`` -> ``layer1_0_bn1_running_mean`` (unique, a valid name)."""
    base = "".join(c if c.isalnum() or c == "_" else "_" for c in key)
    if not base or base[0].isdigit():
        base = "t_" + base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _install(root: nn.Module, path: str, module: nn.Module) -> None:
    *parents, leaf = path.split(".")
    holder = root
    for part in parents:
        child = holder._modules.get(part)
        if child is None:
            child = nn.Module()
            holder.add_module(part, child)
        holder = child
    holder.add_module(leaf, module)


class _Run:
    """One execution: the module to read tensors / layers from and attribute assignments."""

    def __init__(self, root: nn.Module, holder: ProgramModule):
        self.root = root  # the module whose submodules run: the ProgramModule or the fx GraphModule
        self.holder = holder
        self.assigned: dict[tuple[str, str], Any] = {}  # prim::SetAttr never touches the real module

    @staticmethod
    def value(arg, env):
        return arg.value if isinstance(arg, Const) else env[arg]

    def block(self, block: Block, env: dict) -> None:
        for op in block.ops:
            self.op(op, env)
            for v in op.frees:
                env.pop(v, None)

    def op(self, op: Op, env: dict) -> None:
        role = op.role
        args = [a.value if isinstance(a, Const) else env[a] for a in op.args]
        if role == "call":
            result = op.call(*args)
        elif role == "layer":
            result = self.root.get_submodule(op.key)(*args)
        elif role == "read":
            result = _get(self.root, self.holder.read_target(op.key))
        elif role == "if":
            self._if(op, args, env)
            return
        elif role == "loop":
            self._loop(op, args, env)
            return
        elif role == "get_attr":
            result = self._get_attr(op.key)
        elif role == "set_attr":
            self.assigned[op.key] = args[0]
            return
        else:  # pragma: no cover - the reader makes no other roles
            raise AssertionError(role)
        self._bind(op, result, env)

    @staticmethod
    def _bind(op: Op, result, env: dict) -> None:
        outputs = op.outputs
        if len(outputs) == 1 and not (op.call is not None and op.call.unpack):
            env[outputs[0]] = result
        elif outputs:
            for v, r in zip(outputs, result, strict=True):
                env[v] = r

    def _if(self, op: Op, args, env: dict) -> None:
        chosen = op.blocks[0] if args[0] else op.blocks[1]
        self.block(chosen, env)
        results = [self.value(a, env) for a in chosen.outputs]
        for v, r in zip(op.outputs, results):
            env[v] = r

    def _loop(self, op: Op, args, env: dict) -> None:
        max_trips, condition, *carried = args
        (body,) = op.blocks
        trip = 0
        while condition and trip < max_trips:
            env[body.inputs[0]] = trip
            for v, c in zip(body.inputs[1:], carried):
                env[v] = c
            self.block(body, env)
            condition, *carried = [self.value(a, env) for a in body.outputs]
            trip += 1
        for v, c in zip(op.outputs, carried):
            env[v] = c

    def _get_attr(self, key):
        if key in self.assigned:
            return self.assigned[key]
        return self.holder.program.attr_owners[key].getattr(key[1])


def _get(root: nn.Module, qualified: str) -> torch.Tensor:
    module_path, _, name = qualified.rpartition(".")
    return getattr(root.get_submodule(module_path), name)


class RootRef:
    """Filled in once the fx GraphModule exists: the module control-flow ops read from."""

    module: nn.Module | None = None


def make_control_flow_call(op: Op, root: RootRef, holder: ProgramModule):
    """An fx-callable running one If / Loop op (with no target layer inside) exactly.

    Its arguments are the op's free values in :func:`free_values` order; it returns the
    op's outputs as a tuple.
    """
    free = free_values(op)

    def run(*values):
        env = dict(zip(free, values))
        _Run(root.module, holder).op(op, env)
        return tuple(env[v] for v in op.outputs)

    run.__name__ = "ts_" + op.kind.replace("::", "_").lower()
    run.__qualname__ = run.__name__
    return run, free
