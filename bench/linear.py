"""Weight-only low-bit matmul ``y = x @ W``: decode GEMV and small-M linear.

Cases (codes packed along K in int32, the GPTQ-like layout; per-channel fp16
scale/shift; fp16 x, random data):
* bench "gemv": M = 1, K = N = 4096 and 8192, nbit 8 / 4 / 2;
* bench "linear": int4, K = N = 8192, M = 4 and 16 (M = 1 is the gemv case).

Implementations, each checked against x @ W in float64 (W the exact dequantized
weight rounded once to fp16) before it is timed, relative error <= 1e-2 (norm
and max), else the bench fails:
* ours: ``kernels.linear.linear`` with an explicit config, a sweep of configs
  (``_candidates``: the default table's choice plus neighbours); the best is
  recorded as ``ours``, its config in ``note``, every config's time in
  ``configs``, the default table's time in ``default_us``;
* naive-triton: the same kernel, tiling, split-K and fp16x2 products as the best
  config, but shift/mask + int->float conversion instead of ``tl.dequantize``;
* cublas-fp16: ``x @ W16`` with a random fp16 ``[K, N]`` weight;
* torch-eager: unpack with shift/mask, ``* scale + shift`` in fp16, matmul;
* torch-compile: ``torch.compile`` of the same function;
* copy: a device copy moving the packed weight bytes (read + write).

``bytes``: packed weight + scale + shift bytes (what the op must read).
:func:`sweep` times a wider grid (bench "linear_sweep", one record per config).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from triton_dequant.kernels import linear as kl

from naive import unpack as naive_unpack
from triton_dequant import reference as ref

from common import time_all

C = kl.Config
GEMV_SIZES = (4096, 8192)
NBITS = (8, 4, 2)
LINEAR_M = (4, 16)
LINEAR_SIZE = 8192
TOL = 1e-2


# --- problems and baselines -----------------------------------------------------------------

def _problem(M, K, N, nbit, device, gen):
    per = 32 // nbit
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // per, N), dtype=torch.int32, device=device, generator=gen)
    s = torch.rand(N, device=device, generator=gen) * 0.02 + 0.005
    h = -s * (1 << (nbit - 1)) * (1 + 0.1 * torch.randn(N, device=device, generator=gen))
    x = torch.randn(M, K, device=device, generator=gen).half()
    return x, qw, s.half(), h.half()


def _torch_dequant(qw, s, h, nbit: int):
    per = 32 // nbit
    shifts = torch.arange(per, device=qw.device, dtype=torch.int32) * nbit
    q = (qw.unsqueeze(1) >> shifts[None, :, None]) & ((1 << nbit) - 1)  # [K/PER, PER, N]
    return q.reshape(-1, qw.shape[1]).half() * s + h


def _eager_fn(nbit: int):
    def f(x, qw, s, h):
        return x @ _torch_dequant(qw, s, h, nbit)
    return f


_COMPILED: dict = {}


def _compiled(nbit: int, shape: tuple):
    # one static graph per case: with dynamic shapes dynamo turns nbit into a
    # symbol and fails on the shift
    key = (nbit, shape)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(_eager_fn(nbit), fullgraph=True, dynamic=False)
    return _COMPILED[key]


def _check(name: str, y: torch.Tensor, want: torch.Tensor) -> float:
    """Relative error of ``y`` against the float64 ``want`` (norm and max); fails loudly."""
    d = y.double() - want
    err = (d.norm() / want.norm()).item()
    err_max = (d.abs().max() / want.abs().max()).item()
    if not (err <= TOL and err_max <= TOL):  # also catches NaN
        raise AssertionError(f"{name}: relative error {err:.3e} (max {err_max:.3e}) > {TOL}")
    return max(err, err_max)


# --- configs -----------------------------------------------------------------------------------

def _uniq(cfgs):
    out = []
    for c in cfgs:
        if c not in out:
            out.append(c)
    return out


def _candidates(M, K, N, nbit, level=1):
    """The default table's config first, then neighbours worth timing on the GPU.
    level 0: split-K neighbours only; 1: + tile/pipelining/reduction variants;
    2: the wide grid (:func:`sweep`)."""
    d = kl.default_config(M, K, N, nbit, 32, 0, torch.float16)
    v = lambda **kw: replace(d, **kw)  # noqa: E731
    s = d.split
    out = [d, v(split=max(1, s // 2)), v(split=2 * s)]
    if d.kernel == "gemv":
        if level >= 1:
            out += [v(bk=2 * d.bk, num_warps=8),           # same rows per thread, 2x the tile
                    v(num_stages=2),                         # cp.async pipelining
                    v(reduce=2),                             # fp32 atomics instead of partials
                    v(prefetch=True),                        # register double buffer
                    v(prefetch=True, split=max(1, s // 2)),
                    v(prefetch=True, bk=max(1, d.bk // 2), split=2 * s)]
            if d.bk > 4:
                out.append(v(bk=d.bk // 2, split=2 * s))
            if nbit < 8:
                out.append(v(post=False))                    # scale/shift inside the dequant asm
            if M > 1:
                out += [C("mm", bm=16, bk=128, bn=128, split=4, num_stages=2, dot16=False),
                        C("mm", bm=16, bk=128, bn=128, split=8, num_stages=2, dot16=False)]
        if level >= 2:
            out += [v(split=4 * s), v(bn=64, split=2 * s), v(bk=max(1, d.bk // 2), bn=256),
                    v(num_stages=3), v(dot16=False), v(bk=2 * d.bk, num_warps=8, split=2 * s),
                    v(bk=2 * d.bk, num_warps=8, num_stages=2)]
    else:
        if level >= 1:
            out += [v(num_stages=3), v(num_stages=1), v(bk=64, num_stages=3), v(bn=64, split=2 * s),
                    v(post=False), v(split=4 * s), v(bn=64, split=4 * s), v(bk=64, split=4 * s),
                    C("gemv", bm=4, bk=8, bn=128, split=8)]  # 4 x the decode kernel, weights via L2
        if level >= 2:
            out += [v(num_warps=8), v(bk=256, bn=64), v(bk=64, bn=64, split=2 * s, num_stages=3), v(reduce=2),
                    v(split=4 * s)]
    return _uniq(out)


# --- the bench -----------------------------------------------------------------------------

def _cases(sizes, linear_size):
    """(bench, M, K, N, nbit, sweep level): the largest GEMV size gets the full
    candidate list, smaller ones only split-K neighbours (compile time)."""
    for K in sizes:
        for nbit in NBITS:
            yield "gemv", 1, K, K, nbit, 1 if K == max(sizes) else 0
    for M in LINEAR_M:
        yield "linear", M, linear_size, linear_size, 4, 1


def _sweep_case(time_us, M, K, N, nbit, x, qw, s, h, want, cfgs, log):
    """Check, then time every config once; -> [(us, cfg)] sorted."""
    res = []
    for cfg in cfgs:
        fn = lambda cfg=cfg: kl.linear(x, qw, s, h, nbit, K, 0, False, config=cfg)
        try:
            y = fn()
        except Exception as e:  # a config the compiler rejects (resources): skip it, say so
            log(f"    skip {cfg.short()}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        _check(f"ours {cfg.short()}", y, want)
        us = time_us(fn, graph=True)  # device time: decode loops replay graphs
        log(f"    {us:8.1f} us  {cfg.short()}")
        res.append((us, cfg))
    if not res:
        raise RuntimeError(f"no config ran for M={M} K={K} N={N} nbit={nbit}")
    return sorted(res, key=lambda t: t[0])


def run(time_us, record, device="cuda", sizes=GEMV_SIZES, linear_size=LINEAR_SIZE, use_compile=True):
    gen = torch.Generator(device=device).manual_seed(0)
    log = lambda msg: print(msg, flush=True)
    for bench, M, K, N, nbit, level in _cases(sizes, linear_size):
        t0 = time.time()
        shape = f"M={M},K={K},N={N}"
        x, qw, s, h = _problem(M, K, N, nbit, device, gen)
        nbytes = qw.numel() * 4 + 4 * N
        w = ref.linear_weight(qw, s, h, nbit, dtype=torch.float16).double()
        want = x.double() @ w
        del w
        log(f"  {bench} nbit={nbit} {shape}")
        ranked = _sweep_case(time_us, M, K, N, nbit, x, qw, s, h, want, _candidates(M, K, N, nbit, level), log)
        best_us, best = ranked[0]
        default = kl.default_config(M, K, N, nbit, 32, 0, torch.float16)
        default_us = next((us for us, c in ranked if c == default), None)

        ours = lambda: kl.linear(x, qw, s, h, nbit, K, 0, False, config=best)
        naive = lambda: kl.linear(x, qw, s, h, nbit, K, 0, False, config=best, unpack=naive_unpack)
        _check("naive-triton", naive(), want)
        w16 = torch.randn(K, N, device=device, generator=gen).half()
        cublas = lambda: x @ w16
        _check("cublas-fp16", cublas(), x.double() @ w16.double())
        eager_f = _eager_fn(nbit)
        eager = lambda: eager_f(x, qw, s, h)
        _check("torch-eager", eager(), want)
        fns = {"ours": ours, "naive-triton": naive, "cublas-fp16": cublas, "torch-eager": eager}
        if use_compile:
            comp_f = _compiled(nbit, (M, K, N))
            comp = lambda: comp_f(x, qw, s, h)
            _check("torch-compile", comp(), want)
            fns["torch-compile"] = comp
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        fns["copy"] = lambda: dst.copy_(src)
        configs = "; ".join(f"{us:.1f} {c.short()}" for us, c in ranked)
        for impl, (us, runs) in time_all(time_us, fns, graph=True).items():
            extra = {}
            if impl == "ours":
                extra = dict(note=best.short(), configs=configs, sweep_best_us=best_us, default_us=default_us,
                             default=default.short())
            elif impl == "naive-triton":
                extra = dict(note=best.short())
            elif impl == "cublas-fp16":
                extra = dict(fp16_weight_bytes=K * N * 2)
            record(bench=bench, nbit=nbit, shape=shape, impl=impl, us=us, bytes=nbytes, runs=runs, **extra)
        log(f"  ({time.time() - t0:.0f} s)")
        del x, qw, s, h, want, w16, src, dst


def sweep(time_us, record, device="cuda", sizes=GEMV_SIZES, linear_size=LINEAR_SIZE):
    """Every candidate config of every case (the wide grid), one record per config:
    bench "linear_sweep", impl "ours", note = config. For updating
    ``kernels.linear.default_config``."""
    gen = torch.Generator(device=device).manual_seed(1)
    log = lambda msg: print(msg, flush=True)
    for bench, M, K, N, nbit, _ in _cases(sizes, linear_size):
        shape = f"M={M},K={K},N={N}"
        x, qw, s, h = _problem(M, K, N, nbit, device, gen)
        want = x.double() @ ref.linear_weight(qw, s, h, nbit, dtype=torch.float16).double()
        log(f"  sweep {bench} nbit={nbit} {shape}")
        ranked = _sweep_case(time_us, M, K, N, nbit, x, qw, s, h, want, _candidates(M, K, N, nbit, 2), log)
        for rank, (us, cfg) in enumerate(ranked):
            record(bench="linear_sweep", nbit=nbit, shape=shape, impl="ours", us=us,
                   bytes=qw.numel() * 4 + 4 * N, note=cfg.short(), rank=rank, case=bench)


# run.py --dry-run (CPU, interpreter): tiny shapes, no torch.compile
DRY_RUN = {"sizes": (256,), "linear_size": 256, "use_compile": False}
