"""Batch-1 weight-only GEMV ``y = x @ W`` (M = 1) at Llama shapes: the decode kernel at the memory wall.

Cases (random data): nbit 8 / 4 / 2, codes packed along K in int32 (the GPTQ-like
plain layout ``[K / PER, N]``), (K, N) in ``SHAPES`` (8192^2, 8192 x 28672,
28672 x 8192, 8192 x 10240: Llama-3-70B's o/gate-up/down/qkv), per channel (fp16
scale/shift ``[N]``, shape tag ``pc``) and groups of 128 (``[K / 128, N]``, tag
``g128``); fp16 x. Shape string ``M=1,K=..,N=..,pc|g128``.

Implementations, each checked against x @ W in float64 (W the exact dequantized
weight rounded once to fp16) before it is timed (relative error <= 1e-2, norm and
max, else the bench fails):
* ours: ``kernels.linear.linear`` on the plain weights with an explicit config:
  the launch table's (``default_config`` with this GPU's SM count) and, for
  8192^2 only, its split-K neighbours (x2, /2: compile time); the best is
  recorded, its config in ``note``, every config's time in ``configs``, the
  table's time in ``default_us``;
* ours-prepacked (int4 g128 only): the same codes prepacked once in the device's
  :func:`triton_dequant.layouts.default_layout` and run at M = 1 by the
  tensor-core kernel (``_mma_prepacked``, the launch table's config): what a
  ``QuantizedLinear`` holding the prepacked layout runs at batch 1; compare with
  ours (plain GEMV) in the same case;
* naive-triton: the same kernel and config as ours with the shift/mask +
  int->float unpack of ``bench/naive.py``;
* cublas-fp16: ``x @ W16`` with a random fp16 ``[K, N]`` weight;
* torch-eager: unpack by shift/mask, ``* scale + shift`` in fp16, matmul;
  torch-compile: the same function under ``torch.compile`` (8192^2 only);
* copy: a device copy moving the packed weight + scale + shift bytes (read +
  written): ``copy_us / ours_us`` is the fraction of the memory wall.

All timed as CUDA-graph replays (device time), interleaved twice, L2 flushed.
``bytes``: packed weight + scale + shift bytes (what the op must read).
"""
from __future__ import annotations

import time

import torch

from triton_dequant import layouts
from triton_dequant import reference as ref
from triton_dequant.kernels import linear as kl

import common
from common import time_all
from linear import _candidates, _check, _layout, _sms, _sweep_case, meta_kernels
from naive import unpack as naive_unpack

SHAPES = ((8192, 8192), (8192, 28672), (28672, 8192), (8192, 10240))  # (K, N)
NBITS = (8, 4, 2)
GROUPS = (None, 128)  # per channel, g128
# estimate of this module's GPU run (s). Triton compiles (~1 s each on the H100):
# ours 3 nbit x 2 scale modes x 3 distinct split-K values (N/128 tiles: 64, 224,
# 80; 28672x8192 shares 8192^2's) = 18, + 2 neighbours x 6 at 8192^2 = 12, the naive
# twin 18 + 6, ours-prepacked 3 => ~57 s; torch.compile 6 x ~4 s = 24 s; timing
# ~300 do_bench calls x ~0.15 s = 45 s; references and data ~10 s
ESTIMATE_S = 135
COMPILE_S = 55  # the package-kernel compiles in ESTIMATE_S: what bench/precompile.py takes off the run (plan_kernels lists them)


def _group_tag(group):
    return "pc" if group is None else f"g{group}"


def _problem(K, N, nbit, group, device, gen):
    per = 32 // nbit
    G = 1 if group is None else K // group
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // per, N), dtype=torch.int32, device=device, generator=gen)
    s = torch.rand(G, N, device=device, generator=gen) * 0.02 + 0.005
    h = -s * (1 << (nbit - 1)) * (1 + 0.1 * torch.randn(G, N, device=device, generator=gen))
    if group is None:
        s, h = s[0], h[0]
    x = torch.randn(1, K, device=device, generator=gen).half()
    return x, qw, s.half(), h.half()


def _torch_dequant(qw, s, h, nbit: int):
    """Shift/mask unpack and ``q * s + h`` in fp16, in torch (per channel ``s [N]`` or groups ``[G, N]``)."""
    per = 32 // nbit
    shifts = torch.arange(per, device=qw.device, dtype=torch.int32) * nbit
    q = (qw.unsqueeze(1) >> shifts[None, :, None]) & ((1 << nbit) - 1)  # [K/PER, PER, N]
    N = qw.shape[1]
    q = q.reshape(-1, N).half()
    if s.dim() == 1:
        return q * s + h
    G = s.shape[0]
    return (q.reshape(G, -1, N) * s[:, None, :] + h[:, None, :]).reshape(-1, N)


def _eager_fn(nbit: int):
    def f(x, qw, s, h):
        return x @ _torch_dequant(qw, s, h, nbit)
    return f


_COMPILED: dict = {}


def _compiled(nbit: int, key: tuple):
    # one static graph per case: with dynamic shapes dynamo turns nbit into a symbol and fails on the shift
    if (nbit, key) not in _COMPILED:
        _COMPILED[(nbit, key)] = torch.compile(_eager_fn(nbit), fullgraph=True, dynamic=False)
    return _COMPILED[(nbit, key)]


