"""Peak bytes of CPU tensors alive at once: a memory meter for code that runs on the CPU.

torch keeps no CPU allocator statistics, and RSS is blurred by the C allocator's caching,
so this counts what the program itself holds: every tensor storage created by an op inside
the ``with`` block is added when created and removed when the last tensor using it is
freed. Storages made before the block (parameters, the input batch) are not counted, so a
plain forward pass and the engine are measured alike.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage address -> [tensors using it, bytes]
        self.current = 0
        self.peak = 0

    def _release(self, address: int) -> None:
        entry = self.live.get(address)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self.live[address]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor) and a.device.type == "cpu"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            address = storage.data_ptr()
            entry = self.live.get(address)
            if address == 0 or (entry is None and address in inputs):
                continue  # empty, or in place on / a view of a tensor from before the block
            if entry is None:
                entry = self.live[address] = [0, storage.nbytes()]
                self.current += entry[1]
                self.peak = max(self.peak, self.current)
            entry[0] += 1
            weakref.finalize(t, self._release, address)
        return out
