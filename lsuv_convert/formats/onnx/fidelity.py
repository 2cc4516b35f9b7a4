"""The fidelity gate: the torch graph must compute what onnxruntime computes, on the user's batch.

onnx2torch can convert a model silently wrong (it did so for densenet121). Comparing only the
model outputs is not enough: an untrained classifier head full of zeros hides everything
before it. So every target layer's output is compared too, relative to that tensor's own
scale, and on failure every node is compared to name the first one that diverges.
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


def tolerance(reference: np.ndarray) -> float:
    return REL_TOL_HALF if reference.dtype == np.float16 else REL_TOL_FLOAT


def divergence(reference: np.ndarray, value) -> float:
    """max |value - reference| relative to the larger magnitude of the two; inf on shape,
    dtype-kind or NaN/inf-pattern mismatch, 0 for equal integer tensors."""
    if value is None:
        return float("inf")
    got = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    ref = np.asarray(reference)
    if ref.shape != got.shape:
        return float("inf")
    if ref.size == 0:
        return 0.0
    if ref.dtype.kind in "biu" or got.dtype.kind in "biu":
        return 0.0 if np.array_equal(ref, got) else float("inf")
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    finite = np.isfinite(ref64)
    if not np.array_equal(finite, np.isfinite(got64)) or not np.array_equal(ref64[~finite], got64[~finite]):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(np.abs(ref64[finite]).max(), np.abs(got64[finite]).max())
    if scale == 0.0:
        return 0.0
    return float(np.abs(ref64[finite] - got64[finite]).max() / scale)


class _NodeFailure(Exception):
    def __init__(self, module_path: str, exc: BaseException):
        super().__init__(module_path)
        self.module_path = module_path
        self.exc = exc


def torch_values(gm, inputs: list, tensors: dict[str, tuple[str, int]], dtypes: list) -> dict[str, torch.Tensor]:
    """Values of ONNX ``tensors`` (name -> (module path, output index)) computed by ``gm``."""
    import torch.fx

    wanted: dict[str, list[tuple[str, int]]] = {}
    for name, (path, index) in tensors.items():
        wanted.setdefault(path, []).append((name, index))
    found: dict[str, torch.Tensor] = {}

    class _Recorder(torch.fx.Interpreter):
        def call_module(self, target, args, kwargs):
            try:
                out = super().call_module(target, args, kwargs)
            except Exception as exc:  # noqa: BLE001 - report which node failed
                raise _NodeFailure(target, exc) from exc
            for name, index in wanted.get(target, ()):
                if isinstance(out, (tuple, list)):
                    if index < len(out):
                        found[name] = out[index]
                elif index == 0:
                    found[name] = out
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
          dtypes: list, labels: dict[str, str], source, what: str = "the converted torch graph") -> float:
    """Raise ConversionError unless ``gm`` matches onnxruntime on ``watch`` and the graph outputs.

    Returns the worst relative divergence seen (for the log)."""
    outputs = [o.name for o in model.graph.output if o.name in tensors]
    names = list(dict.fromkeys(list(watch) + outputs))
    reference = runtime.run(model, inputs, names)
    try:
        values = torch_values(gm, inputs, {n: tensors[n] for n in names if n in tensors}, dtypes)
    except _NodeFailure as failure:
        raise ConversionError(
            f"{what} fails to run at node {labels.get(failure.module_path, failure.module_path)!r}: "
            f"{type(failure.exc).__name__}: {first_line(failure.exc)}",
            path=source,
        ) from None
    worst = 0.0
    bad = False
    for name in names:
        if name not in reference or name not in tensors:
            continue
        err = divergence(reference[name], values.get(name))
        if err > tolerance(reference[name]):
            bad = True
        worst = max(worst, err)
    del reference, values
    if bad:
        raise ConversionError(_diagnose(gm, model, inputs, tensors, dtypes, labels, what), path=source)
    return worst


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
