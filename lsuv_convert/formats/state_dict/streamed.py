"""A ``.safetensors`` state_dict checkpoint streamed layer by layer (the default; ``--no-stream``
loads it whole).

The ``--arch`` model is built without allocating its parameters (accelerate's
``init_empty_weights``: parameters on the meta device, buffers as the constructor computed them);
the checkpoint's keys and shapes come from its header alone, as meta tensors, so that
:func:`.locate.locate` finds the weights exactly as it does in a loaded file; then the engine
reads each tensor when its module runs and the fitted ones are written into the output in the
source's layout (:class:`..shared.safetensors_io.SafetensorsStream`).

Loaded whole, with a note saying why: ``torch.save`` checkpoints (``.pt``, ``.pth``, ``.bin``,
``.ckpt``: an archive of pickles is read and written whole by torch), ``--arch
package.module:factory`` (the user's code may tie weights, and building a model without its
weights re-creates a parameter assigned to a second module: the tie would be lost), weight norm
or parametrizations, tensors of another shape than the architecture's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path


def streamed_checkpoint(path: Path, arch: str):
    """(Checkpoint of meta tensors, Architecture built empty, SafetensorsStream), or why it can't stream."""
    if not path.name.lower().endswith(".safetensors"):
        return "torch.save checkpoints are read and written whole"
    from .arch import LIBRARIES, build_architecture

    if arch.partition(":")[0] not in LIBRARIES:
        return "a --arch factory's model may tie weights, which building it without them would undo"
    try:
        import accelerate  # noqa: F401 - only asks whether it is installed
    except ImportError:
        return "accelerate is not installed (pip install accelerate)"
    import torch

    from ...lsuv.streaming import is_streamable
    from ..shared.safetensors_io import DTYPES, SafetensorsStream, read_header
    from .checkpoint import Checkpoint

    header, _ = read_header(path)
    metadata = header.pop("__metadata__", None) or {}
    tensors = {key: torch.empty(entry["shape"], dtype=getattr(torch, DTYPES.get(entry["dtype"], "uint8")),
                                device="meta") for key, entry in header.items()}
    built = build_architecture(arch, path, empty=True)
    why = is_streamable(built.module)
    if why is not None:
        return why
    own = built.module.state_dict()
    located_keys = {}
    from .locate import locate

    located = locate(tensors, list(own), arch, path)  # its error is the whole load's error
    for name, value in own.items():
        key = located.file_key(name)
        if tuple(tensors[key].shape) != tuple(value.shape):
            return f"{key} has another shape in the file than in {arch}"
        located_keys[name] = [(path.name, key)]
    stream = SafetensorsStream({path.name: path}, located_keys, lambda out: _staged_file(path.name, out))
    return Checkpoint(tensors, "safetensors", dict(metadata)), built, located, stream


@contextlib.contextmanager
def _staged_file(name: str, out: Path):
    from ...atomic import atomic_path

    with atomic_path(out) as tmp:
        yield {name: Path(tmp)}
