"""The account: what happened to every parameter tensor of the model.

Each parameter is exactly one of

* ``initialized``: a target layer (or a slice of one: q / k / v) ran on the batch and was
  scaled; ``layers`` names the report entries, ``var_before`` / ``var_after`` their variances;
* ``unreached``: it belongs to a target the batch never ran, so it keeps its pre-init;
* ``skipped``: the tool does not initialize it, with the reason (not a linear map:
  embeddings, norms, recurrent weights, positional tables; or used by an op it cannot split);
* ``carried``: a tensor of the file that the architecture does not have (a checkpoint's extra
  entries: a loss's parameters, a Lightning module's buffers), written back unchanged.

``linear`` marks conv / linear / attention weights, and the weight matrices of module classes the
tool doesn't know as layers: those are the ones ``strict`` insists on.
The numbers of elements of the first three add up to the model's parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import LsuvError

STATUSES = ("initialized", "unreached", "skipped", "carried")


@dataclass
class ParamAccount:
    name: str
    shape: list[int]
    numel: int
    status: str  # one of STATUSES
    linear: bool = False  # a conv / linear / attention weight (what strict checks)
    layers: list[str] = field(default_factory=list)
    reason: str | None = None
    var_before: Any = None  # float, or a list (one per layer) for a packed weight
    var_after: Any = None

    def to_dict(self) -> dict:
        d = {"name": self.name, "shape": self.shape, "numel": self.numel, "status": self.status}
        if self.layers:
            d["layers"] = self.layers
        if self.status == "initialized":
            d.update(var_before=self.var_before, var_after=self.var_after)
        if self.reason:
            d["reason"] = self.reason
        if self.linear:
            d["linear"] = True
        return d


class IncompleteError(LsuvError):
    """``strict``: some conv / linear / attention weight was unreached or skipped."""

    exit_code = 3


def counts(account: Iterable[ParamAccount]) -> dict[str, int]:
    """Number of parameter tensors per status; ``carried`` only where the file has such entries
    (the log of a file that carries nothing reads as before)."""
    out = dict.fromkeys(STATUSES, 0)
    for entry in account:
        out[entry.status] += 1
    if not out["carried"]:
        del out["carried"]
    return out


def strict_failures(account: Iterable[ParamAccount]) -> list[ParamAccount]:
    return [e for e in account if e.linear and e.status != "initialized"]


def check_strict(account: list[ParamAccount], path=None) -> None:
    """Raise :class:`IncompleteError` naming every unreached or skipped linear weight."""
    bad = strict_failures(account)
    if not bad:
        return
    shown = ", ".join(f"{e.name} ({e.status}{': ' + e.reason if e.reason else ''})" for e in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise IncompleteError(f"--strict: {len(bad)} conv / linear / attention weight(s) not initialized: {shown}{more}",
                          path=path)


_SKIP_REASONS = (
    ("Embedding", "embedding table: not a linear map"),
    ("EmbeddingBag", "embedding table: not a linear map"),
    ("Norm", "normalization parameter: not a linear map"),
    ("RNN", "recurrent layer weight: not split into linear maps by the tool"),
    ("LSTM", "recurrent layer weight: not split into linear maps by the tool"),
    ("GRU", "recurrent layer weight: not split into linear maps by the tool"),
)


def skip_reason(owner_type: str) -> str:
    for marker, reason in _SKIP_REASONS:
        if marker in owner_type:
            return reason
    return f"not a conv / linear weight (used directly by {owner_type})"


# Classes that say nothing of what their parameters are: torch.export's rebuilt hierarchy
# (``ep.module()`` owners are plain ``Module``s), fx containers.
_ANONYMOUS_OWNERS = frozenset({"Module", "GraphModule", "InterpreterModule", "Sequential", "ModuleList", "ModuleDict"})


def unknown_layer_weight(owner_type: str, attr: str, shape) -> bool:
    """A weight matrix (two or more dims longer than 1: not a per-channel scale stored (1, C, 1, 1))
    held by a module class the tool doesn't take as a layer and that is no embedding, norm or
    recurrent layer: most likely a linear map it missed, which ``strict`` must name. Owners whose
    class is anonymous (a torch.export program's) tell nothing, so they are not judged."""
    return (attr.endswith("weight") and sum(1 for d in shape if d > 1) >= 2 and owner_type not in _ANONYMOUS_OWNERS
            and not any(marker in owner_type for marker, _ in _SKIP_REASONS))


def module_account(module, targets: dict[str, Any], reports, rename=None, named=None,
                   param_names: dict[str, str] | None = None) -> list[ParamAccount]:
    """The account of ``module``'s parameters given the engine's ``targets`` and ``reports``.

    ``rename`` maps a target's qualified name to the name shown (a format's source name);
    ``named`` is ``module.named_modules()`` when the caller has listed it already;
    ``param_names`` maps a parameter's qualified name to the file's key for it, where the file
    names its tensors otherwise than the module (transformers' renamed modules).
    """
    from .attention import join, parameter_names
    from .parametrized import weight_sources
    from .targets import is_attention

    rename = rename or (lambda n: n)
    by_target: dict[str, list] = {}  # a report ``path`` or ``path[q]`` under its target's ``path``
    for r in reports:
        by_target.setdefault(r.name.partition("[")[0], []).append(r)

    def covering(prefixes: list[str], exact: list[str]) -> list:
        found = []
        for r in reports:
            if r.name in exact or any(r.name.startswith(p) for p in prefixes):
                found.append(r)
        return found

    owner: dict[int, tuple[str, list]] = {}  # id(param) -> (target name, covering reports)
    for name, target in targets.items():
        if is_attention(target):
            for pname in parameter_names(target):
                if pname.startswith("out_proj"):
                    cover = covering([], [join(name, "out_proj")])
                elif pname.startswith("in_proj"):
                    cover = covering([join(name, p) for p in ("in_proj_weight[", "q_proj", "k_proj", "v_proj")], [])
                else:
                    cover = covering([], [join(name, pname)])
                owner[id(target.get_parameter(pname))] = (name, cover)
            continue
        cover = by_target.get(name, [])  # the reports named ``name`` or ``name[...]``
        for attr in ("weight", "bias"):
            p = getattr(target, attr, None)
            if p is not None and hasattr(p, "shape"):
                owner.setdefault(id(p), (name, cover))
        for p in weight_sources(target):  # weight_g / weight_v, parametrizations.weight.original*
            owner.setdefault(id(p), (name, cover))

    if named is None:
        named = list(module.named_modules())
    module_types = None  # only needed to name why a parameter is skipped
    account = []
    for pname, p in _named_parameters(named):
        shape, numel = list(p.shape), int(p.numel())
        hit = owner.get(id(p))
        if hit is not None:
            target_name, cover = hit
            if param_names and pname in param_names:
                shown = param_names[pname]
            elif target_name and pname.startswith(target_name):
                shown = rename(target_name) + pname[len(target_name):]
            else:
                shown = pname
            is_weight = p.dim() >= 2
            if cover:
                before = [r.var_before for r in cover]
                after = [r.var_after for r in cover]
                account.append(ParamAccount(
                    shown, shape, numel, "initialized", linear=is_weight, layers=[rename_layer(r.name, rename) for r in cover],
                    var_before=before[0] if len(before) == 1 else before, var_after=after[0] if len(after) == 1 else after))
            else:
                account.append(ParamAccount(shown, shape, numel, "unreached", linear=is_weight,
                                            reason="the batch never ran this layer: keeps its pre-init, unscaled"))
            continue
        owner_name, _, attr = pname.rpartition(".")
        shown = param_names.get(pname, pname) if param_names else pname
        if module_types is None:
            module_types = {n: type(m).__name__ for n, m in named}
        owner_type = module_types.get(owner_name, type(module).__name__)
        if unknown_layer_weight(owner_type, attr, shape):
            account.append(ParamAccount(shown, shape, numel, "skipped", linear=True,
                                        reason=f"a weight matrix of {owner_type}, a module class the tool does not "
                                               "initialize (not a conv / linear layer it knows)"))
            continue
        account.append(ParamAccount(shown, shape, numel, "skipped", reason=skip_reason(owner_type)))
    return account


def _named_parameters(named):
    """``module.named_parameters()`` (each parameter once, first name) from the listed modules."""
    seen: set[int] = set()
    for prefix, m in named:
        for key, p in m._parameters.items():
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            yield (f"{prefix}.{key}" if prefix else key), p


def module_graph_account(module, targets, reports, param_names: dict[str, str] | None = None) -> list[ParamAccount]:
    """The account of a format's module whose ``targets`` (TargetLayers: ``module_path`` and the
    file's ``name``) the engine ran: parameters named as in the file (``param_names``: the file's
    key of each parameter the file names otherwise)."""
    by_path = {t.module_path: t for t in targets}
    layers = {t.module_path: module.get_submodule(t.module_path) for t in targets}
    return module_account(module, layers, reports, rename=lambda p: by_path[p].name if p in by_path else p,
                          param_names=param_names)


def skipped_entries(skipped: list[dict]) -> list[ParamAccount]:
    """Account entries for file parameters no module holds: dicts with name, shape, reason, linear."""
    return _file_entries(skipped, "skipped")


def carried_entries(carried: list[dict]) -> list[ParamAccount]:
    """Account entries for file tensors the architecture does not have, written back unchanged:
    dicts with name, shape and reason."""
    return _file_entries(carried, "carried")


def _file_entries(entries: list[dict], status: str) -> list[ParamAccount]:
    out = []
    for p in entries:
        numel = 1
        for d in p["shape"]:
            numel *= int(d)
        out.append(ParamAccount(p["name"], list(p["shape"]), numel, status, linear=bool(p.get("linear")),
                                reason=p.get("reason")))
    return out


def rename_layer(layer: str, rename) -> str:
    """A report name (``path``, ``path[q]``, ``path.out_proj``) with its target part renamed."""
    head, bracket, tail = layer.partition("[")
    return rename(head) + bracket + tail


