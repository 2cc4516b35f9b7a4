"""``--arch``: the code that builds the architecture a state_dict belongs to.

- ``torchvision:NAME`` (``torchvision.models.get_model(NAME, weights=None)``),
- ``timm:NAME`` (``timm.create_model(NAME, pretrained=False)``, when timm is installed),
- ``package.module:factory`` (imports that module and calls ``factory()``: this RUNS the
  user's code, which is why it is only ever done for an ``--arch`` the user typed).

Each may take literal keyword arguments: ``torchvision:resnet18(num_classes=10)``. Nothing is
downloaded, by construction: a library builder is called with every argument its signature has
for pretrained weights (``weights``, ``weights_backbone``, ``pretrained``, ``pretrained_backbone``,
``checkpoint_path``, ...) switched off and ``progress`` off (:func:`offline_arguments`), and the
whole build runs inside :func:`..shared.no_network.no_network`, which refuses and reports any
connection attempt, the user's own factory's included.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ...errors import ModelFormatError
from ..model_graph import InputSpec

_FORMS = "torchvision:NAME, timm:NAME or package.module:factory"


@dataclass
class Architecture:
    module: object  # torch.nn.Module in eval mode
    inputs: list[InputSpec]
    spec: str


LIBRARIES = ("torchvision", "timm")  # builders whose models tie no weights: they can be built empty


def build_architecture(spec: str, path: Path, empty: bool = False) -> Architecture:
    """The architecture ``spec`` names; ``empty`` (a library's model only, see :data:`LIBRARIES`):
    its parameters on the meta device (accelerate's ``init_empty_weights``), for streaming."""
    source, _, rest = spec.partition(":")
    if not source or not rest:
        raise ModelFormatError(f"--arch {spec!r} is not one of {_FORMS}", path=path)
    if empty and source not in LIBRARIES:
        raise ValueError(f"only models of {', '.join(LIBRARIES)} are built empty")
    if empty:
        from accelerate import init_empty_weights

        with init_empty_weights():
            return build_architecture(spec, path)
    from ..shared.no_network import no_network

    name, kwargs = _call(rest, spec, path)
    with no_network(f"--arch {spec}", path):
        if source == "torchvision":
            module, inputs = _torchvision(name, kwargs, spec, path)
        elif source == "timm":
            module, inputs = _timm(name, kwargs, spec, path)
        else:
            from ..shared.eager_graph import declared_inputs

            module = _factory(source, name, kwargs, spec, path)
            inputs = declared_inputs(module)  # a transformers model's token ids, else one float input
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelFormatError(f"--arch {spec} built a {type(module).__name__}, not a torch.nn.Module", path=path)
    return Architecture(module.eval(), inputs, spec)


def _call(text: str, spec: str, path: Path) -> tuple[str, dict]:
    """``name`` or ``name(key=literal, ...)``."""
    text = text.strip()
    if "(" not in text:
        return text, {}
    try:
        node = ast.parse(text, mode="eval").body
        if not isinstance(node, ast.Call) or node.args:
            raise ValueError
        func = ast.unparse(node.func)
        return func, {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except (SyntaxError, ValueError):
        raise ModelFormatError(f"--arch {spec!r}: arguments must be keyword literals, e.g. resnet18(num_classes=10)",
                               path=path) from None


def _torchvision(name: str, kwargs: dict, spec: str, path: Path):
    import torchvision

    known = torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelFormatError(f"--arch {spec}: torchvision has no model {name!r}{hint}", path=path)
    builder = torchvision.models.get_model_builder(name)
    try:
        module = builder(**offline_arguments(builder, kwargs, spec, path))
    except (TypeError, ValueError) as exc:
        raise ModelFormatError(f"--arch {spec}: {exc}", path=path) from None
    return module, [InputSpec("input", _torchvision_shape(name))]


def _torchvision_shape(name: str):
    """(N, 3, ?, ?) for a model whose published preprocessing makes images (convolutional models take
    any size, so only the channels are declared)."""
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
        crop = getattr(weights[0].transforms(), "crop_size", None)
    except Exception:  # noqa: BLE001 - models without published weights or transforms
        return None
    if not crop:
        return None
    return (None, 3, None, None)


def _timm(name: str, kwargs: dict, spec: str, path: Path):
    try:
        import timm
    except ImportError:
        raise ModelFormatError(f"--arch {spec} needs timm, which is not installed (pip install timm)", path=path) from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelFormatError(f"--arch {spec}: timm has no model {name!r}{hint}", path=path)
    try:
        offline = offline_arguments(timm.create_model, kwargs, spec, path)
        module = timm.create_model(name, **offline)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ModelFormatError(f"--arch {spec}: {exc}", path=path) from None
    size = (getattr(module, "pretrained_cfg", None) or {}).get("input_size")
    return module, [InputSpec("input", (None, size[0], *(None,) * (len(size) - 1)) if size else None)]


_DOWNLOAD_WORDS = ("weights", "pretrained", "checkpoint")


def offline_arguments(builder, kwargs: dict, spec: str, path: Path) -> dict:
    """``kwargs`` plus every argument of ``builder``'s signature that would fetch pretrained
    weights switched off: names with ``weights``, ``pretrained`` or ``checkpoint`` as a word
    (``weights_backbone``, ``pretrained_backbone``, ``checkpoint_path``) get ``False`` where
    their default is a bool, else ``None``; ``progress`` gets ``False``. Read from the signature,
    not from a table of models: a builder added tomorrow is covered. The user can't switch one
    back on: that would download."""
    import inspect

    try:
        parameters = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    offline = dict(kwargs)
    for name, parameter in parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        words = name.lower().split("_")
        if name == "progress":
            offline[name] = False
        elif any(word in words for word in _DOWNLOAD_WORDS):
            off = False if isinstance(parameter.default, bool) else None
            if name in kwargs and kwargs[name] not in (None, False, ""):
                raise ModelFormatError(f"--arch {spec}: {name}={kwargs[name]!r} would download pretrained weights; "
                                       "lsuv-convert builds architectures without them (it never reaches the network)",
                                       path=path)
            offline[name] = off
    return offline


def _factory(module_name: str, attr: str, kwargs: dict, spec: str, path: Path):
    """Import ``module_name`` (the working folder first on the path, as ``python -m`` has it)
    and call ``attr``: the user's own code, run because the user named it."""
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        try:
            owner = importlib.import_module(module_name)
        except (ImportError, TypeError, ValueError) as exc:  # TypeError: a relative name (".nets")
            raise ModelFormatError(f"--arch {spec}: cannot import {module_name}: {exc}", path=path) from None
        target = owner
        for part in attr.split("."):
            target = getattr(target, part, None)
            if target is None:
                raise ModelFormatError(f"--arch {spec}: {module_name} has no {attr}", path=path)
        if not callable(target):
            raise ModelFormatError(f"--arch {spec}: {module_name}.{attr} is not callable", path=path)
        try:
            return target(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code failed: say where, in one line
            raise ModelFormatError(f"--arch {spec}: {module_name}.{attr}() raised {type(exc).__name__}: {exc}",
                                   path=path) from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
