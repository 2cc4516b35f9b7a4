"""Read a TorchScript file (a LoadedModel whose state holds the translated graph), make its
ModelGraph, and check the batch against the real module.

``torch.jit.load`` runs no Python pickle code: TorchScript archives are read by torch's own
restricted unpickler and their code is compiled TorchScript. Anything that isn't a
TorchScript archive is refused before torch sees it (see :mod:`.archive`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import ConversionError, DataError, ModelFormatError, first_line
from ..contract import LoadedModel
from ..model_graph import InputSpec, ModelGraph, TargetLayer
from ...timings import stage
from .archive import ArchiveInfo, inspect_archive
from .interpreter import ProgramModule
from .program import Program, ProgramError, read_program
from .quiet import jit_deprecation_silenced
from .to_fx import to_graph_module
from .usage import input_types, skipped_parameters


@dataclass
class ScriptState:
    """The loaded module, how it looked when loaded, and its translation (which doesn't depend on
    the batch shape, so reading makes it once; ``graph_of`` wraps it into the ModelGraph)."""

    module: Any  # torch.jit.RecursiveScriptModule, in eval mode while we work on it
    program: Program
    archive: ArchiveInfo | None
    extra_files: dict[str, bytes]
    training: dict[str, bool] = field(default_factory=dict)  # submodule path -> training flag as loaded
    translated: Any = None  # the module the engine walks: an fx GraphModule, or the exact interpreter
    engine_path: str = "fx"
    # parameters no target holds (the account lists them as skipped): name, shape, reason, linear
    skipped_params: list[dict] = field(default_factory=list)


def load_script(path: Path, *, trust_code: bool = False) -> LoadedModel:
    with stage("parse"):  # the archive's layout and code check, then torch.jit.load
        info = inspect_archive(path, check_code=not trust_code)
        extra = {name: "" for name in info.extra_files}
        script_module = _jit_load(path, extra)
    with stage("conversion"):  # the inlined graph read into a Program, then an fx graph
        return read_script(script_module, path, info, extra)


def read_script(script_module, path, info=None, extra=None) -> LoadedModel:
    """A loaded ScriptModule read and translated (``path`` names it in messages)."""
    extra = extra or {}
    training = training_flags(script_module)
    set_training(script_module, {name: False for name in training})
    try:
        program = read_program(script_module)
    except ProgramError as exc:
        raise ModelFormatError(f"cannot run this TorchScript graph: {exc}", path=path) from None
    except (RuntimeError, AttributeError) as exc:  # e.g. no forward method
        raise ModelFormatError(f"cannot read the TorchScript forward graph: {_last_line(str(exc))}", path=path) from None
    fused = _fused_kernels(program)
    if not program.layers and fused:
        raise ModelFormatError(
            f"its layers run inside torch's fused kernel(s) {', '.join(fused)} (traced in eval mode under "
            "torch.no_grad), which cannot be split into linear maps: trace it again after "
            "torch.backends.mha.set_fastpath_enabled(False)", path=path)
    if not program.layers:
        raise ModelFormatError(
            "has no conv / linear layer whose weight is a parameter (a torch.jit.freeze'd module keeps its "
            "weights as constants: save the module before freezing)",
            path=path,
        )
    holder = ProgramModule(program)
    notes = []
    blockers = program.fx_blockers
    if blockers:
        module, engine_path = holder, "hooks"
        notes.append(
            "engine path: exact TorchScript interpreter with forward hooks (still one forward pass), because "
            + "; ".join(blockers)
        )
    else:
        try:
            module, engine_path = to_graph_module(holder), "fx"
            notes.append("engine path: fx (the inlined TorchScript graph translated node by node)")
        except Exception as exc:  # noqa: BLE001 - any fx limitation: the interpreter runs everything
            module, engine_path = holder, "hooks"
            notes.append(f"engine path: exact TorchScript interpreter with forward hooks (fx translation failed: {exc})")
    module.lsuv_source = path
    if program.untouched_params:
        shown = ", ".join(program.untouched_params[:8]) + (" ..." if len(program.untouched_params) > 8 else "")
        notes.append(f"parameters left as they are (no conv / linear op of the inlined forward graph uses them as its weight): {shown}")
    if program.training_ops:
        notes.append(
            "the graph runs " + ", ".join(program.training_ops) + " in training mode (traced from a model in "
            "train mode: the flag is part of the traced code), so LSUV measured with it; its running statistics "
            "are saved unchanged; trace the model after model.eval() for inference-mode statistics"
        )
    notes.append("TorchScript declares no input shape: the batch given with --data sets it")
    targets = [
        TargetLayer(name=program.layer_names[mp], op=calls[0].kind, module_path=mp, binding=(calls[0].weight_path, calls[0].bias_path))
        for mp, calls in program.layers.items()
    ]
    state = ScriptState(script_module, program, info, dict(extra), training, translated=module,
                        engine_path=engine_path, skipped_params=skipped_parameters(script_module, program))
    return LoadedModel(format="torchscript", source=path, inputs=_input_specs(program), state=state,
                       targets=targets, notes=notes)


def graph_of(loaded: LoadedModel) -> ModelGraph:
    """The ModelGraph of a read TorchScript model: its translation, the same for every batch."""
    state: ScriptState = loaded.state
    return ModelGraph(module=state.translated, targets=list(loaded.targets), inputs=loaded.inputs,
                      format="torchscript", source=loaded.source, state=state, notes=list(loaded.notes),
                      engine_path=state.engine_path)


_FUSED = ("aten::_transformer_encoder_layer_fwd", "aten::_transformer_decoder_only_layer_fwd")


def _fused_kernels(program: Program) -> list[str]:
    from .usage import _ops

    return sorted({op.kind for op in _ops(program.body.ops) if op.kind in _FUSED})


def _input_specs(program: Program) -> list[InputSpec]:
    """Inputs by name; integer ids (an input that indexes an embedding) and masks typed as such."""
    typed = input_types(program)
    specs = []
    for d in program.inputs:
        dtype, high = typed.get(d.name, ("float32", None))
        specs.append(InputSpec(d.name, None, dtype=dtype, high=high))
    return specs


def training_flags(script_module) -> dict[str, bool]:
    """Submodule path -> ``training`` (frozen modules have no such attribute)."""
    return {name: bool(m._c.getattr("training")) for name, m in script_module.named_modules() if m._c.hasattr("training")}


def set_training(script_module, flags: dict[str, bool]) -> None:
    modules = dict(script_module.named_modules())
    for name, flag in flags.items():
        modules[name]._c.setattr("training", flag)


def _jit_load(path: Path, extra: dict):
    try:
        with jit_deprecation_silenced():
            return torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError / ValueError / c10::Error alike
        text = str(exc)
        found = re.search(r"version (\d+), but the maximum supported version for reading is (\d+)", text)
        if found:
            raise ModelFormatError(
                f"was written by a newer PyTorch (file format version {found.group(1)}; torch {torch.__version__} "
                f"reads up to {found.group(2)}): load it with a newer torch, or re-export it with this one",
                path=path,
            ) from None
        first = _last_line(text)
        compile_error = _code_location(text)
        if compile_error or "Unknown builtin op" in text or "Unknown type" in text:
            raise ModelFormatError(
                f"its TorchScript code does not compile with torch {torch.__version__} (written by a newer PyTorch, "
                f"or it needs a custom-op library): {first}{compile_error}",
                path=path,
            ) from None
        raise ModelFormatError(f"torch.jit.load cannot read it: {first}", path=path) from None


def _code_location(text: str) -> str:
    """`` at code/x.py line N: <source>`` from a TorchScript compile error, or ""."""
    lines = text.splitlines()
    found = next((re.search(r'File "(code/[^"]+)", line (\d+)', line) for line in lines if 'File "code/' in line), None)
    if found is None:
        return ""
    marker = next((i for i, line in enumerate(lines) if "<--- HERE" in line), None)
    line = lines[marker - 1].strip() if marker else ""
    source = f": {line[:60]}{'...' if len(line) > 60 else ''}" if marker else ""  # a short piece of the file only
    return f" (at {found.group(1)} line {found.group(2)}{source})"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("RuntimeError:", "Unknown", "Attempted")) or "unknown" in line.lower():
            return line
    return lines[0] if lines else "unknown error"


# The fidelity check runs this many leading samples when the graph lets a sub-batch prove as
# much as the whole one (see _check_rows): every op is the node's own aten overload, so a
# translation mistake shows on any sample, and the full batch meets the graph in the engine.
CHECK_SAMPLES = 2


def prepare_inputs(graph: ModelGraph, inputs: list) -> None:
    """Run the real ScriptModule and our module on the batch; they must agree.

    Catches a batch that doesn't fit (TorchScript's own error, as a DataError) and any
    translation mistake (ConversionError), before the engine changes a weight. A straight-line
    graph (no ``prim::If`` / ``prim::Loop`` left after folding) is checked on the first
    :data:`CHECK_SAMPLES` samples: it runs the same ops whatever the data, and two forward
    passes of the whole batch would cost more than the LSUV pass itself. Should TorchScript
    refuse the sub-batch (a batch size baked into a trace), the whole batch decides.
    """
    state: ScriptState = graph.state
    script_module = state.module
    dtype = next((p.dtype for p in script_module.parameters() if p.is_floating_point()), torch.float32)
    args = [x.to(dtype) if x.is_floating_point() else x for x in inputs]
    rows = _check_rows(state.program, args)
    if rows is not None:
        try:
            expected = _run_script(graph, [x[:rows] for x in args])
        except DataError:
            pass  # maybe only this size: the whole batch decides below
        else:
            _compare_translation(graph, [x[:rows] for x in args], expected)
            note = (f"fidelity check: the translated graph agrees with TorchScript on the batch's first {rows} "
                    "samples (a straight-line graph runs the same ops on every sample)")
            if note not in graph.notes:
                graph.notes.append(note)
            return
    _compare_translation(graph, args, _run_script(graph, args))


def _check_rows(program: Program, args: list) -> int | None:
    """How many leading samples the check runs on, or None for the whole batch.

    The whole batch where the graph branches or loops (a sub-batch may take another path),
    where an input has no batch axis shared with the others, or where the batch is small anyway.
    """
    if program.has_control_flow:
        return None
    if not args or any(not isinstance(x, torch.Tensor) or x.dim() == 0 for x in args):
        return None
    sizes = {int(x.shape[0]) for x in args}
    if len(sizes) != 1 or sizes.pop() <= CHECK_SAMPLES:
        return None
    return CHECK_SAMPLES


_SEED = 12345  # the same dropout masks in both runs, should the graph have live dropout


def _run_script(graph: ModelGraph, args: list):
    """The real ScriptModule's output on ``args``, its mutable state left as it was."""
    state: ScriptState = graph.state
    restore = _snapshot_mutable(state)
    try:
        # The JIT's profiling executor spends seconds optimizing a big graph on its first
        # calls; one plain run is all that is needed here.
        with torch.no_grad(), torch.jit.optimized_execution(False), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            return state.module(*args)
    except Exception as exc:  # noqa: BLE001 - the model's own error on this batch
        shapes = ", ".join(str(tuple(x.shape)) for x in args)
        raise DataError(f"the model cannot run on the batch of shape {shapes}: {first_line(exc)}", path=graph.source) from None
    finally:
        restore()


