"""Memory budgets checked before allocating: a file that declares a huge array gets a clear
error naming the file and the size, not a MemoryError (or the machine swapping) later.

The budget is half the memory available now (``MemAvailable`` on Linux, else physical memory),
or ``LSUV_CONVERT_MEMORY_LIMIT`` bytes when set.
"""

from __future__ import annotations

import os

from .errors import DataError, LsuvError


def available_bytes() -> int:
    explicit = os.environ.get("LSUV_CONVERT_MEMORY_LIMIT")
    if explicit:
        try:
            return int(float(explicit))
        except ValueError:
            pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def human(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"


def check_allocation(nbytes: int, what: str, *, path=None, hint: str = "", error: type[LsuvError] = DataError) -> None:
    """Raise ``error`` when ``nbytes`` would not fit in the memory budget."""
    budget = available_bytes()
    if nbytes > budget:
        raise error(f"{what} needs {human(nbytes)}, more than the memory available for it ({human(budget)})"
                    + (f"; {hint}" if hint else ""), path=path)
