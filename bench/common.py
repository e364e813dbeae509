"""Benchmark plumbing shared by the bench modules (see bench/run.py).

Each bench module exposes ``run(time_us, record, device="cuda")``:
* ``time_us(fn) -> float``: median microseconds of ``fn()`` (triton.testing.do_bench,
  L2 flushed between repetitions, warm-up included);
* ``record(bench=..., nbit=..., shape=..., impl=..., us=..., **extra)`` appends one
  row to the results (``extra`` e.g. ``bytes=`` for bandwidth, ``note=``).
Modules must check correctness of every implementation they time (never time
zeros or unchecked outputs) and must import without a GPU.
"""
from __future__ import annotations

import torch


def make_time_us(warmup_ms: int = 25, rep_ms: int = 100):
    from triton.testing import do_bench

    def time_us(fn) -> float:
        return 1e3 * do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
    return time_us


def copy_us(time_us, nbytes: int, device: str = "cuda") -> float:
    """Device-to-device copy moving ``nbytes`` in total (read + write): the bandwidth limit."""
    src = torch.randint(0, 255, (nbytes // 2,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src))


def time_all(time_us, fns: dict, rounds: int = 2) -> dict:
    """Time every callable ``rounds`` times, interleaved (a, b, c, a, b, c) so that
    clock or thermal drift hits all alike; returns impl -> (best median, [medians])."""
    runs = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            runs[k].append(time_us(fn))
    return {k: (min(v), v) for k, v in runs.items()}
