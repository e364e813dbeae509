"""Benchmark plumbing shared by the bench modules (see bench/run.py).

Each bench module exposes ``run(time_us, record, device="cuda")``:
* ``time_us(fn) -> float``: median microseconds of ``fn()`` (triton.testing.do_bench,
  L2 flushed between repetitions, warm-up included);
* ``record(bench=..., nbit=..., shape=..., impl=..., us=..., **extra)`` appends one
  row to the results (``extra`` e.g. ``bytes=`` for bandwidth, ``note=``).
Modules must check correctness of every implementation they time (never time
zeros or unchecked outputs) and must import without a GPU. A module's
``ESTIMATE_S`` is its rough GPU run time (compiles included), which run.py's
``--budget-s`` uses; optional parts of a module (its later shapes) ask
:func:`past_soft_deadline` before they start.
"""
from __future__ import annotations

import time

import torch

# time.monotonic() after which a module should skip its optional parts (run.py sets it
# per module: the budget's end minus what the modules after it are estimated to need)
_SOFT_DEADLINE = [float("inf")]


def set_soft_deadline(t: float) -> None:
    _SOFT_DEADLINE[0] = t


def past_soft_deadline() -> bool:
    return time.monotonic() > _SOFT_DEADLINE[0]


def cuda_graph(fn):
    """``fn`` captured in a CUDA graph; returns its replay. Timing the replay
    measures device time only: no Python, no launch overhead (how decode loops
    run in inference engines)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up on the capture stream (allocator, lazy init)
        with torch.cuda.graph(g):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    return g.replay


def make_time_us(warmup_ms: int = 25, rep_ms: int = 100):
    from triton.testing import do_bench

    def time_us(fn, graph: bool = False) -> float:
        """Median us of ``fn`` (L2 flushed before every repetition). ``graph=True``
        times a CUDA-graph replay of ``fn`` instead (device time, no host cost)."""
        return 1e3 * do_bench(cuda_graph(fn) if graph else fn, warmup=warmup_ms, rep=rep_ms,
                              return_mode="median")
    return time_us


def copy_us(time_us, nbytes: int, device: str = "cuda") -> float:
    """Device-to-device copy moving ``nbytes`` in total (read + write): the bandwidth limit."""
    src = torch.randint(0, 255, (nbytes // 2,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src))


def time_all(time_us, fns: dict, rounds: int = 2, graph: bool = False) -> dict:
    """Time every callable ``rounds`` times, interleaved (a, b, c, a, b, c) so that
    clock or thermal drift hits all alike; returns impl -> (best median, [medians])."""
    runs = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            runs[k].append(time_us(fn, graph=graph) if graph else time_us(fn))
    return {k: (min(v), v) for k, v in runs.items()}
