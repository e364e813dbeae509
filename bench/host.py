"""Eager host time per ``linear`` call next to ``torch.matmul``'s (bench "host").

What a Python decode loop without CUDA graphs pays per layer call. Each
implementation is called ``calls`` times in a tight loop, with no
synchronization per call, then the device is synchronized once; ``us`` = wall
time / calls, the best of ``rounds`` rounds (after a warm-up). When the device
is faster than the host the launch queue stays short and ``us`` is the host
cost; at the tiny shape the kernels take a few us, so host cost dominates
there. ``gpu_us`` (extra): the same call as a CUDA-graph replay, L2 flushed
(device time only): where ``us`` is close to it the loop was device-bound.

Cases: int4 groups of 128, fp16 x ``[M, K]``, (M, K, N) in ``CASES``: K = N = 4096
at M = 1 and 16, and a tiny K = N = 256 at M = 1 and 16 (shape tag ``tiny``).

Implementations, each checked against float64 x @ W (relative error <= 1e-2)
before it is timed:
* ours: ``triton_dequant.ops.linear(x, qweight, scale, shift, 4, 128)`` on plain
  weights (argument checks, plan lookup, one launch);
* ours-prepacked: the same op on the weights prepacked in the device's
  ``layouts.default_layout`` (``layout=``), what ``QuantizedLinear`` runs on a GPU;
* quantized-linear: ``QuantizedLinear.forward`` (the module, layout "auto");
* torch-matmul: ``torch.matmul(x, W16)``, W16 a random fp16 ``[K, N]``;
* f-linear: ``torch.nn.functional.linear(x, W16t)``, W16t ``[N, K]``;
* nn-linear: an fp16 ``nn.Linear(K, N, bias=False)`` module's forward.

Records: bench ``"host"``, nbit 4, impl as above, ``us`` per call, extra
``calls``, ``gpu_us``, ``runs`` (every round's us per call).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from triton_dequant import QuantizedLinear, layouts, ops, packing
from triton_dequant import reference as ref

GROUP = 128
CASES = ((1, 4096, 4096, ""), (16, 4096, 4096, ""), (1, 256, 256, "tiny"), (16, 256, 256, "tiny"))
CALLS = 2000
ROUNDS = 5
TOL = 1e-2
# estimate of this module's GPU run (s): Triton compiles: GEMV and mm for the
# plain weights, the prepacked kernel at M = 1 and 16, for 2 shapes (split-K
# differs) ~8 x ~1 s; loops 4 cases x 6 impls x 6 x 2000 calls x ~10-30 us ~ 5 s;
# 24 do_bench calls (gpu_us) ~ 4 s
ESTIMATE_S = 20
COMPILE_S = 8  # the package-kernel compiles in ESTIMATE_S: what bench/precompile.py takes off the run (plan_kernels lists them)


def _sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _per_call_us(fn, device, calls, rounds):
    """Best-of-``rounds`` wall us per call of ``calls`` back-to-back calls, one sync at the end."""
    for _ in range(min(50, calls)):  # warm-up: plan cache, allocator
        fn()
    _sync(device)
    runs = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        runs.append(1e6 * (time.perf_counter() - t) / calls)
    return min(runs), runs


def _check(name, y, want):
    err = ((y.double() - want).norm() / want.norm()).item()
    if not err <= TOL:
        raise AssertionError(f"host {name}: relative error {err:.2e} > {TOL}")


def plan_kernels(target, cases=CASES, calls=CALLS, rounds=ROUNDS):
    """The kernels :func:`run` compiles on ``target`` (bench/precompile.py)."""
    from linear import meta_kernels
    lay = layouts.default_layout(target.arch, 4)
    out = []
    for M, K, N, _ in cases:
        out += meta_kernels(target, M, K, N, 4, K // GROUP, GROUP)
        out += meta_kernels(target, M, K, N, 4, K // GROUP, GROUP, layout=lay)
    return out


def run(time_us, record, device="cuda", cases=CASES, calls=CALLS, rounds=ROUNDS):
    gen = torch.Generator(device=device).manual_seed(5)
    cap = torch.cuda.get_device_capability(device) if str(device).startswith("cuda") else (9, 0)
    lay = layouts.default_layout(cap, 4)
    dtype = torch.float16
    for M, K, N, tag in cases:
        shape = f"M={M},K={K},N={N},g{GROUP}" + (f",{tag}" if tag else "")
        codes = torch.randint(0, 16, (K, N), dtype=torch.int32, device=device, generator=gen)
        qw = packing.pack(codes, 4, dim=0, container=torch.int32, check=False)
        data = lay.prepack_codes(codes)
        s = (torch.rand(K // GROUP, N, device=device, generator=gen) * 0.02 + 0.005).to(dtype)
        h = (-8 * s.float() * (1 + 0.1 * torch.randn(K // GROUP, N, device=device, generator=gen))).to(dtype)
        w = ref.linear_weight(qw, s, h, 4, dtype=dtype, group_size=GROUP)
        x = torch.randn(M, K, device=device, generator=gen).to(dtype)
        want = x.double() @ w.double()
        w16 = torch.randn(K, N, device=device, generator=gen).to(dtype)
        w16t = w16.t().contiguous()
        want16 = x.double() @ w16.double()
        lin = torch.nn.Linear(K, N, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(w16t)
            qlin = QuantizedLinear.from_linear(lin, 4, GROUP)  # layout "auto" on this device
        fns = {
            "ours": lambda: ops.linear(x, qw, s, h, 4, GROUP),
            "ours-prepacked": lambda: ops.linear(x, data, s, h, 4, GROUP, layout=lay),
            "quantized-linear": lambda: qlin(x),
            "torch-matmul": lambda: torch.matmul(x, w16),
            "f-linear": lambda: F.linear(x, w16t),
            "nn-linear": lambda: lin(x),
        }
        with torch.no_grad():
            _check("ours", fns["ours"](), want)
            _check("ours-prepacked", fns["ours-prepacked"](), want)
            _check("quantized-linear", fns["quantized-linear"](),
                   x.double() @ qlin.dequantized_weight(dtype).double().t())
            for impl in ("torch-matmul", "f-linear", "nn-linear"):
                _check(impl, fns[impl](), want16)
            for impl, fn in fns.items():
                us, runs = _per_call_us(fn, device, calls, rounds)
                gpu = time_us(fn, graph=True) if str(device).startswith("cuda") else None
                record(bench="host", nbit=4, shape=shape, impl=impl, us=us, runs=runs, calls=calls, gpu_us=gpu,
                       layout=lay.name if impl == "ours-prepacked" else qlin.layout if impl == "quantized-linear"
                       else None)
        del codes, qw, data, s, h, w, x, want, w16, w16t, lin, qlin


DRY_RUN = {"cases": ((1, 256, 256, "tiny"), (16, 256, 128, "tiny")), "calls": 5, "rounds": 2}
