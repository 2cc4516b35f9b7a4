"""What a file's tensors must be for LSUV's new values to be written back exactly: one rule.

LSUV gives every weight its own float values. A stored tensor that can't hold them would make
the written file differ from what the log reports (the old "last write wins" and "int8 written
as zeros"), so, in every format whose file stores tensors that may share memory (state_dict checkpoints,
Hugging Face folders, TorchScript archives), such a file is refused before any work, with a
line naming the tensor:

- **Shared storage.** Two entries whose memory overlaps in the file (``0.weight`` and
  ``2.weight`` saved as one storage; or a weight and a buffer) are kept tied only when the
  architecture ties them too
  (one parameter under both names: one value, written under both names). When the
  architecture holds them as two weights, they would get two values that one storage can't
  hold: refused (save them untied, ``.clone()``, or tie them in the architecture).
- **Expanded tensors.** A weight whose elements share memory (stride 0, ``expand``) holds one
  value repeated: refused (save it with ``.contiguous()``).
- **Integer and quantized dtypes.** A float weight of the architecture stored as an integer or
  quantized tensor (int8, uint8, qint8, ...) would be cast back and lose every new value:
  refused (dequantize it first). Integer buffers (``num_batches_tracked``) are not weights.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import ModelFormatError, shown


def check_stored(model_tensors: dict, stored: dict, path: Path, weights: set[str] | None = None) -> None:
    """``model_tensors``: the architecture's ``state_dict(keep_vars=True)``; ``stored``: the
    file's tensor for each of those keys (the same dict where the file is the module: a
    TorchScript archive); ``weights``: the keys that are float weights (default: the
    ``nn.Parameter`` entries). Raise ModelFormatError by the rule above."""
    import torch

    if weights is None:
        weights = {k for k, v in model_tensors.items() if isinstance(v, torch.nn.Parameter) and v.is_floating_point()}
    spans: dict[tuple, list[tuple[int, int, str]]] = {}  # storage -> (start, end, key) in bytes
    for key, tensor in stored.items():
        if key not in model_tensors or not isinstance(tensor, torch.Tensor) or tensor.is_quantized and key not in weights:
            continue
        if key in weights and (tensor.is_quantized or not tensor.is_floating_point()):
            raise ModelFormatError(f"tensor {shown(key)} is stored as {str(tensor.dtype).replace('torch.', '')} "
                                   "(integer or quantized); LSUV writes float weights, which it can't hold: "
                                   "refused (dequantize it first)", path=path)
        if key in weights and any(st == 0 and n > 1 for st, n in zip(tensor.stride(), tensor.shape)):
            raise ModelFormatError(f"tensor {shown(key)} is stored expanded (stride 0: one value repeated), so it "
                                   "can't hold LSUV's values: refused (save it with .contiguous())", path=path)
        if tensor.numel() == 0 or tensor.is_meta:  # a streamed file's placeholder: no storage to share
            continue
        storage = tensor.untyped_storage()
        item = tensor.element_size()
        start = tensor.storage_offset() * item
        end = start + (1 + sum((n - 1) * abs(st) for n, st in zip(tensor.shape, tensor.stride()))) * item
        spans.setdefault((storage.data_ptr(), storage.nbytes()), []).append((start, end, key))
    for entries in spans.values():
        entries.sort()
        overlapping = [(k1, k2) for i, (s2, _, k2) in enumerate(entries) for (_, e1, k1) in entries[:i]
                       if s2 < e1 and model_tensors[k1] is not model_tensors[k2] and (k1 in weights or k2 in weights)]
        if overlapping:
            k1, k2 = overlapping[0]
            raise ModelFormatError(
                f"tensors {shown(k1)} and {shown(k2)} share one storage in the file (tied), but the architecture "
                "holds them as separate tensors, which LSUV would give different values: refused (save them untied "
                "with .clone(), or tie them in the architecture)", path=path)
