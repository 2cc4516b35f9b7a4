"""The plug-in contract every format honours, checked by code.

A format's life cycle is the same for all of them:

``load(path, request) -> LoadedModel``
    Parse the file (and its companions) and declare the model's inputs. No batch is known yet,
    so nothing that needs one happens here.
``prepare(loaded, inputs, check=True) -> ModelGraph``
    Build the complete torch graph for this batch and run the format's own checks (ONNX's
    fidelity gate against onnxruntime, ...). Only ``prepare`` makes a ``ModelGraph``, and it
    hands out only complete ones (module built, every target resolvable to a weight).
``account(graph, reports)``
    What happened to every parameter tensor, named as in the file (the log's ``account``).
    The default accounts for the module's parameters; a format whose file names its tensors
    otherwise (ONNX) or holds tensors no module has (TorchScript) overrides it.
``save(graph, out_path, provenance)``
    Write the initialized graph back in the format, with the tool's provenance where the format
    has room for it. Refuses a graph that ``prepare`` did not check, so no format can skip its
    checks by being called in another order.
``measure(model_path, weights_path, inputs, names=None)``
    ``{layer name: (variance, mean)}`` of each target layer's output in the written file,
    computed by the format's own runtime (``verify``). ``names=None`` means every target;
    an unknown name is an error, in every format.

Plug-ins implement the hooks ``read``, ``build``, ``write`` and (optionally) ``account`` and ``measure_all``;
the public methods above are template methods that check before and after they call them.
Plug-in modules import torch/onnx/... lazily (inside functions) so that discovering formats
stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from ..errors import DataError, ModelFormatError, UsageError
from .model_graph import InputSpec, ModelGraph, TargetLayer, required_count


@dataclass(frozen=True)
class LoadRequest:
    """What the user said about how to read a model, beyond its path.

    ``trust_code`` is a permission every format honours; ``stream`` a preference (a format that
    can't stream loads the model whole). The other fields are *format options*:
    a plug-in names the ones it takes in :attr:`ModelFormat.options`, and ``load`` refuses any
    other that is set, so ``--arch`` on an ONNX file is a usage error, never silently ignored.
    Each option field's metadata names the command-line flag that sets it (for that message).
    """

    weights: Path | None = field(default=None, metadata={"flag": "--weights"})  # trained weights to start from (Caffe .caffemodel)
    arch: str | None = field(default=None, metadata={"flag": "--arch"})  # architecture for checkpoints that hold only tensors
    stages: tuple[str, ...] = field(default=(), metadata={"flag": "--stage"})  # Caffe net stages (include/exclude { stage })
    trust_code: bool = False  # run code, operators and pickles a file carries that the trust checks refuse (--trust-code)
    stream: bool = True  # stream the model layer by layer where the format can (--stream / --no-stream)

    def set_options(self) -> list[str]:
        """The format option fields this request sets (non-default values), in field order."""
        return [f.name for f in fields(self) if "flag" in f.metadata and getattr(self, f.name) != f.default]

    @staticmethod
    def flag(option: str) -> str:
        return next(f.metadata["flag"] for f in fields(LoadRequest) if f.name == option)


@dataclass
class LoadedModel:
    """A parsed model file: what it declares, before a batch is known."""

    format: str
    source: Path
    inputs: list[InputSpec]
    state: Any  # format-private
    targets: list[TargetLayer] = field(default_factory=list)  # declared targets (for inspect), may lack modules
    notes: list[str] = field(default_factory=list)
    request: LoadRequest = field(default_factory=LoadRequest)
    provenance: dict = field(default_factory=dict)  # what a written file records about its making (inspect shows it)


class ModelFormat(ABC):
    """Base class of format plug-ins; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    extensions: ClassVar[tuple[str, ...]] = ()  # lower-case, with the dot; what a folder walk picks up
    output_extension: ClassVar[str] = ""  # "" means: same as the input's
    options: ClassVar[frozenset[str]] = frozenset()  # the LoadRequest format options this format takes

    # ---- hooks a plug-in implements -------------------------------------------------------------
    @classmethod
    def claims_directory(cls, path: Path) -> bool:
        """Whether the folder ``path`` is one model of this format (a Hugging Face model folder),
        rather than a zoo to search. Must be cheap: only file names are looked at."""
        return False

    @abstractmethod
    def sniff(self, path: Path) -> bool:
        """Cheap check (a few bytes) that ``path`` is a file of this format."""

    @abstractmethod
    def read(self, path: Path, request: LoadRequest) -> LoadedModel:
        """Parse ``path``; declare inputs (and, where known, targets)."""

    @abstractmethod
    def build(self, loaded: LoadedModel, inputs: list[Any], check: bool) -> ModelGraph:
        """The complete torch graph for this batch; ``check`` runs the format's own checks."""

    @abstractmethod
    def write(self, graph: ModelGraph, out_path: Path, provenance: dict) -> None:
        """Write ``graph``'s weights back in this format, atomically; ``provenance`` (tool version,
        seed, settings, batch hash) goes into the file where the format keeps metadata."""

    def stream_of(self, graph: ModelGraph):
        """How the graph streams, when the format built it without its weights: an object with a
        ``source`` (tensors read from the file as their layer runs), ``open(out, provenance)``
        (the sink the fitted tensors are written to during the pass; ``save`` then puts the output in
        place) and ``discard()``; None (the default): the graph holds its weights."""
        return None

    def account(self, graph: ModelGraph, reports) -> list:
        """The log's account of every parameter (:class:`~lsuv_convert.lsuv.account.ParamAccount`),
        named as in the file, given the engine's layer reports."""
        from ..lsuv.account import module_graph_account

        return module_graph_account(graph.module, graph.targets, reports)

    def measure_all(self, model_path: Path, weights_path: Path | None, inputs: list[Any],
                    request: LoadRequest | None = None) -> dict[str, tuple[float, float]]:
        """Every target's (variance, mean) in the written file, by the format's own runtime;
        ``request`` is what the user said about reading it (``--arch`` for a state_dict)."""
        raise ModelFormatError(f"{self.name} has no independent runtime to verify with", path=model_path)

    # ---- template methods the pipeline calls ------------------------------------------------------
    def load(self, path: Path | str, request: LoadRequest | None = None, **given) -> LoadedModel:
        """Parse ``path``. ``given`` are LoadRequest fields, for callers that name one or two.
        A format option this format doesn't take is refused before the file is read."""
        request = request if request is not None else LoadRequest(**given)
        self.check_options(request, path)
        loaded = self.read(Path(path), request)
        if loaded.format != self.name:
            raise TypeError(f"{type(self).__name__}.read returned a {loaded.format!r} model")
        loaded.request = request
        return loaded

    def prepare(self, loaded: LoadedModel, inputs: list[Any], *, check: bool = True) -> ModelGraph:
        """Check the batch fits the declared inputs, build the graph, check it is complete."""
        if loaded.format != self.name:
            raise TypeError(f"a {loaded.format!r} model handed to the {self.name!r} plug-in")
        check_inputs(loaded.inputs, inputs, loaded.source)
        graph = self.build(loaded, inputs, check)
        _check_complete(graph, self.name)
        if graph.run_inputs is None:
            graph.run_inputs = list(inputs)
        graph.checked = bool(check)
        return graph

    def save(self, graph: ModelGraph, out_path: Path | str, provenance: dict | None = None) -> None:
        """Write ``graph``; only a graph ``prepare`` built with its checks on can be written."""
        if graph.format != self.name:
            raise TypeError(f"a {graph.format!r} graph handed to the {self.name!r} plug-in")
        if not graph.checked:
            raise RuntimeError("save() needs a graph from prepare(..., check=True): its checks never ran")
        self.write(graph, Path(out_path), dict(provenance or {}))

    def measure(self, model_path: Path | str, weights_path: Path | str | None, inputs: list[Any],
                names: list[str] | None = None, request: LoadRequest | None = None) -> dict[str, tuple[float, float]]:
        """``{name: (variance, mean)}`` for ``names`` (None: every target), by the format's runtime.

        A target that holds several maps is measured per map, named as in the conversion log:
        ``NAME[q]``, ``NAME[k]``, ``NAME[v]`` for a packed weight, ``NAME.out_proj`` for an attention's
        output projection; those entries all belong to the target ``NAME``."""
        stats = self.measure_all(Path(model_path), Path(weights_path) if weights_path is not None else None, inputs,
                                 request=request)
        if names is None:
            return stats
        owned: dict[str, list[str]] = {n: [] for n in names}
        for entry in stats:
            owner = owning_target(entry, owned)
            if owner is not None:
                owned[owner].append(entry)
        unknown = [n for n in names if not owned[n]]
        if unknown:
            raise ModelFormatError(f"no target layer named {unknown[0]!r} in this model", path=model_path)
        return {entry: stats[entry] for n in names for entry in owned[n]}

    def check_options(self, request: LoadRequest, path: Path | str) -> None:
        """Refuse a format option this format doesn't take (``--arch`` on an ONNX file), naming it."""
        refused = [o for o in request.set_options() if o not in self.options]
        if refused:
            flag = LoadRequest.flag(refused[0])
            takes = ", ".join(LoadRequest.flag(o) for o in sorted(self.options)) or "none"
            raise UsageError(f"{flag} does not apply to this {self.name} model (format options of {self.name}: {takes})",
                             path=path)

    # ---- naming and companions ---------------------------------------------------------------------

    def matches(self, path: Path) -> bool:
        """Whether ``path``'s name has one of this format's model extensions."""
        name = path.name.lower()
        return any(name.endswith(ext) for ext in self.extensions)

    def in_place_output(self, path: Path, weights: Path | None) -> Path:
        """Where ``--in-place`` writes: over the model file itself."""
        return path

    def written_pair(self, path: Path, weights: Path | None) -> tuple[Path, Path | None]:
        """(model file, weights file) to verify, given what the user named. A format whose output
        is a separate weights file overrides this to find its definition beside it."""
        return path, weights

    def default_output(self, path: Path) -> Path:
        """``NAME.lsuv.EXT`` beside the input."""
        ext = self.output_extension or matched_extension(path, self.extensions)
        stem = path.name[: len(path.name) - len(ext)] if path.name.lower().endswith(ext.lower()) else path.stem
        return path.with_name(f"{stem}.lsuv{ext}")

    def read_files(self, loaded: LoadedModel) -> list[Path]:
        """Every file loading ``loaded`` read (model, companions, weights): what an up-to-date
        record hashes. A format that reads more (external data, a solver's net) adds them."""
        files = [loaded.source]
        if loaded.request.weights is not None:
            files.append(Path(loaded.request.weights))
        return files

    def companion_files(self, path: Path, request: LoadRequest) -> list[Path]:
        """Files besides ``path`` and ``--weights`` that loading will read, found cheaply before
        any work (a solver's net file), so the runner checks them against every path it writes.
        Files found only by a full load are checked after it (:meth:`read_files`)."""
        return []

    def output_files(self, out_path: Path) -> list[Path]:
        """Every file a write to ``out_path`` creates (a side data file, ...): the unit that is replaced."""
        return [out_path]


def owning_target(entry: str, targets) -> str | None:
    """The target a measured map belongs to: itself, or the longest target ``T`` of which it is
    ``T[...]`` (a slice: q / k / v) or ``T.x`` (an attention's ``out_proj``)."""
    if entry in targets:
        return entry
    found = [t for t in targets if entry.startswith((f"{t}[", f"{t}."))]
    return max(found, key=len) if found else None


def matched_extension(path: Path, extensions: tuple[str, ...]) -> str:
    """The longest of ``extensions`` ``path`` ends with, spelled as in the path."""
    name = path.name.lower()
    for ext in sorted(extensions, key=len, reverse=True):
        if name.endswith(ext):
            return path.name[len(path.name) - len(ext):]
    return path.suffix


def _check_complete(graph: ModelGraph, name: str) -> None:
    """A plug-in's build() must hand back a graph the engine can walk and save() can write."""
    if not isinstance(graph, ModelGraph) or graph.module is None:
        raise TypeError(f"the {name!r} plug-in built no module")
    if graph.format != name:
        raise TypeError(f"the {name!r} plug-in built a {graph.format!r} graph")
    for target in graph.targets:
        try:
            layer = graph.module.get_submodule(target.module_path)
        except AttributeError:
            layer = None
        # an attention target (nn.MultiheadAttention) holds in_proj_weight or q/k/v_proj_weight
        weight = next((getattr(layer, a, None) for a in ("weight", "in_proj_weight", "q_proj_weight")
                       if getattr(layer, a, None) is not None), None)
        if weight is None:
            raise TypeError(f"the {name!r} plug-in's target {target.name!r} has no module with a weight "
                            f"at {target.module_path!r}")


def check_inputs(specs: list[InputSpec], inputs: list[Any], source: Path | None = None) -> None:
    """Raise DataError naming expected vs given when the batch doesn't fit the declared inputs."""
    required = required_count(specs)
    if not required <= len(inputs) <= len(specs):
        names = ", ".join(s.name + (" (optional)" if s.optional else "") for s in specs)
        raise DataError(f"model has {len(specs)} input(s) ({names}) but {len(inputs)} array(s) were given", path=source)
    for spec, tensor in zip(specs, inputs):
        given = tuple(tensor.shape)
        if spec.shape is None:
            continue
        if len(given) != len(spec.shape):
            raise DataError(
                f"input {spec.name!r} expects rank {len(spec.shape)} {_fmt(spec.shape)}, got rank {len(given)} {given}",
                path=source,
            )
        for axis, (want, got) in enumerate(zip(spec.shape, given)):
            if want is not None and want != got and axis not in spec.default_axes:
                what = {0: "batch size", 1: "channels"}.get(axis, f"size of axis {axis}")
                raise DataError(
                    f"input {spec.name!r}: {what} {got} does not fit the model, which expects {_fmt(spec.shape)}; got {given}",
                    path=source,
                )


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if i == 0 and d is None else ("?" if d is None else str(d)) for i, d in enumerate(shape)) + ")"
