"""Weight-only low-bit matmul ``y = x @ W`` on tensor cores: the M sweep (bench "linear").

(The batch-1 GEMV is bench/gemv.py; it imports this module's helpers.)

Cases: int4, groups of 128 (fp16 scale/shift ``[K/128, N]``), M in ``LINEAR_M``
(2 .. 256) at (K, N) in ``LINEAR_SHAPES`` (8192^2, 8192 x 28672, 28672 x 8192; a
shape after the first is skipped once ``common.past_soft_deadline()``), fp16 x, and bf16 x (scale/shift bf16, cuBLAS in bf16)
at M = 16 and 64 on the first shape (``,bf16`` in ``shape``). "ours" is the
weights prepacked once in the device's :mod:`triton_dequant.layouts` layout, run
by ``kernels.linear._mma_prepacked`` (what a layer holding prepacked weights, the
GPU default of ``QuantizedLinear``, runs at every M).

Implementations, each checked against x @ W in float64 (W the exact dequantized
weight rounded once to x.dtype) before it is timed, relative error <= 1e-2 (norm
and max), else the bench fails:
* ours: ``kernels.linear.linear`` with an explicit config, the best of the
  launch table's choice and, on the first shape in fp16 at ``TUNE_M`` only, at
  most two neighbours (``_pp_candidates``; compile time); its config in
  ``note``, every config's time in ``configs``, the launch table's time in
  ``default_us``;
* naive-triton: the same kernel, tiling and split-K as the best config (same
  bytes), with the shift/mask + int->float unpack of ``bench/naive.py`` instead
  of ``tl.dequantize``;
* cublas-fp16: ``x @ W16`` with a random ``[K, N]`` weight of x.dtype;
* ours-plain (first shape, fp16): the same weights in the plain layout, the
  launch table's route (GEMV for M <= 4, the shared-memory ``_mma`` kernel,
  dequantize + cuBLAS from ``DEQUANT_MIN_M``); dequant-cublas (M >= 64, first
  shape, fp16): that last route forced. These two feed the routing rule in
  ``kernels/linear/_config.py``;
* copy: a device copy moving the packed weight bytes (read + write).

``bytes``: packed weight + scale + shift bytes (what the op must read).
:func:`sweep` times a wider grid of GEMV configs (bench "linear_sweep", one record per config).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from triton_dequant import layouts, packing
from triton_dequant import reference as ref
from triton_dequant.kernels import linear as kl

import common
from common import time_all
from naive import unpack as naive_unpack

C = kl.Config
GEMV_SIZES = (4096, 8192)  # (sweep only; bench/gemv.py has the GEMV cases)
NBITS = (8, 4, 2)
LINEAR_M = (2, 4, 8, 16, 32, 64, 128, 256)
# (K, N); a shape after the first is skipped when run.py's budget runs short (the last first)
LINEAR_SHAPES = ((8192, 8192), (8192, 28672), (28672, 8192))
LINEAR_BF16_M = (16, 64)
TUNE_M = (16, 32, 64, 128)  # Ms whose neighbour configs are timed (the tight targets)
LINEAR_GROUP = 128
TOL = 1e-2
# estimate of this module's GPU run (s). Triton compiles (~1-2 s each for the
# pipelined tensor-core kernels): plan_kernels lists 48 unique (ours: 8 M + 2 x 4
# TUNE_M neighbours + 2 bf16 at 8192^2, the other shapes share their configs; the
# naive twin of each; ours-plain 2 GEMV + 4 mm + the dequant route) ~ 60 s; timing
# 26 cases, ~230 do_bench calls x ~0.15 s = 35 s; data, prepacking, references ~15 s
ESTIMATE_S = 130
COMPILE_S = 60  # the package-kernel compiles in ESTIMATE_S: what bench/precompile.py takes off the run (plan_kernels lists them)


# --- problems and baselines -----------------------------------------------------------------

def _problem(M, K, N, nbit, device, gen):
    per = 32 // nbit
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // per, N), dtype=torch.int32, device=device, generator=gen)
    s = torch.rand(N, device=device, generator=gen) * 0.02 + 0.005
    h = -s * (1 << (nbit - 1)) * (1 + 0.1 * torch.randn(N, device=device, generator=gen))
    x = torch.randn(M, K, device=device, generator=gen).half()
    return x, qw, s.half(), h.half()


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


def _sms(device) -> int:
    """SM count of ``device`` (132, an H100/H200 SXM, for the CPU dry run)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if str(device).startswith("cuda") else 132


