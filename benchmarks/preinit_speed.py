"""Orthonormal pre-init against bare ``torch.linalg.qr`` and ``torch.nn.init.orthogonal_``.

For each weight shape (out, in) it times, median of ``--repeats`` runs, interleaved:

- ``pre-init``: ``lsuv.orthonormal.pre_initialize`` on an ``nn.Linear(in, out)``: the Gaussian
  draw, the orthonormalisation, the sign fix that makes it Haar and the copy into the weight;
- ``qr``: ``torch.linalg.qr`` of an already drawn matrix of that shape (the factorisation
  alone, reduced Q formed, no draw, no sign fix);
- ``orthogonal_``: ``torch.nn.init.orthogonal_`` on the same weight (draw + QR + sign fix).

GFLOP/s count the flops of a Householder QR of an m x n matrix (m >= n), ``2 m n^2 - 2 n^3 / 3``
(the convention of issue 25's "4 x 10^11 flops"), for every method, so the column compares
times. The last row is the whole Llama-style model of issue 25 (hidden 1024, 16 layers,
intermediate 2816, vocabulary 32000: per layer q, k, v, o 1024 x 1024, gate and up 2816 x 1024,
down 1024 x 2816; plus the 32000 x 1024 output projection).

    python benchmarks/preinit_speed.py               # the table
    python benchmarks/preinit_speed.py --repeats 5   # steadier medians
    python benchmarks/preinit_speed.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from benchmarks._common import machine_summary
from lsuv_convert.lsuv.orthonormal import UnitSeeds, pre_initialize

SHAPES = [(32000, 1024), (2816, 1024), (1024, 2816), (1024, 1024), (4096, 4096)]  # the last: CaffeNet's fc7
LLAMA_LAYER = [(1024, 1024)] * 4 + [(2816, 1024)] * 2 + [(1024, 2816)]
LLAMA = LLAMA_LAYER * 16 + [(32000, 1024)]


def qr_flops(shape: tuple[int, int]) -> float:
    m, n = max(shape), min(shape)
    return 2.0 * m * n * n - 2.0 * n ** 3 / 3.0


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(shapes: list[tuple[int, int]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each method over ``shapes`` together (one pass over all shapes per run)."""
    layers = [nn.Linear(cols, rows, bias=False, device=device) for rows, cols in shapes]
    drawn = [torch.randn(rows, cols, device=device) for rows, cols in shapes]
    seeds = UnitSeeds(0)
    methods = {
        "pre-init": lambda: pre_initialize(layers, "orthonormal", seeds),
        "qr": lambda: [torch.linalg.qr(a) for a in drawn],
        "orthogonal_": lambda: [torch.nn.init.orthogonal_(layer.weight) for layer in layers],
    }
    with torch.no_grad():
        for fn in methods.values():  # warm-up: library initialisation, first allocations
            fn()
        times: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(repeats):
            for name, fn in methods.items():
                times[name].append(timed(fn, device))
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"Machine: {machine_summary(args.device)}\n")
    print("| weight (out x in) | GFLOP | pre-init (s) | qr (s) | orthogonal_ (s) | pre-init GFLOP/s | qr GFLOP/s "
          "| orthogonal_ GFLOP/s | pre-init / qr |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = [(f"{r} x {c}", [(r, c)]) for r, c in SHAPES] + [("Llama-style, 113 weights", LLAMA)]
    for label, shapes in rows:
        flops = sum(qr_flops(s) for s in shapes)
        t = measure(shapes, device, args.repeats)
        rates = {name: flops / seconds / 1e9 for name, seconds in t.items()}
        print(f"| {label} | {flops / 1e9:.1f} | {t['pre-init']:.3f} | {t['qr']:.3f} | {t['orthogonal_']:.3f} "
              f"| {rates['pre-init']:.0f} | {rates['qr']:.0f} | {rates['orthogonal_']:.0f} "
              f"| {t['pre-init'] / t['qr']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
