"""Weight-only low-bit matmul ``y = x @ W`` (:func:`triton_dequant.ops.linear`).

``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]`` with ``g = k // group_size``;
``q`` packed along K (``packed_dim=0``: ``[K / PER, N]`` containers, the GPTQ-like
layout), along N (``packed_dim=1``: ``[K, N / PER]``), or prepacked in an
:class:`~triton_dequant.layouts.MmaLayout` (``layout=``: int32
``[N_tiles, K_tiles, words]``). ``x``: ``[M, K]`` fp16/bf16; optional ``bias [N]``.

One host entry point (:func:`linear`) flattens ``x``, picks a kernel and a
:class:`Config` by shape (:mod:`._config`: the routing rule), launches once and
reshapes. Kernels, one family per file: :mod:`._gemv` (decode, M <= 4),
:mod:`._mma` (tensor cores, plain layouts), :mod:`._mma_prepacked` (tensor cores,
prepacked weights, every M); shared pieces (named modes, unpack, scale loader,
epilogue) in :mod:`._common`.

Split-K (``SPLIT > 1``) in ONE launch, no memset: every CTA writes its fp32
partial to a workspace and bumps a per-tile counter (``atom.acq_rel.gpu``); the
CTA that arrives last sums the ``SPLIT`` partials (``REDUCE_PARTIALS``:
deterministic, fixed order) or reads the fp32 sum accumulated with ``red.add``
(``REDUCE_ATOMIC``), casts, stores ``y`` and puts the counter (and the
accumulator) back to zero for the next call. Counters and accumulators are
allocated zeroed once per (device, stream) and cached, so concurrent calls on one
stream are ordered; calls on different streams get different buffers.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton

from ... import layouts
from .. import _launch
from . import _common
from ._common import SCALE_GROUP, SCALE_GROUP_ROWS, SCALE_POST
from ._config import (DEQUANT_MIN_M, Config, check_config, default_config, gemv_supported, prepacked_config,
                      scale_mode, xshift)
from ._gemv import DOT_F16X2, DOT_F16X2_PORTABLE, DOT_F32, gemv_kernel
from ._mma import mm_kernel
from ._mma_prepacked import mma_prepacked_kernel

__all__ = ["Config", "default_config", "prepacked_config", "gemv_supported", "linear", "DEQUANT_MIN_M"]

CONTAINER_BITS = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.uint16: 16, torch.int32: 32, torch.uint32: 32}


_SM_COUNT: dict = {}


def _sm_count(device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


_BUFFERS: dict = {}


def _zeroed(kind: str, numel: int, dtype, device) -> torch.Tensor:
    """Persistent zero-filled buffer per (kind, device, stream), grown on demand;
    the kernels leave it zero after every call."""
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (kind, str(device), stream)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.zeros(max(numel, 1024), dtype=dtype, device=device)
        _BUFFERS[key] = buf
    return buf


def _workspace(numel: int, device) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = ("ws", str(device), stream)
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(max(numel, 1024), dtype=torch.float32, device=device)
        _BUFFERS[key] = buf
    return buf


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class _Plan:
    kernel: object
    grid: tuple
    iters: int
    n_tiles: int
    tiles: int       # output tiles (counters) when split > 1, else 0
    ws_numel: int    # fp32 workspace elements when split > 1
    reduce: int
    kwargs: tuple    # constexprs and launch options, as items


@functools.lru_cache(maxsize=4096)
def _plan(cfg: Config, M: int, K: int, N: int, nbit: int, width: int, packed_dim: int, dtype, groups: int,
          group_size: int, signed: bool, unpack, interp: bool, layout=None, has_bias: bool = False) -> _Plan:
    """Everything about a launch that depends only on shapes and the config
    (cached: the host path of a decode step is a dict lookup and one launch)."""
    per = width // nbit
    cfg = check_config(cfg, per, packed_dim, dtype, nbit, signed, groups, layout)
    if cfg.kernel == "gemv":
        rows = K // per if packed_dim == 0 else K
        k_span = cfg.bk * per if packed_dim == 0 else cfg.bk
    else:
        rows = K
        k_span = cfg.bk
    bm, bn = cfg.bm, cfg.bn
    k_tiles = triton.cdiv(rows, cfg.bk)
    iters = triton.cdiv(k_tiles, min(cfg.split, k_tiles))
    split = triton.cdiv(k_tiles, iters)  # no empty slices
    n_tiles = triton.cdiv(N, bn)
    m_tiles = triton.cdiv(M, bm)
    mode = scale_mode(cfg.post, groups, group_size, k_span)
    kw = dict(NBIT=nbit, SIGNED=bool(signed), BM=bm, BN=bn, SPLIT=split, SCALE=mode, REDUCE=cfg.reduce,
              EVEN_K=rows % cfg.bk == 0 and split * iters == k_tiles, EVEN_N=N % bn == 0, UNPACK=unpack,
              STAGES=cfg.num_stages, ITERS=iters if interp else 0, HAS_BIAS=bool(has_bias), num_warps=cfg.num_warps)
    if cfg.kernel == "prepacked":
        if mode == SCALE_GROUP_ROWS.value and cfg.bk % group_size:
            raise ValueError(f"`group_size` ({group_size}) must divide the layout's K tile ({cfg.bk}) or be a "
                             f"multiple of it (layout {layout.name})")
        sub = layout.splits(group_size) if mode == SCALE_GROUP_ROWS.value else 1
        kw.update(BK=cfg.bk, LAYOUT=layout.name, SUB=sub, KTOP=layout.span_k // 2, ASM=not interp,
                  GROUP=group_size if mode in (SCALE_GROUP.value, SCALE_GROUP_ROWS.value) else 0,
                  EVEN_M=M % bm == 0)
        kernel = mma_prepacked_kernel
    elif cfg.kernel == "gemv":
        kw.update(PER=per, PACKED=packed_dim, BKR=cfg.bk,
                  MODE=((DOT_F16X2_PORTABLE if interp else DOT_F16X2) if cfg.dot16 else DOT_F32).value,
                  XSHIFT=xshift(nbit, per, signed) if cfg.dot16 and mode == SCALE_POST.value else 0,
                  PREFETCH=bool(cfg.prefetch) and packed_dim == 0)
        kernel = gemv_kernel
    else:
        kw.update(PER=per, PACKED=packed_dim, BK=cfg.bk, ASM=not interp)
        kernel = mm_kernel
    tiles = m_tiles * n_tiles if split > 1 else 0
    ws_numel = tiles * bm * bn * (split if cfg.reduce == 1 else 1)
    return _Plan(kernel, (m_tiles * n_tiles * split,), iters, n_tiles, tiles, ws_numel, cfg.reduce,
                 tuple(kw.items()))


@functools.lru_cache(maxsize=4096)
def _default(M, K, N, nbit, width, packed_dim, dtype, sms):
    return default_config(M, K, N, nbit, width, packed_dim, dtype, sms)


@functools.lru_cache(maxsize=4096)
def _default_prepacked(M, K, N, layout, dtype, sms):
    return prepacked_config(M, K, N, layout, dtype, sms)


def _dequant_matmul(x2, qweight, scale, shift, nbit, group_size, packed_dim, signed, K, N, bias):
    """The "dequant" route: ``W`` dequantized once into x.dtype (the package's
    dequant kernel, exact), then ``torch.matmul`` (cuBLAS on CUDA)."""
    from .. import dequant
    groups = scale.shape[0] if scale.dim() == 2 else 1
    per = CONTAINER_BITS[qweight.dtype] // nbit
    if packed_dim == 0:
        qg = qweight.reshape(groups, group_size // per if groups > 1 else K // per, N)
    else:
        qg = qweight.reshape(groups, K // groups, N // per)
    s3 = scale.reshape(groups, 1, N)
    h3 = shift.reshape(groups, 1, N)
    w = dequant.dequantize(qg, s3, h3, nbit, x2.dtype, 1 + packed_dim, bool(signed)).reshape(K, N)
    y = x2 @ w
    return y if bias is None else y + bias.to(y.dtype)


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
           group_size: int, packed_dim: int, signed: bool, config: Optional[Config] = None,
           unpack=None, layout=None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ W (+ bias)`` (arguments already checked by :func:`triton_dequant.ops.linear`).

    ``layout``: None (``qweight`` plain, ``packed_dim`` says how) or the
    :class:`~triton_dequant.layouts.MmaLayout` (or its name) ``qweight`` is
    prepacked in; then K comes from ``x`` and N from ``scale``. ``config``
    overrides the launch table (:func:`default_config` / :func:`prepacked_config`);
    ``unpack`` replaces the kernels' unpack step (a ``@triton.jit`` function with
    the signature of :func:`._common.unpack`; the bench's shift/mask twin). One
    kernel launch, no memset (the "dequant" route: two kernels)."""
    if layout is not None:
        layout = layouts.as_layout(layout)
        width = 32
        K, N = x.shape[-1], scale.shape[-1]
    else:
        width = CONTAINER_BITS[qweight.dtype]
        per = width // nbit
        K = qweight.shape[0] * (per if packed_dim == 0 else 1)
        N = qweight.shape[1] * (per if packed_dim == 1 else 1)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1 or x2.stride(0) % 2 or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y.reshape(*lead, N)
    if K == 0:
        y.zero_()
        return (y if bias is None else y + bias.to(y.dtype)).reshape(*lead, N)
    if not qweight.is_contiguous():
        qweight = qweight.contiguous()
    scale = scale.contiguous()
    shift = shift.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    groups = scale.shape[0] if scale.dim() == 2 else 1
    dev = x.device
    sms = _sm_count(dev) if x.is_cuda else 132
    if config is None:
        if layout is not None:
            config = _default_prepacked(M, K, N, layout, x.dtype, sms)
        else:
            config = _default(M, K, N, nbit, width, packed_dim, x.dtype, sms)
    if config.kernel == "dequant":
        if layout is not None:
            raise ValueError("config.kernel 'dequant' takes plain weights")
        return _dequant_matmul(x2, qweight, scale, shift, nbit, group_size, packed_dim, signed, K, N,
                               bias).reshape(*lead, N)
    plan = _plan(config, M, K, N, nbit, width, packed_dim, x.dtype, groups, group_size, bool(signed),
                 unpack or _common.unpack, _interpret(), layout, bias is not None)
    if plan.tiles:
        cnt = _zeroed("cnt", plan.tiles, torch.int32, dev)
        ws = _zeroed("acc", plan.ws_numel, torch.float32, dev) if plan.reduce == 2 else _workspace(plan.ws_numel, dev)
    else:
        cnt = ws = y  # unused
    b = y if bias is None else bias  # unused without bias
    args = (x2, qweight, scale, shift, b, y, ws, cnt, M, N, K, x2.stride(0), y.stride(0), group_size, plan.iters,
            plan.n_tiles)
    if layout is not None:
        args += (triton.cdiv(K, layout.bk),)
    if x.is_cuda:
        _launch.launch(plan.kernel, plan.grid, args, dict(plan.kwargs), plan)
    else:  # the interpreter
        plan.kernel[plan.grid](*args, **dict(plan.kwargs))
    return y.reshape(*lead, N)