def _candidates(M, K, N, nbit, level=1, sms=132):
    """The default table's config first, then neighbours worth timing on the GPU.
    level 0: split-K neighbours only; 1: + tile/pipelining/reduction variants;
    2: the wide grid (:func:`sweep`)."""
    d = kl.default_config(M, K, N, nbit, 32, 0, torch.float16, sms)
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


# --- kernels a run will compile (bench/precompile.py) ------------------------------------------

def meta_kernels(target, M, K, N, nbit, groups, group_size, cfg=None, unpack=None, layout=None,
                 dtype=torch.float16):
    """The kernels ``kernels.linear.linear`` launches for this call on ``target``, planned
    on meta tensors of the call's shapes (what the bench's real tensors give: 16-byte
    aligned, contiguous). ``groups`` 0: per-channel ``[N]`` scale/shift."""
    meta = lambda shape, dt: torch.empty(shape, dtype=dt, device="meta")  # noqa: E731
    x = meta((M, K), dtype)
    qw = meta(layout.shape(K, N) if layout is not None else (K // (32 // nbit), N), torch.int32)
    s = meta((groups, N) if groups else (N,), dtype)
    call, *_ = kl._prepare(x, qw, s, s, nbit, group_size, 0, False, cfg, unpack, layout, None)
    return kl.plan(call, target).kernels


def plan_kernels(target, linear_shapes=LINEAR_SHAPES, linear_m=LINEAR_M, linear_bf16_m=LINEAR_BF16_M,
                 tune_m=TUNE_M):
    """Every kernel :func:`run` may compile on ``target`` (the naive twin of every candidate)."""
    lay = layouts.default_layout(target.arch, 4)
    out = []
    for M, K, N, dtype in _linear_cases(linear_shapes, linear_m, linear_bf16_m):
        main, tune = _main_case(M, K, N, dtype, linear_shapes, tune_m)
        cands = (_pp_candidates(M, K, N, lay, dtype, target.num_sms) if tune
                 else [kl.prepacked_config(M, K, N, lay, dtype, target.num_sms)])
        G = K // LINEAR_GROUP
        for cfg in cands:
            for unpack in (None, naive_unpack):
                out += meta_kernels(target, M, K, N, 4, G, LINEAR_GROUP, cfg, unpack, lay, dtype)
        if main:
            out += meta_kernels(target, M, K, N, 4, G, LINEAR_GROUP)
            if M >= 64:
                out += meta_kernels(target, M, K, N, 4, G, LINEAR_GROUP, C("dequant"))
    return out


# --- the bench -----------------------------------------------------------------------------

def _cases(sizes):
    """(bench, M, K, N, nbit, sweep level): the largest GEMV size gets the full
    candidate list, smaller ones only split-K neighbours (compile time)."""
    for K in sizes:
        for nbit in NBITS:
            yield "gemv", 1, K, K, nbit, 1 if K == max(sizes) else 0


def _linear_cases(shapes, ms, bf16_ms):
    """(M, K, N, dtype) of the "linear" bench."""
    for K, N in shapes:
        for M in ms:
            yield M, K, N, torch.float16
            if M in bf16_ms and (K, N) == shapes[0]:
                yield M, K, N, torch.bfloat16


def _main_case(M, K, N, dtype, shapes, tune_m) -> tuple:
    """(first shape in fp16: time ours-plain and dequant-cublas, tune: time neighbour configs)."""
    main = (K, N) == tuple(shapes[0]) and dtype == torch.float16
    return main, main and M in tune_m


def _rank(time_us, run, cfgs, want, log, what: str):
    """Check, then time ``run(cfg)`` for every config once; -> [(us, cfg)] sorted.
    A config the compiler rejects (resources) is skipped and logged."""
    res = []
    for cfg in cfgs:
        fn = lambda cfg=cfg: run(cfg)  # noqa: E731
        try:
            y = fn()
        except Exception as e:
            log(f"    skip {cfg.short()}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        _check(f"ours {cfg.short()}", y, want)
        us = time_us(fn, graph=True)  # device time: decode loops replay graphs
        log(f"    {us:8.1f} us  {cfg.short()}")
        res.append((us, cfg))
    if not res:
        raise RuntimeError(f"no config ran for {what}")
    return sorted(res, key=lambda t: t[0])


def _sweep_case(time_us, M, K, N, nbit, x, qw, s, h, want, cfgs, log, group_size=None):
    """:func:`_rank` of the plain-layout configs. ``group_size``: K (per channel) if None."""
    gsize = group_size or K
    return _rank(time_us, lambda cfg: kl.linear(x, qw, s, h, nbit, gsize, 0, False, config=cfg), cfgs, want, log,
                 f"M={M} K={K} N={N} nbit={nbit}")


# --- the "linear" bench: prepacked weights -------------------------------------------------------

def _layout(device):
    cap = torch.cuda.get_device_capability(device) if str(device).startswith("cuda") else (9, 0)
    return layouts.default_layout(cap, 4)


def _pp_candidates(M, K, N, layout, dtype, sms):
    """The launch table's config, then at most two neighbours: split-K x2 / ÷2
    (or one more pipeline stage without split-K); 8 warps for bm = 64."""
    d = kl.prepacked_config(M, K, N, layout, dtype, sms)
    v = lambda **kw: replace(d, **kw)  # noqa: E731
    out = [d, v(split=2 * d.split)]
    out.append(v(split=d.split // 2) if d.split > 1 else v(num_stages=d.num_stages + 1))
    if d.bm == 64 and 8 in layout.compatible_warps():
        out[-1] = v(num_warps=8)
    return _uniq(out)


def _linear_problem(M, K, N, dtype, device, gen):
    groups = K // LINEAR_GROUP
    codes = torch.randint(0, 16, (K, N), device=device, generator=gen, dtype=torch.int32)
    s = (torch.rand(groups, N, device=device, generator=gen) * 0.02 + 0.005)
    h = -s * 8 * (1 + 0.1 * torch.randn(groups, N, device=device, generator=gen))
    x = torch.randn(M, K, device=device, generator=gen).to(dtype)
    return x, codes, s.to(dtype), h.to(dtype)


def run_linear(time_us, record, device, shapes, ms, bf16_ms, tune_m=TUNE_M):
    gen = torch.Generator(device=device).manual_seed(2)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    lay = _layout(device)
    sms = _sms(device)
    prepared = {}
    for M, K, N, dtype in _linear_cases(shapes, ms, bf16_ms):
        if (K, N) != tuple(shapes[0]) and M == ms[0] and common.past_soft_deadline():
            log(f"  linear: soft deadline passed, shapes from {K}x{N} on skipped")
            break
        main, tune = _main_case(M, K, N, dtype, shapes, tune_m)
        t0 = time.time()
        tag = "" if dtype == torch.float16 else ",bf16"
        shape = f"M={M},K={K},N={N}{tag}"
        key = (K, N, dtype)
        if key not in prepared:  # weights (and their prepacking) shared by every M of a shape
            prepared.clear()
            _, codes, s, h = _linear_problem(1, K, N, dtype, device, gen)
            qw = packing.pack(codes, 4, dim=0, container=torch.int32, check=False)
            data = lay.prepack_codes(codes)
            w = ref.linear_weight(qw, s, h, 4, dtype=dtype, group_size=LINEAR_GROUP)
            w16 = torch.randn(K, N, device=device, generator=gen).to(dtype)
            prepared[key] = (qw, data, s, h, w, w16)
            del codes
        qw, data, s, h, w, w16 = prepared[key]
        x = torch.randn(M, K, device=device, generator=gen).to(dtype)
        want = x.double() @ w.double()
        nbytes = qw.numel() * 4 + 2 * s.numel() * s.element_size()
        log(f"  linear nbit=4 {shape} ({lay.name})")
        cands = _pp_candidates(M, K, N, lay, dtype, sms) if tune else [kl.prepacked_config(M, K, N, lay, dtype, sms)]
        ranked = _rank(time_us, lambda cfg: kl.linear(x, data, s, h, 4, LINEAR_GROUP, 0, False, config=cfg, layout=lay),
                       cands, want, log, f"prepacked {shape}")
        best_us, best = ranked[0]
        default = kl.prepacked_config(M, K, N, lay, dtype, sms)
        default_us = next((us for us, c in ranked if c == default), None)
        fns = {
            "ours": lambda: kl.linear(x, data, s, h, 4, LINEAR_GROUP, 0, False, config=best, layout=lay),
            "naive-triton": lambda: kl.linear(x, data, s, h, 4, LINEAR_GROUP, 0, False, config=best, layout=lay,
                                              unpack=naive_unpack),
            "cublas-fp16": lambda: x @ w16,
        }
        if main:
            fns["ours-plain"] = lambda: kl.linear(x, qw, s, h, 4, LINEAR_GROUP, 0, False)
        if main and M >= 64:
            fns["dequant-cublas"] = lambda: kl.linear(x, qw, s, h, 4, LINEAR_GROUP, 0, False, config=C("dequant"))
        for name in ("naive-triton", "ours-plain", "dequant-cublas"):
            if name in fns:
                _check(name, fns[name](), want)
        _check("cublas-fp16", fns["cublas-fp16"](), x.double() @ w16.double())
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        fns["copy"] = lambda: dst.copy_(src)
        plain_cfg = kl.default_config(M, K, N, 4, 32, 0, dtype, sms)
        configs = "; ".join(f"{us:.1f} {c.short()}" for us, c in ranked)
        for impl, (us, runs) in time_all(time_us, fns, graph=True).items():
            extra = {}
            if impl == "ours":
                extra = dict(note=best.short(), configs=configs, sweep_best_us=best_us, default_us=default_us,
                             default=default.short(), layout=lay.name, group=LINEAR_GROUP)
            elif impl == "naive-triton":
                extra = dict(note=best.short(), layout=lay.name)
            elif impl == "ours-plain":
                extra = dict(note=plain_cfg.short())
            elif impl == "cublas-fp16":
                extra = dict(fp16_weight_bytes=K * N * 2)
            record(bench="linear", nbit=4, shape=shape, impl=impl, us=us, bytes=nbytes, runs=runs, **extra)
        log(f"  ({time.time() - t0:.0f} s)")
        del x, want, src, dst
    prepared.clear()


def run(time_us, record, device="cuda", linear_shapes=LINEAR_SHAPES, linear_m=LINEAR_M,
        linear_bf16_m=LINEAR_BF16_M, tune_m=TUNE_M):
    run_linear(time_us, record, device, linear_shapes, linear_m, linear_bf16_m, tune_m)


def sweep(time_us, record, device="cuda", sizes=GEMV_SIZES):
    """Every candidate config of every case (the wide grid), one record per config:
    bench "linear_sweep", impl "ours", note = config. For updating
    ``kernels.linear.default_config``."""
    gen = torch.Generator(device=device).manual_seed(1)
    log = lambda msg: print(msg, flush=True)
    for bench, M, K, N, nbit, _ in _cases(sizes):
        shape = f"M={M},K={K},N={N}"
        x, qw, s, h = _problem(M, K, N, nbit, device, gen)
        want = x.double() @ ref.linear_weight(qw, s, h, nbit, dtype=torch.float16).double()
        log(f"  sweep {bench} nbit={nbit} {shape}")
        ranked = _sweep_case(time_us, M, K, N, nbit, x, qw, s, h, want, _candidates(M, K, N, nbit, 2), log)
        for rank, (us, cfg) in enumerate(ranked):
            record(bench="linear_sweep", nbit=nbit, shape=shape, impl="ours", us=us,
                   bytes=qw.numel() * 4 + 4 * N, note=cfg.short(), rank=rank, case=bench)


# run.py --dry-run (CPU, interpreter): tiny shapes, no torch.compile
DRY_RUN = {"linear_shapes": ((256, 256), (256, 128)), "linear_m": (2, 16, 64, 256), "linear_bf16_m": (16,),
           "tune_m": (16,)}
