"""Which registered operators a model file may call without ``--trust-code``: one policy for
TorchScript code and ``.pt2`` graphs.

The danger of a model file is not in the math it does but in what reaches outside the tensors:
files, the terminal, other processes, the network, the process's own settings. So every
operator of torch's schema registry (``torch._C._jit_get_all_schemas()``) is classified by its
namespace and then by a short denylist, each entry with its reason:

* :data:`COMPUTE_NAMESPACES` are torch's own (and torchvision's) tensor-computing namespaces:
  their operators are allowed unless :data:`DENIED_OPS` names them;
* :data:`DENIED_NAMESPACES` are torch's namespaces whose every operator acts outside the
  tensors (distributed communication, profiler, device streams, file codecs);
* any other namespace is a custom operator library: it runs whatever code registered it, and
  is refused, as are TorchScript custom classes (``torch.classes``).

``prim::Print`` is denied: lsuv-convert points file descriptor 1 at stderr while a model runs
(so JSON output stays clean), but what a model prints still reaches the user's terminal
unfiltered (escape sequences, lines that look like ours), and no computation needs it.
``aten::warn`` is allowed: it goes through Python's ``warnings``, which the tool controls.

A new torch adds operators: tests list every registered name this module does not classify.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPUTE_NAMESPACES: dict[str, str] = {
    "aten": "torch's tensor operators",
    "prim": "TorchScript's language primitives (tuples, lists, attributes, control flow)",
    "prims": "torch's primitive operators (decompositions)",
    "rngprims": "random-number primitives of torch.export",
    "inductor_prims": "random-number primitives of the inductor compiler",
    "quantized": "quantized tensor kernels",
    "_quantized": "quantized tensor kernels",
    "quantized_decomposed": "quantized tensor kernels written as plain tensor math",
    "quantization": "bfloat16 quantization kernels",
    "prepacked": "prepacked (XNNPACK) convolution and linear kernels",
    "mkldnn": "oneDNN convolution and linear kernels",
    "mkldnn_prepacked": "oneDNN prepacked kernels",
    "onednn": "oneDNN quantized kernels",
    "mkl": "MKL linear kernels",
    "sparse": "sparse quantized linear kernels",
    "static_runtime": "Static Runtime's copy-free variants of aten operators",
    "_native": "native kernel variants of aten operators",
    "onnx": "ONNX-shaped tensor operators (Reshape, Shape, Attention, RotaryEmbedding)",
    "flex_lib": "flex-attention tensor helper",
    "torchvision": "torchvision's box and region operators (nms, roi_align, deform_conv2d)",
}

DENIED_NAMESPACES: dict[str, str] = {
    "c10d": "distributed communication with other processes",
    "c10d_functional": "distributed communication with other processes",
    "_c10d_functional": "distributed communication with other processes",
    "_c10d_functional_autograd": "distributed communication with other processes",
    "_dtensor": "distributed communication with other processes",
    "symm_mem": "memory shared with other processes and devices",
    "fsdp": "distributed (FSDP) communication buffers",
    "profiler": "calls the profiler's callbacks",
    "cuda": "changes the process's device and stream state",
    "coor": "changes the process's device state",
    "streams": "changes the process's device streams and events",
    "mempool": "changes the process's memory allocator",
    "inductor": "raw memory reinterpretation and allocator pools of the inductor compiler",
    "export": "torch.export internals",
    "image": "torchvision.io file codecs (read_file and write_file touch files)",
    "debugprims": "debugging primitives (load_tensor reads a file)",
    "debug_mode_ops": "debugging hooks",
    "onnx_symbolic": "ONNX exporter internals",
    "_test": "torch's test operators",
    "_inductor_test": "torch's test operators",
    "lsuv_convert_probe": "lsuv-convert's own measuring probes (a file calling them could forge what verify reports)",
}

DENIED_OPS: dict[str, str] = {
    "aten::from_file": "reads a file",
    "aten::save": "writes a file",
    "aten::_print": "prints on the terminal",
    "prim::Print": "prints on the terminal",
    "prim::PythonOp": "calls a Python function",
    "prim::IgnoredPythonOp": "calls a Python function",
    "prim::rpc_async": "remote procedure call to another process",
    "prim::rpc_sync": "remote procedure call to another process",
    "prim::rpc_remote": "remote procedure call to another process",
    "aten::to_here": "fetches a remote value over RPC",
    "aten::owner": "remote reference of RPC",
    "aten::owner_name": "remote reference of RPC",
    "aten::confirmed_by_owner": "remote reference of RPC",
    "aten::is_owner": "remote reference of RPC",
    "aten::manual_seed": "reseeds the process's random generator",
    "aten::seed": "reseeds the process's random generator",
    "aten::_cufft_set_plan_cache_max_size": "changes a process-wide cuFFT setting",
    "aten::_cufft_clear_plan_cache": "changes a process-wide cuFFT setting",
    "prim::AddStatValue": "reports to torch's process-wide statistics logger",
}

# Names that look like side effects (files, printing, devices, streams, seeds, profiling) in the
# compute namespaces, reviewed and allowed: they only read or compute. The tests require every
# such name of the registry to be here or in DENIED_OPS, so a new one gets a decision.
REVIEWED_ALLOWED: dict[str, str] = {
    "aten::_cufft_get_plan_cache_max_size": "reads a setting",
    "aten::_cufft_get_plan_cache_size": "reads a setting",
    "aten::device": "a tensor's device",
    "aten::get_device": "a tensor's device index",
    "prim::device": "a tensor's device",
    "prims::device_put": "copies a tensor to a device",
    "aten::initial_seed": "reads the seed, changes nothing",
    "aten::isprintable": "a string method",
    "aten::record_stream": "stream bookkeeping of a tensor's memory",
    "prim::profile": "a marker of TorchScript's profiling executor (no callback)",
    "prim::profile_ivalue": "a marker of TorchScript's profiling executor (no callback)",
}
SIDE_EFFECT_WORDS = (r"file|save|load|print|rpc|remote|owner|to_here|record|profil|hook|seed|socket|url|env|system|"
                     r"exec|spawn|dump|write|read|mmap|ipc|share|device|stream|cufft|thread|python")

# torch.export's higher-order operators (Python, not in the schema registry): their bodies are
# subgraphs of the same program, checked like the rest of it.
HIGHER_ORDER_OPS: frozenset[str] = frozenset("""
cond while_loop map_impl scan associative_scan wrap_with_set_grad_enabled wrap_with_autocast auto_functionalized
auto_functionalized_v2 invoke_subgraph flex_attention out_dtype with_effects run_and_save_rng_state run_with_rng_state
""".split())

# What torch.export writes for scalar (symbolic size) arithmetic: pure functions of numbers.
SCALAR_CALLABLES: frozenset[str] = frozenset("""
_operator.add _operator.sub _operator.mul _operator.truediv _operator.floordiv _operator.mod _operator.pow
_operator.neg _operator.pos _operator.eq _operator.ne _operator.lt _operator.le _operator.gt _operator.ge
_operator.and_ _operator.or_ _operator.not_ _operator.lshift _operator.rshift _operator.getitem _operator.abs
math.trunc math.ceil math.floor math.sqrt
torch.sym_int torch.sym_float torch.sym_max torch.sym_min torch.sym_not torch.sym_ite torch._sym_sqrt
torch.sym_sum torch.sym_fresh_size
""".split())


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str  # why refused, or what the namespace is


def classify(op: str) -> Verdict:
    """The verdict on ``NS::NAME`` (an overload suffix ``.default`` is ignored)."""
    namespace, _, name = op.partition("::")
    qualified = f"{namespace}::{name.split('.', 1)[0]}"
    if qualified in DENIED_OPS:
        return Verdict(False, DENIED_OPS[qualified])
    if namespace in COMPUTE_NAMESPACES:
        return Verdict(True, COMPUTE_NAMESPACES[namespace])
    if namespace in DENIED_NAMESPACES:
        return Verdict(False, DENIED_NAMESPACES[namespace])
    return Verdict(False, "a custom operator: it runs the code of whatever library registered it")


def is_registered(op: str) -> bool:
    """Whether this process's torch has ``op`` (code naming an unregistered op can't compile)."""
    import torch

    try:
        return bool(torch._C._jit_get_schemas_for_operator(op))
    except (RuntimeError, AttributeError):
        return True  # can't tell: treat it as real


def unclassified(names: list[str]) -> list[str]:
    """Names whose namespace this policy has not reviewed (refused by default, but a new
    namespace of torch deserves a decision)."""
    known = COMPUTE_NAMESPACES.keys() | DENIED_NAMESPACES.keys()
    return [n for n in names if n.partition("::")[0] not in known]


def refusal(op: str, where: str, why: str | None = None) -> str:
    """The one-line refusal for ``op`` found in ``where``."""
    return (f"calls {op} ({why or classify(op).reason}) in {where}; refused before loading, nothing ran "
            "(pass --trust-code to load it anyway)")
