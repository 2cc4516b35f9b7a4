"""A prototxt (deploy net, train/val net or SOLVER file) into the net the tool executes.

Caffe semantics copied here: a solver names its net inline (``net_param``) or by path
(``net``, ``test_net``, ...); layers are kept or dropped by the TEST-phase ``include`` /
``exclude`` rules; V1 ``layers`` are upgraded; data layers (Data, ImageData, HDF5Data,
DummyData, ...) become graph inputs fed with the user's batch; loss, accuracy and silence
layers are dropped together with what only they consume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelFormatError
from .schema import caffe_pb
from .textformat import BindContext, Field, TextFormatError, bind, parse_text
from .upgrade import UpgradeError, upgrade_v1_layer

TRAIN, TEST = 0, 1

DATA_LAYER_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "DummyData", "MemoryData", "WindowData",
                              "AnnotatedData", "VideoData", "DenseImageData"})
# Layers without bottoms that compute (all others without bottoms are data layers, by role).
SOURCE_LAYER_TYPES = frozenset({"Input", "Parameter"})
# Layer types whose weight LSUV scales (depthwise forks store their weight as Convolution's).
TARGET_TYPES = ("Convolution", "Deconvolution", "InnerProduct", "ConvolutionDepthwise", "DepthwiseConvolution")
SINK_LAYER_TYPES = frozenset({"Accuracy", "Silence", "HDF5Output"})

_SOLVER_ONLY_FIELDS = frozenset({"net", "net_param", "train_net", "test_net", "train_net_param",
                                 "test_net_param", "base_lr", "lr_policy", "solver_type", "solver_mode",
                                 "max_iter", "snapshot_prefix", "test_iter", "type"})
_NET_FIELDS = frozenset({"layer", "layers", "input", "input_dim", "input_shape"})


@dataclass
class NetInput:
    """A blob the user's batch feeds: a declared net input or a replaced data layer's top."""

    name: str
    shape: tuple[int | None, ...] | None  # batch dim None; None entries are unknown
    origin: str  # for messages: "Input layer 'data'", "Data layer 'mnist'", "net input"
    layer: str | None = None  # the layer that declared it (None for legacy net inputs)


@dataclass
class LayerEntry:
    layer: object  # caffe LayerParameter (current format)
    line: int | None  # line of its definition, for messages


@dataclass
class ParsedNet:
    """The TEST-phase net, ready to build: the layers on a path to a target in order, inputs,
    outputs; ``tail`` holds the layers no target depends on (never run)."""

    path: Path  # the file the layers were read from
    source: Path  # the file the user named (a solver, maybe)
    net: object  # the whole NetParameter as read (all phases, upgraded to ``layer``)
    layers: list[LayerEntry]
    inputs: list[NetInput]
    outputs: list[str]
    kind: str  # "deploy", "train_val" or "solver"
    phase: int = TEST
    notes: list[str] = field(default_factory=list)
    tail: list[LayerEntry] = field(default_factory=list)

    def where(self, entry: LayerEntry) -> str:
        return f"layer {entry.layer.name!r}" + (f" (line {entry.line})" if entry.line else "")


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read: {exc.strerror or exc}", path=path) from None
    if b"\x00" in data[:4096]:
        raise ModelFormatError("binary file, not a text prototxt (a .caffemodel goes to --weights)", path=path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_tree(path: Path) -> list[Field]:
    try:
        return parse_text(read_text(path))
    except TextFormatError as exc:
        raise ModelFormatError(f"syntax error at {exc}", path=path) from None


def is_solver(tree: list[Field]) -> bool:
    names = {f.name for f in tree}
    return bool(names & _SOLVER_ONLY_FIELDS) and not (names & _NET_FIELDS)


MAX_OUTPUTS = 1 << 24  # num_output beyond this is no real net: refused before any weight is allocated


def read_model(path: Path, stages: tuple[str, ...] = ()) -> ParsedNet:
    """Parse ``path`` (net or solver) into the TEST-phase net; ``stages`` (``--stage``) are added
    to the net state's stages, as Caffe's ``caffe test -stage`` does."""
    parsed = _read_model(path, stages)
    _check_declared_sizes(parsed)
    return parsed


def _check_declared_sizes(parsed: ParsedNet) -> None:
    """Weights declared by num_output x kernel (at least one input channel) must fit in memory."""
    import math

    from ...budget import check_allocation

    for entry in parsed.layers:
        for field_name in ("convolution_param", "inner_product_param"):
            if not entry.layer.HasField(field_name):
                continue
            p = getattr(entry.layer, field_name)
            outputs = int(p.num_output)
            if outputs > MAX_OUTPUTS:
                raise ModelFormatError(f"{parsed.where(entry)}: num_output {outputs} is beyond any real net "
                                       f"(at most {MAX_OUTPUTS})", path=parsed.path)
            kernel = 1
            if field_name == "convolution_param":
                kernel = math.prod(p.kernel_size) if len(p.kernel_size) else max(int(p.kernel_h), 1) * max(int(p.kernel_w), 1)
            check_allocation(outputs * kernel * 4, f"{parsed.where(entry)}: its weights (num_output {outputs})",
                             path=parsed.path, error=ModelFormatError)


def _read_model(path: Path, stages: tuple[str, ...] = ()) -> ParsedNet:
    tree = parse_tree(path)
    if not tree:
        raise ModelFormatError("empty prototxt: no layers", path=path)
    if is_solver(tree):
        return _from_solver(path, tree, stages)
    net, lines = _bind_net(tree, path)
    kind = "train_val" if any(is_data_layer(e.layer) for e in _all_entries(net, lines)) else "deploy"
    return select(net, lines, path=path, source=path, kind=kind, phase=TEST,
                  state=net.state if net.HasField("state") else None, stages=stages)


def _bind_net(tree: list[Field], path: Path):
    net = caffe_pb.NetParameter()
    ctx = BindContext()
    try:
        bind(net, tree, ctx)
    except TextFormatError as exc:
        raise ModelFormatError(str(exc), path=path) from None
    lines = [f.line for f in tree if f.name in ("layer", "layers")]
    if len(net.layers):
        if len(net.layer):
            raise ModelFormatError("mixes V1 'layers' and current 'layer' definitions", path=path)
        upgraded = []
        for v1 in net.layers:
            try:
                upgraded.append(upgrade_v1_layer(v1))
            except UpgradeError as exc:
                raise ModelFormatError(str(exc), path=path) from None
        del net.layers[:]
        net.layer.extend(upgraded)
    return net, lines


def _all_entries(net, lines) -> list[LayerEntry]:
    return [LayerEntry(layer, lines[i] if i < len(lines) else None) for i, layer in enumerate(net.layer)]


def _from_solver(path: Path, tree: list[Field], stages: tuple[str, ...] = ()) -> ParsedNet:
    solver = caffe_pb.SolverParameter()
    try:
        bind(solver, tree, BindContext())
    except TextFormatError as exc:
        raise ModelFormatError(str(exc), path=path) from None
    by_name = {}
    for f in tree:
        by_name.setdefault(f.name, []).append(f)
    state = solver.test_state[0] if len(solver.test_state) else None
    # Caffe's order for test nets: test_net_param, test_net, then the shared net_param / net.
    if len(solver.test_net_param):
        choice, inline, phase = by_name["test_net_param"][0], True, TEST
    elif len(solver.test_net):
        choice, inline, phase = solver.test_net[0], False, TEST
    elif solver.HasField("net_param"):
        choice, inline, phase = by_name["net_param"][0], True, TEST
    elif solver.HasField("net"):
        choice, inline, phase = solver.net, False, TEST
    elif solver.HasField("train_net_param"):
        choice, inline, phase = by_name["train_net_param"][0], True, TRAIN
        state = solver.train_state if solver.HasField("train_state") else None
    elif solver.HasField("train_net"):
        choice, inline, phase = solver.train_net, False, TRAIN
        state = solver.train_state if solver.HasField("train_state") else None
    else:
        raise ModelFormatError("solver names no net (net, net_param, train_net or test_net)", path=path)
    if inline:
        net, lines = _bind_net(choice.children, path)
        net_path = path
    else:
        net_path = _resolve(path, choice)
        sub_tree = parse_tree(net_path)
        if is_solver(sub_tree):
            raise ModelFormatError("the solver's net file is itself a solver", path=net_path)
        net, lines = _bind_net(sub_tree, net_path)
    parsed = select(net, lines, path=net_path, source=path, kind="solver", phase=phase, state=state, stages=stages)
    if phase == TRAIN:
        parsed.notes.append("the solver defines only a train net: its TRAIN-phase layers are used "
                            "(dropout is still off while LSUV measures)")
    return parsed


def _resolve(solver_path: Path, name: str) -> Path:
    """A net path from a solver: beside the solver first, then (as Caffe does) from the working folder."""
    candidates = [solver_path.parent / name, Path(name)]
    for candidate in candidates:
        if candidate.is_file():
            if not _inside_any(candidate, [solver_path.parent, Path.cwd()]):
                raise ModelFormatError("the solver's net file is outside the solver's folder and the working folder; "
                                       "refused (copy the net beside the solver)", path=solver_path)
            return candidate
    raise ModelFormatError(f"the solver's net file {name!r} is found neither beside the solver nor in the working folder",
                           path=solver_path)


def _inside_any(path: Path, folders: list[Path]) -> bool:
    """Whether ``path`` (links resolved) lies below one of ``folders``: a solver names a net of its
    project, never an arbitrary file of the machine."""
    import os

    real = Path(os.path.realpath(path))
    for folder in folders:
        try:
            real.relative_to(os.path.realpath(folder))
            return True
        except ValueError:
            continue
    return False


# ---------------------------------------------------------------------------------------------
# Phase rules, data layers, sinks
# ---------------------------------------------------------------------------------------------

def _rule_met(rule, phase: int, level: int, stages: set[str]) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def included(layer, phase: int, level: int = 0, stages: set[str] | None = None) -> bool:
    """Caffe's ``Net::StateMeetsRule`` over a layer's include / exclude rules."""
    stages = stages or set()
    if len(layer.include):
        return any(_rule_met(r, phase, level, stages) for r in layer.include)
    return not any(_rule_met(r, phase, level, stages) for r in layer.exclude)


def is_data_layer(layer) -> bool:
    """A data layer by role: tops and no bottoms (DenseImageData, WindowData, Python, any fork's),
    unless it is an Input or a Parameter layer, which compute."""
    if layer.type in DATA_LAYER_TYPES:
        return True
    return not len(layer.bottom) and len(layer.top) > 0 and layer.type not in SOURCE_LAYER_TYPES


def is_sink_layer(layer) -> bool:
    return layer.type.endswith("Loss") or layer.type in SINK_LAYER_TYPES


def select(net, lines, *, path: Path, source: Path, kind: str, phase: int, state=None,
           stages: tuple[str, ...] = ()) -> ParsedNet:
    """The layers a Caffe net built in ``phase`` runs, with data layers turned into inputs."""
    level = state.level if state is not None else 0
    stages = (set(state.stage) if state is not None else set()) | set(stages)
    entries = [e for e in _all_entries(net, lines) if included(e.layer, phase, level, stages)]
    notes: list[str] = []
    inputs = _declared_inputs(net, path)
    candidates: list[NetInput] = []  # data-layer tops: inputs if something consumes them
    available = {i.name for i in inputs}
    dropped_blobs: set[str] = set()
    consumed: set[str] = set()
    kept: list[LayerEntry] = []
    dropped_sinks: list[str] = []
    dropped_dependents: list[str] = []
    seen_tops: dict[str, str] = {}
    for entry in entries:
        layer = entry.layer
        where = f"layer {layer.name!r}" + (f" (line {entry.line})" if entry.line else "")
        if layer.type == "Input" or is_data_layer(layer):
            for i, top in enumerate(layer.top):
                candidates.append(NetInput(top, _data_top_shape(layer, i, path, where),
                                           f"{layer.type} layer {layer.name!r}", layer.name))
                available.add(top)
                seen_tops[top] = layer.name
            continue
        if is_sink_layer(layer):
            dropped_sinks.append(layer.name)
            dropped_blobs.update(t for t in layer.top if t not in available)
            continue
        if not layer.type:
            raise ModelFormatError(f"{where} has no type", path=path)
        missing = [b for b in layer.bottom if b not in available]
        if missing:
            if all(b in dropped_blobs for b in missing):
                dropped_dependents.append(layer.name)
                dropped_blobs.update(layer.top)
                continue
            unknown = next(b for b in missing if b not in dropped_blobs)
            raise ModelFormatError(f"{where}: bottom {unknown!r} is not produced by any earlier layer or input",
                                   path=path)
        for top in layer.top:
            if top in seen_tops and top not in layer.bottom:
                raise ModelFormatError(f"{where}: top {top!r} is already produced by layer {seen_tops[top]!r} "
                                       "(only in-place layers may reuse a blob name)", path=path)
            seen_tops[top] = layer.name
        consumed.update(layer.bottom)
        available.update(layer.top)
        dropped_blobs.difference_update(layer.top)
        kept.append(entry)
    for cand in candidates:
        origin_is_input_layer = cand.origin.startswith("Input ")
        if origin_is_input_layer or cand.name in consumed:
            inputs.append(cand)
    if not kept:
        raise ModelFormatError("the net has no layers to run in the TEST phase", path=path)
    replaced = [c.layer for c in candidates if not c.origin.startswith("Input ") and c in inputs]
    replaced = list(dict.fromkeys(replaced))
    if replaced:
        notes.append("data layer(s) " + ", ".join(repr(n) for n in replaced) + " replaced by the given batch")
    transformed = [e.layer.name for e in entries if e.layer.name in replaced and _transforms(e.layer)]
    if transformed:
        notes.append("the transform_param (scale / mean / crop) of " + ", ".join(repr(n) for n in transformed)
                     + " is not applied: pass the batch as the net should see it")
    if dropped_sinks:
        notes.append(f"dropped {len(dropped_sinks)} loss/accuracy layer(s): " + ", ".join(dropped_sinks[:5])
                     + (" ..." if len(dropped_sinks) > 5 else ""))
    if dropped_dependents:
        notes.append("dropped layer(s) that only consume labels or losses: " + ", ".join(dropped_dependents))
    if stages:
        notes.append("stage(s) " + ", ".join(sorted(stages)) + " select the layers")
    kept, tail = split_tail(kept)
    if tail:
        notes.append(_tail_note(tail))
    outputs = _net_outputs(kept)
    return ParsedNet(path=path, source=source, net=net, layers=kept, inputs=inputs, outputs=outputs,
                     kind=kind, phase=phase, notes=notes, tail=tail)


def _tail_note(tail: list[LayerEntry]) -> str:
    """What was left out: every type with its count, and the first and last layers by name."""
    counts: dict[str, int] = {}
    for e in tail:
        counts[e.layer.type] = counts.get(e.layer.type, 0) + 1
    names = [f"{e.layer.name} ({e.layer.type})" for e in tail]
    shown = ", ".join(names) if len(names) <= 6 else ", ".join(names[:3]) + ", ..., " + ", ".join(names[-3:])
    types = ", ".join(f"{n} {t}" for t, n in counts.items())
    return f"left out {len(tail)} layer(s) no target depends on ({types}): {shown}"


def split_tail(kept: list[LayerEntry]) -> tuple[list[LayerEntry], list[LayerEntry]]:
    """(layers on a path to a target, the rest): walking back from the targets through the
    blobs they read. A net without targets is kept whole (inspect shows it; convert refuses it)."""
    if not any(e.layer.type in TARGET_TYPES for e in kept):
        return kept, []
    needed_blobs: set[str] = set()
    needed = [False] * len(kept)
    for i in range(len(kept) - 1, -1, -1):
        layer = kept[i].layer
        if layer.type in TARGET_TYPES or any(t in needed_blobs for t in layer.top):
            needed[i] = True
            needed_blobs.difference_update(layer.top)
            needed_blobs.update(layer.bottom)
    return ([e for e, n in zip(kept, needed) if n], [e for e, n in zip(kept, needed) if not n])


def _transforms(layer) -> bool:
    t = layer.transform_param
    return layer.HasField("transform_param") and (
        t.scale != 1 or len(t.mean_value) > 0 or bool(t.mean_file) or t.crop_size > 0)


def _net_outputs(kept: list[LayerEntry]) -> list[str]:
    """Blobs no later layer consumes, in the order they are produced (Caffe's net outputs)."""
    outputs: dict[str, None] = {}
    for entry in kept:
        for b in entry.layer.bottom:
            outputs.pop(b, None)
        for t in entry.layer.top:
            outputs.pop(t, None)
            outputs[t] = None
    return list(outputs)


def _declared_inputs(net, path: Path) -> list[NetInput]:
    """Legacy ``input:`` blobs with ``input_shape`` or four ``input_dim`` each."""
    names = list(net.input)
    if not names:
        if len(net.input_shape) or len(net.input_dim):
            raise ModelFormatError("input_shape / input_dim given without 'input' names", path=path)
        return []
    shapes: list[tuple | None]
    if len(net.input_shape):
        if len(net.input_shape) not in (1, len(names)):
            raise ModelFormatError(f"{len(names)} inputs but {len(net.input_shape)} input_shape entries", path=path)
        dims = [list(s.dim) for s in net.input_shape]
        shapes = [tuple(dims[i if len(dims) > 1 else 0]) for i in range(len(names))]
    elif len(net.input_dim):
        if len(net.input_dim) != 4 * len(names):
            raise ModelFormatError(f"{len(names)} inputs need {4 * len(names)} input_dim values, "
                                   f"got {len(net.input_dim)}", path=path)
        shapes = [tuple(net.input_dim[4 * i: 4 * i + 4]) for i in range(len(names))]
    else:
        shapes = [None] * len(names)
    return [NetInput(n, _free_batch(s), "net input") for n, s in zip(names, shapes)]


def _free_batch(shape) -> tuple | None:
    if shape is None:
        return None
    if not shape:
        return ()
    return (None, *[int(d) if d > 0 else None for d in shape[1:]])


def _data_top_shape(layer, index: int, path: Path, where: str):
    """What a data layer tells of the shape of its ``index``-th top (None: unknown)."""
    t = layer.type
    if t == "Input":
        shapes = list(layer.input_param.shape)
        if not shapes:
            return None
        if len(shapes) not in (1, len(layer.top)):
            raise ModelFormatError(f"{where}: {len(layer.top)} tops but {len(shapes)} shapes", path=path)
        return _free_batch(tuple(shapes[index if len(shapes) > 1 else 0].dim))
    if index > 0:
        return None  # labels
    crop = layer.transform_param.crop_size if layer.HasField("transform_param") else 0
    if t == "DummyData":
        p = layer.dummy_data_param
        if len(p.shape):
            return _free_batch(tuple(p.shape[min(index, len(p.shape) - 1)].dim))
        if len(p.channels):
            def pick(values):
                return values[min(index, len(values) - 1)] if len(values) else None
            return (None, pick(p.channels), pick(p.height), pick(p.width))
        return None
    if t == "MemoryData":
        p = layer.memory_data_param
        return (None, p.channels or None, p.height or None, p.width or None)
    if t == "ImageData":
        p = layer.image_data_param
        crop = crop or p.crop_size
        channels = 3 if p.is_color else 1
        if crop:
            return (None, channels, crop, crop)
        if p.new_height and p.new_width:
            return (None, channels, p.new_height, p.new_width)
        return (None, channels, None, None)
    if t in ("Data", "WindowData", "AnnotatedData"):
        return (None, None, crop, crop) if crop else (None, None, None, None)
    return None
