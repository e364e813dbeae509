"""CPU benchmarks of the host ops' CPU paths (no GPU, no Triton interpreter).

    PYTHONPATH=python python bench/cpu.py [linear] [embedding_bag] [dequantize] [packing]

Prints one line per case: best of ``--reps`` wall-clock times (after one warm-up
call), our op against its baseline, and the ratio. Every output is checked
(exactly, or against the baseline's float64 value) before it is timed.

* ``linear``: ``ops.linear`` (int4, g128, fp16 scale/shift as ``quantize`` makes
  them, fp32 ``x``) against ``x @ W`` in fp32 on the already-dequantized weight.
* ``embedding_bag``: ``ops.embedding_bag`` on a 2**20 x 128 int4 row-fused table,
  64 bags of 8 lookups, against ``F.embedding_bag`` on the dequantized table.
* ``dequantize``: peak RSS increase of ``ops.dequantize`` relative to its output.
* ``packing``: ``pack``/``unpack`` of 2**24 codes, eager and ``torch.compile``,
  against torchao's pure-torch bitpacking (if importable) and a plain
  shifted-slices baseline written here.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

REPS = 5


def best_ms(fn, reps: int = REPS) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def line(name: str, ours: float, base: float, base_name: str) -> None:
    print(f"{name:<58} ours {ours:9.3f} ms   {base_name} {base:9.3f} ms   ratio {ours / base:6.2f}x", flush=True)


# --- linear --------------------------------------------------------------------------------------

def bench_linear(reps: int) -> None:
    from triton_dequant import ops, packing, reference as ref

    K = N = 4096
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) * 0.02  # nn.Linear weight [out, in]
    packed, scale, shift = packing.quantize(w.t().contiguous(), 4, group_size=128, dim=0)  # [K/8, N], [K/128, N]
    wd = ref.linear_weight(packed, scale, shift, 4, dtype=torch.float32, group_size=128)  # exact, once
    for M in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(M, K, generator=g).to(dtype)
            ours = lambda: ops.linear(x, packed, scale, shift, 4, group_size=128)
            base = lambda: x.float() @ wd
            exact = x.double() @ wd.double()
            err = ((ours().double() - exact).norm() / exact.norm()).item()
            assert err < (1e-5 if dtype == torch.float32 else 1e-2), err
            line(f"linear int4 g128 M={M} K=N={K} x={str(dtype)[6:]}", best_ms(ours, reps), best_ms(base, reps),
                 "fp32 matmul")


SECTIONS = {"linear": bench_linear}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS) + [[]])
    ap.add_argument("--reps", type=int, default=REPS)
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for s in args.sections or SECTIONS:
        SECTIONS[s](args.reps)


if __name__ == "__main__":
    main(sys.argv[1:])