def plan_kernels(target, shapes=SHAPES, nbits=NBITS, groups=GROUPS, use_compile=True, prepacked=True):
    """Every kernel :func:`run` may compile on ``target`` (for bench/precompile.py; the
    naive twin of every candidate, though run times only the best's)."""
    lay = layouts.default_layout(target.arch, 4)
    out = []
    for K, N in shapes:
        for group in groups:
            for nbit in nbits:
                gsize, G = (K, 0) if group is None else (group, K // group)
                cands = (_candidates(1, K, N, nbit, 0, target.num_sms) if (K, N) == tuple(shapes[0])
                         else [kl.default_config(1, K, N, nbit, 32, 0, torch.float16, target.num_sms)])
                for cfg in cands:
                    for unpack in (None, naive_unpack):
                        out += meta_kernels(target, 1, K, N, nbit, G, gsize, cfg, unpack)
                if prepacked and nbit == 4 and group is not None:
                    cfg = kl.prepacked_config(1, K, N, lay, torch.float16, target.num_sms)
                    out += meta_kernels(target, 1, K, N, 4, G, gsize, cfg, None, lay)
    return out


def run(time_us, record, device="cuda", shapes=SHAPES, nbits=NBITS, groups=GROUPS, use_compile=True,
        prepacked=True):
    gen = torch.Generator(device=device).manual_seed(0)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    sms = _sms(device)
    lay = _layout(device)
    first = shapes[0]
    for K, N in shapes:
        if (K, N) != first and common.past_soft_deadline():
            log(f"  gemv: soft deadline passed, shapes from {K}x{N} on skipped")
            break
        for group in groups:
            for nbit in nbits:
                t0 = time.time()
                gsize = K if group is None else group
                shape = f"M=1,K={K},N={N},{_group_tag(group)}"
                x, qw, s, h = _problem(K, N, nbit, group, device, gen)
                nbytes = qw.numel() * 4 + 2 * s.numel() * s.element_size()
                w = ref.linear_weight(qw, s, h, nbit, dtype=torch.float16, group_size=group)
                want = x.double() @ w.double()
                del w
                log(f"  gemv nbit={nbit} {shape}")
                default = kl.default_config(1, K, N, nbit, 32, 0, torch.float16, sms)
                cands = _candidates(1, K, N, nbit, 0, sms) if (K, N) == first else [default]
                ranked = _sweep_case(time_us, 1, K, N, nbit, x, qw, s, h, want, cands, log, gsize)
                best_us, best = ranked[0]
                default_us = next((us for us, c in ranked if c == default), None)

                fns = {
                    "ours": lambda: kl.linear(x, qw, s, h, nbit, gsize, 0, False, config=best),
                    "naive-triton": lambda: kl.linear(x, qw, s, h, nbit, gsize, 0, False, config=best,
                                                      unpack=naive_unpack),
                }
                _check("naive-triton", fns["naive-triton"](), want)
                pp_cfg = None
                if prepacked and nbit == 4 and group is not None:
                    data = layouts.prepack(qw, 4, lay)
                    pp_cfg = kl.prepacked_config(1, K, N, lay, torch.float16, sms)
                    fns["ours-prepacked"] = lambda data=data: kl.linear(x, data, s, h, 4, gsize, 0, False,
                                                                        config=pp_cfg, layout=lay)
                    _check("ours-prepacked", fns["ours-prepacked"](), want)
                w16 = torch.randn(K, N, device=device, generator=gen).half()
                fns["cublas-fp16"] = lambda: x @ w16
                _check("cublas-fp16", fns["cublas-fp16"](), x.double() @ w16.double())
                eager_f = _eager_fn(nbit)
                fns["torch-eager"] = lambda: eager_f(x, qw, s, h)
                _check("torch-eager", fns["torch-eager"](), want)
                if use_compile and (K, N) == first:
                    comp_f = _compiled(nbit, (K, N, group))
                    fns["torch-compile"] = lambda: comp_f(x, qw, s, h)
                    _check("torch-compile", fns["torch-compile"](), want)
                src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
                dst = torch.empty_like(src)
                fns["copy"] = lambda: dst.copy_(src)
                configs = "; ".join(f"{us:.1f} {c.short()}" for us, c in ranked)
                for impl, (us, runs) in time_all(time_us, fns, graph=True).items():
                    extra = {}
                    if impl == "ours":
                        extra = dict(note=best.short(), configs=configs, sweep_best_us=best_us,
                                     default_us=default_us, default=default.short())
                    elif impl == "naive-triton":
                        extra = dict(note=best.short())
                    elif impl == "ours-prepacked":
                        extra = dict(note=pp_cfg.short(), layout=lay.name)
                    elif impl == "cublas-fp16":
                        extra = dict(fp16_weight_bytes=K * N * 2)
                    record(bench="gemv", nbit=nbit, shape=shape, impl=impl, us=us, bytes=nbytes, runs=runs,
                           group=gsize, **extra)
                log(f"  ({time.time() - t0:.0f} s)")
                del x, qw, s, h, want, w16, src, dst, fns


# run.py --dry-run (CPU, interpreter): tiny shapes, no torch.compile
DRY_RUN = {"shapes": ((256, 256), (512, 128)), "use_compile": False}
