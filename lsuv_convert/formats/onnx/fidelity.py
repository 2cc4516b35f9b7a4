"""The fidelity gate: the torch graph must compute what onnxruntime computes, on the user's batch.

onnx2torch can convert a model silently wrong (it did so for densenet121). Comparing only the
model outputs is not enough: an untrained classifier head full of zeros hides everything
before it. So every target layer's output is compared too, relative to that tensor's own
scale, and on failure every node is compared to name the first one that diverges.

The gate runs on the first eighth of the batch (at least 2 samples) when the model's inputs
all share a batch dimension that the file leaves free: a conversion computes the same function
whatever the batch, and the gate then costs an eighth of a forward pass in each runtime and holds
an eighth of the target outputs. Whenever the sample is refused or fails to run (a file with a
batch size baked into a Reshape, a mismatch), the whole batch is judged instead, so the verdict
on a refused model is the whole batch's.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ...errors import ConversionError, first_line
from . import runtime

REL_TOL_FLOAT = 1e-3  # float32 / float64: implementation differences stay ~1e-6 of the scale
REL_TOL_HALF = 3e-2
RANDOM_OPS = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Multinomial", "Bernoulli")  # float16: rounding at different points, accumulated over the depth


GATE_SHARE = 8  # the gate's sample is this fraction of the batch...
GATE_MIN_SAMPLES = 2  # ...and at least this many samples


def gate_sample(model: onnx.ModelProto, inputs: list) -> list | None:
    """The first rows of every input, enough to judge a conversion; None when the whole batch
    must be used (inputs without a common leading dimension, one the file fixes, or a small batch)."""
    specs = runtime.graph_inputs(model)
    if not inputs or len(specs) != len(inputs):
        return None
    sizes = {tuple(x.shape)[0] if getattr(x, "ndim", 0) >= 1 else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        return None
    size = sizes.pop()
    keep = max(GATE_MIN_SAMPLES, size // GATE_SHARE)
    if keep >= size:
        return None
    for spec in specs:
        dims = spec.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return None
    return [x[:keep] for x in inputs]


def gate(gm, model: onnx.ModelProto, inputs: list, tensors: dict[str, tuple[str, int]], watch: list[str],
         dtypes: list, labels: dict[str, str], source) -> tuple[float, list]:
    """:func:`check` on :func:`gate_sample` of the batch, or on the whole batch where the sample
    can't be used or doesn't pass. Returns (worst divergence, the inputs that passed)."""
    sample = gate_sample(model, inputs)
    if sample is not None:
        try:
            return check(gm, model, sample, tensors, watch, dtypes, labels, source, diagnose=False), sample
        except ConversionError:
            pass  # judged on the whole batch below
    return check(gm, model, inputs, tensors, watch, dtypes, labels, source), list(inputs)


def state_outside(gm, targets: dict[str, list[str]]) -> dict:
    """What the torch graph holds besides the target parameters (``targets``: module path -> its
    parameter names): each tensor's identity and in-place version counter, and the generated
    code. Equal before and after LSUV means that only the targets changed since the gate."""
    skip = {f"{path}.{name}" for path, names in targets.items() for name in names}
    held = {}
    for name, tensor in [*gm.named_parameters(remove_duplicate=False), *gm.named_buffers(remove_duplicate=False)]:
        if name not in skip:
            held[name] = (id(tensor), tensor._version)
    return {"tensors": held, "code": gm.code}


def tolerance(reference: np.ndarray) -> float:
    return REL_TOL_HALF if reference.dtype == np.float16 else REL_TOL_FLOAT


def divergence(reference: np.ndarray, value) -> float:
    """max |value - reference| relative to the larger magnitude of the two; inf on shape,
    dtype-kind or NaN/inf-pattern mismatch, 0 for equal integer tensors.

    Computed with torch in the tensors' own float precision (float32 unless one is float64),
    multi-threaded and without float64 copies: the gate compares every target output of the
    batch, so this runs over about as many elements as the forward pass produces.
    """
    if value is None:
        return float("inf")
    ref = torch.from_numpy(np.ascontiguousarray(reference))
    got = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
    if tuple(ref.shape) != tuple(got.shape):
        return float("inf")
    if ref.numel() == 0:
        return 0.0
    if not ref.is_floating_point() or not got.is_floating_point():
        if ref.dtype == torch.bool or got.dtype == torch.bool or ref.is_floating_point() != got.is_floating_point():
            return 0.0 if np.array_equal(np.asarray(reference), got.numpy()) else float("inf")
        return 0.0 if torch.equal(ref.to(torch.int64), got.to(torch.int64)) else float("inf")
    dtype = torch.float64 if torch.float64 in (ref.dtype, got.dtype) else torch.float32
    ref, got = ref.to(dtype), got.to(dtype)
    inf = float("inf")
    scale = max(float(torch.linalg.vector_norm(ref, ord=inf)), float(torch.linalg.vector_norm(got, ord=inf)))
    if np.isfinite(scale):  # both all finite (a NaN or inf in either makes its max norm NaN or inf)
        return 0.0 if scale == 0.0 else float(torch.linalg.vector_norm(ref - got, ord=inf)) / scale
    finite = torch.isfinite(ref)
    if not torch.equal(finite, torch.isfinite(got)):
        return float("inf")
    if not bool(finite.all()):
        if not torch.equal(ref[~finite], got[~finite]):
            return float("inf")
        if not bool(finite.any()):
            return 0.0
        ref, got = ref[finite], got[finite]
    scale = max(float(torch.linalg.vector_norm(ref, ord=inf)), float(torch.linalg.vector_norm(got, ord=inf)))
    if scale == 0.0:
        return 0.0
    return float(torch.linalg.vector_norm(ref - got, ord=inf)) / scale


class _NodeFailure(Exception):
    def __init__(self, module_path: str, exc: BaseException):
        super().__init__(module_path)
        self.module_path = module_path
        self.exc = exc


def torch_values(gm, inputs: list, tensors: dict[str, tuple[str, int]], dtypes: list, consume=None) -> dict[str, torch.Tensor]:
    """Values of ONNX ``tensors`` (name -> (module path, output index)) computed by ``gm``.

    With ``consume(name, value)``, each value is handed over as it is computed and not kept
    (so the whole set of watched tensors is never alive at once)."""
    import torch.fx

    wanted: dict[str, list[tuple[str, int]]] = {}
    for name, (path, index) in tensors.items():
        wanted.setdefault(path, []).append((name, index))
    found: dict[str, torch.Tensor] = {}

    class _Recorder(torch.fx.Interpreter):
        def call_module(self, target, args, kwargs):
            try:
                out = super().call_module(target, args, kwargs)
            except Exception as exc:
                raise _NodeFailure(target, exc) from exc
            for name, index in wanted.get(target, ()):
                if isinstance(out, (tuple, list)):
                    if index < len(out):
                        found[name] = out[index]
                elif index == 0:
                    found[name] = out
                if consume is not None and name in found:
                    consume(name, found.pop(name))
            return out

    args = [torch.as_tensor(x).to(dtype) if dtype is not None else torch.as_tensor(x) for x, dtype in zip(inputs, dtypes)]
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            _Recorder(gm).run(*args)
    finally:
        gm.train(was_training)
    return found


def check(gm, model: onnx.ModelProto, inputs: list, tensors: dict[str, tuple[str, int]], watch: list[str],
          dtypes: list, labels: dict[str, str], source, what: str = "the converted torch graph", diagnose: bool = True) -> float:
    """Raise ConversionError unless ``gm`` matches onnxruntime on ``watch`` and the graph outputs.

    One onnxruntime run, asked only for those tensors. Each torch value is compared as soon as
    it is computed and dropped, and each reference once compared, so the watched tensors never
    exist twice. Returns the worst relative divergence seen (for the log). Without ``diagnose``, a
    mismatch is reported without looking for the first node that diverges."""
    outputs = [o.name for o in model.graph.output if o.name in tensors]
    names = [n for n in dict.fromkeys(list(watch) + outputs) if n in tensors]
    reference = runtime.run(model, inputs, names)
    state = {"worst": 0.0, "bad": False}

    def compare(name: str, value) -> None:
        ref = reference.pop(name, None)
        if ref is None:
            return
        err = divergence(ref, value)
        if err > tolerance(ref):
            state["bad"] = True
        state["worst"] = max(state["worst"], err)

    try:
        torch_values(gm, inputs, {n: tensors[n] for n in names}, dtypes, consume=compare)
    except _NodeFailure as failure:
        raise ConversionError(
            f"{what} fails to run at node {labels.get(failure.module_path, failure.module_path)!r}: "
            f"{type(failure.exc).__name__}: {first_line(failure.exc)}",
            path=source,
        ) from None
    for name in [n for n in names if n in reference]:  # onnxruntime computed it, torch never did
        compare(name, None)
    if state["bad"]:
        detail = _diagnose(gm, model, inputs, tensors, dtypes, labels, what) if diagnose else f"{what} disagrees with onnxruntime"
        raise ConversionError(detail, path=source)
    return state["worst"]


def _diagnose(gm, model, inputs, tensors, dtypes, labels, what: str) -> str:
    """Compare every node's outputs to name the first node that diverges."""
    random = [n for n in model.graph.node if n.op_type in RANDOM_OPS]
    if random:
        label = random[0].name or random[0].output[0]
        return (f"{what} disagrees with onnxruntime on this batch, and the model draws random numbers "
                f"(node {label!r}, {random[0].op_type}): its outputs change from run to run; export it in "
                "inference mode (model.eval()) so that it computes a function of its inputs")
    order = [(node, out) for node in model.graph.node for out in node.output if out in tensors]
    reference = runtime.run(model, inputs, [out for _, out in order])
    values = torch_values(gm, inputs, {out: tensors[out] for _, out in order}, dtypes)
    for node, out in order:
        if out not in reference:
            continue
        err = divergence(reference[out], values.get(out))
        if err > tolerance(reference[out]):
            label = node.name or out
            detail = "a different shape or type" if not np.isfinite(err) else f"a relative difference of {err:.3g}"
            return (
                f"{what} disagrees with onnxruntime, first at node {label!r} ({node.op_type}, output {out!r}: "
                f"{detail}); refusing to initialize a model that would be converted wrongly"
            )
    return f"{what} disagrees with onnxruntime on this batch; refusing to initialize a model that would be converted wrongly"
