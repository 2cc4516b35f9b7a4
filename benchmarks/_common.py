"""Helpers shared by the benchmark scripts: timing, markdown tables, a machine summary.

Kept free of project imports so that the scripts can say *where* a number came from even
when the package under test fails.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary(device: str = "cpu") -> str:
    """One line naming the hardware and software a table was measured on."""
    import torch

    parts = [f"{cpu_model()}, {os.cpu_count()} logical cores", f"torch {torch.__version__}",
             f"{torch.get_num_threads()} intra-op threads"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.insert(1, torch.cuda.get_device_name(torch.device(device)))
    try:
        parts.append("load average %.1f/%.1f/%.1f" % os.getloadavg())
    except OSError:
        pass
    return "; ".join(parts)


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for queued device work, so wall-clock timings are honest on GPUs."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def timed(fn: Callable[[], object], device: str = "cpu") -> tuple[float, object]:
    """(seconds, result) of one call, with the device synchronised on both sides.

    Like ``timeit``, the cyclic garbage collector is run before and paused during the call:
    a full collection over this process's heap (several models' worth of objects) costs
    ~0.2 s here and would land at random in whichever method happens to allocate then.
    """
    seconds, _, result = timed_cpu(fn, device)
    return seconds, result


def timed_cpu(fn: Callable[[], object], device: str = "cpu") -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of one call, as :func:`timed`; CPU is this process's
    user + system time, which other processes on a shared machine disturb far less than the
    wall clock (it counts every thread of the process)."""
    sync = synchronizer(device)
    gc.collect()
    sync()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        sync()
        return time.perf_counter() - t0, time.process_time() - cpu0, result
    finally:
        if was_enabled:
            gc.enable()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"
