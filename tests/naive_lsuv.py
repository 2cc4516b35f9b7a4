"""The naive LSUV algorithm, used as the oracle: one full forward pass per iteration.

Written independently of the engine (only the variance definition is shared by the spec:
population variance over all elements of the layer output).
"""

from __future__ import annotations

import math

import torch


def naive_lsuv(model, batch, targets, *, tol=0.02, max_iter=20, target_var=1.0):
    """Scale each target (in execution order) until its output variance is within tol."""
    order = execution_order(model, batch, targets)
    done = set()
    for name in order:
        module = model.get_submodule(name)
        if id(module.weight) in done:
            continue
        done.add(id(module.weight))
        var = _measure(model, batch, module)
        it = 0
        while abs(var - target_var) >= tol and it < max_iter:
            if not math.isfinite(var) or var <= 0:
                break
            with torch.no_grad():
                module.weight.mul_(math.sqrt(target_var / var))
            it += 1
            var = _measure(model, batch, module)
    return order


def execution_order(model, batch, targets):
    order, handles = [], []
    for name in targets:
        m = model.get_submodule(name)
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: order.append(n) if n not in order else None))
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    return order


def _measure(model, batch, module):
    captured = []
    h = module.register_forward_hook(lambda mod, i, o: captured.append(o.detach().double()) if not captured else None)
    with torch.no_grad():
        model(batch)
    h.remove()
    return float(captured[0].var(unbiased=False))


def hook_variances(model, batch, targets):
    """Output variance of each target at its first call: an instrumentation independent of the engine."""
    out, handles = {}, []

    def record(name, output):
        if name not in out:
            out[name] = float(output.detach().double().var(unbiased=False))

    for name in targets:
        m = model.get_submodule(name)
        handles.append(m.register_forward_hook(lambda mod, i, o, n=name: record(n, o)))
    with torch.no_grad():
        model(batch)
    for h in handles:
        h.remove()
    return out