def _compare_translation(graph: ModelGraph, args: list, expected) -> None:
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(_SEED)
            actual = graph.module(*args)
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc, DataError) and exc.__cause__ is not None else exc  # the op's own words
        raise ConversionError(f"the translated graph fails where TorchScript runs: {first_line(cause)}", path=graph.source) from exc
    problem = _compare(expected, actual)
    if problem:
        raise ConversionError(f"the translated graph disagrees with TorchScript on the batch: {problem}", path=graph.source)


def _snapshot_mutable(state: ScriptState):
    """Save what a forward pass may change in the real module (buffers it writes, attributes it sets)."""
    program = state.program
    module = state.module
    saved_tensors = {}
    for path in program.written:
        tensor = _attribute(module._c, path)
        if isinstance(tensor, torch.Tensor):
            saved_tensors[path] = (tensor, tensor.detach().clone())
    saved_attrs = {key: (owner, owner.getattr(key[1])) for key, owner in program.attr_owners.items()} if program.set_attrs else {}

    def restore():
        with torch.no_grad():
            for tensor, copy in saved_tensors.values():
                tensor.copy_(copy)
        for (_path, name), (owner, value) in saved_attrs.items():
            owner.setattr(name, value)

    return restore


def _attribute(owner, path: str):
    """A (tensor) attribute by its dotted path, plain tensor attributes included."""
    for name in path.split("."):
        owner = owner.getattr(name)
    return owner


def _compare(expected, actual, where: str = "output") -> str | None:
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            return f"{where}: expected a tensor, got {type(actual).__name__}"
        if expected.shape != actual.shape:
            return f"{where}: shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
        if not expected.is_floating_point():
            return None if torch.equal(expected, actual) else f"{where}: values differ"
        e, a = expected.double(), actual.double()
        scale = float(e.abs().max()) if e.numel() else 0.0
        diff = float((e - a).abs().nan_to_num(nan=float("inf")).max()) if e.numel() else 0.0
        both_nan = bool((e.isnan() == a.isnan()).all())
        if diff > 1e-4 * max(scale, 1.0) and not (both_nan and diff == float("inf")):
            return f"{where}: max abs difference {diff:.3g} (output magnitude {scale:.3g})"
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            return f"{where}: structure differs"
        for i, (e, a) in enumerate(zip(expected, actual)):
            problem = _compare(e, a, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return f"{where}: keys differ"
        for k in expected:
            problem = _compare(expected[k], actual[k], f"{where}[{k!r}]")
            if problem:
                return problem
        return None
    return None if expected == actual else f"{where}: {actual!r} instead of {expected!r}"
