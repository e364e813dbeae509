"""Weight-only low-bit matmul ``y = x @ W`` (:func:`triton_dequant.ops.linear`).

``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]`` with ``g = k // group_size``;
``q`` packed along K (``packed_dim=0``: ``[K / PER, N]`` containers, the GPTQ-like
layout), along N (``packed_dim=1``: ``[K, N / PER]``), or prepacked in an
:class:`~triton_dequant.layouts.MmaLayout` (``layout=``: int32
``[N_tiles, K_tiles, words]``). ``x``: ``[M, K]`` fp16/bf16; optional ``bias [N]``.

One host entry point (:func:`linear`) flattens ``x``, describes the call
(:class:`LinearCall`), plans it (:func:`plan`: a kernel and a :class:`Config` by shape,
:mod:`._config`: the routing rule; see :mod:`.._plan`), launches once and reshapes. Kernels, one family per file: :mod:`._gemv` (decode, M <= 4),
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
from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch
import triton

from ... import formats, layouts
from .. import _plan
from . import _common
from ._common import SCALE_GROUP, SCALE_GROUP_ROWS, SCALE_POST
from ._config import (DEQUANT_MIN_M, Config, check_config, default_config, gemv_supported, mm_stages,
                      prepacked_config, scale_mode, xshift)
from ._gemv import DOT_F16X2, DOT_F16X2_PORTABLE, DOT_F32, gemv_kernel
from ._mma import mm_kernel
from ._mma_prepacked import mma_prepacked_kernel

__all__ = ["Config", "LinearCall", "LinearPlan", "default_config", "prepacked_config", "gemv_supported", "linear",
           "plan", "DEQUANT_MIN_M"]

CONTAINER_BITS = formats.CONTAINER_BITS


_BUFFERS: dict = {}


def _zeroed(kind: str, numel: int, dtype, device, where=None) -> torch.Tensor:
    """Persistent zero-filled buffer per (kind, device, stream), grown on demand;
    the kernels leave it zero after every call. ``where``: (device index, stream)
    of a CUDA device (default: its current stream)."""
    key = (kind, *(where or _where(device)))
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.zeros(max(numel, 1024), dtype=dtype, device=device)
        _BUFFERS[key] = buf
    return buf


def _workspace(numel: int, device, where=None) -> torch.Tensor:
    key = ("ws", *(where or _where(device)))
    buf = _BUFFERS.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(max(numel, 1024), dtype=torch.float32, device=device)
        _BUFFERS[key] = buf
    return buf


def _where(device) -> tuple:
    return _plan.device_stream(device) if device.type == "cuda" else (str(device), 0)


class LinearCall(NamedTuple):
    """A call of :func:`linear` (``x`` flattened to ``[M, K]``): ``container`` of the
    codes, ``groups`` scale rows (1 = per channel), ``stride_xm`` the row stride of
    ``x`` (elements), ``aligned`` the 16-byte alignment of x, qweight, scale, shift,
    bias; ``bias_dtype`` None without bias; ``layout`` the
    :class:`~triton_dequant.layouts.MmaLayout` of prepacked weights (None: plain,
    ``packed_dim`` says how). ``config`` overrides the launch table; ``unpack`` is
    the kernels' unpack step (``None``: :func:`._common.unpack`)."""
    M: int
    K: int
    N: int
    nbit: int
    container: torch.dtype
    dtype: torch.dtype
    scale_dtype: torch.dtype
    shift_dtype: torch.dtype
    groups: int
    group_size: int
    signed: bool
    packed_dim: int
    stride_xm: int
    aligned: tuple = (True, True, True, True, True)
    bias_dtype: Optional[torch.dtype] = None
    layout: object = None
    config: Optional[Config] = None
    unpack: object = None


@dataclass(frozen=True, eq=False)
class LinearPlan(_plan.Plan):
    """The launch of a call and the split-K buffers it needs: ``tiles`` counters and
    ``ws_numel`` fp32 workspace elements (both 0 without split-K), ``reduce`` the
    split-K mode. ``route`` "dequant": the weight is dequantized by
    :func:`..dequant.dequantize` (``kernels``: that kernel) and multiplied by
    ``torch.matmul``."""
    tiles: int = 0
    ws_numel: int = 0
    reduce: int = 1
    config: Optional[Config] = None
    route: str = "kernel"


@functools.lru_cache(maxsize=4096)
def plan(call: LinearCall, target: _plan.Target) -> LinearPlan:
    """The launch of a :class:`LinearCall` on ``target``: everything about it that
    depends only on the call (cached: the host path of a decode step is a lookup
    and one launch)."""
    c = call
    if c.M == 0 or c.N == 0 or c.K == 0:
        return LinearPlan(())
    layout = c.layout
    width = 32 if layout is not None else CONTAINER_BITS[c.container]
    per = width // c.nbit
    M, K, N = c.M, c.K, c.N
    interp = target.interpret
    cfg = c.config
    if cfg is None:
        cfg = (_default_prepacked(M, K, N, layout, c.dtype, target.num_sms) if layout is not None
               else _default(M, K, N, c.nbit, width, c.packed_dim, c.dtype, target.num_sms))
    if cfg.kernel == "dequant":
        if layout is not None:
            raise ValueError("config.kernel 'dequant' takes plain weights")
        return LinearPlan(_dequant_route(c, target), config=cfg, route="dequant")
    cfg = check_config(cfg, per, c.packed_dim, c.dtype, c.nbit, c.signed, c.groups, layout)
    group_size = c.group_size
    if cfg.kernel == "gemv":
        rows = K // per if c.packed_dim == 0 else K
        k_span = cfg.bk * per if c.packed_dim == 0 else cfg.bk
    else:
        rows = K
        k_span = cfg.bk
    bm, bn = cfg.bm, cfg.bn
    k_tiles = triton.cdiv(rows, cfg.bk)
    iters = triton.cdiv(k_tiles, min(cfg.split, k_tiles))
    split = triton.cdiv(k_tiles, iters)  # no empty slices
    n_tiles = triton.cdiv(N, bn)
    m_tiles = triton.cdiv(M, bm)
    mode = scale_mode(cfg.post, c.groups, group_size, k_span)
    if c.config is None and cfg.kernel == "mm":
        cfg = replace(cfg, num_stages=mm_stages(cfg, width, per, mode == SCALE_GROUP_ROWS.value))
    has_bias = c.bias_dtype is not None
    kw = dict(NBIT=c.nbit, SIGNED=bool(c.signed), BM=bm, BN=bn, SPLIT=split, SCALE=mode, REDUCE=cfg.reduce,
              EVEN_K=rows % cfg.bk == 0 and split * iters == k_tiles, EVEN_N=N % bn == 0,
              UNPACK=c.unpack or _common.unpack, STAGES=cfg.num_stages, ITERS=iters if interp else 0,
              HAS_BIAS=has_bias)
    if cfg.kernel == "prepacked":
        if mode == SCALE_GROUP_ROWS.value and cfg.bk % group_size:
            raise ValueError(f"`group_size` ({group_size}) must divide the layout's K tile ({cfg.bk}) or be a "
                             f"multiple of it (layout {layout.name})")
        sub = layout.splits(group_size) if mode == SCALE_GROUP_ROWS.value else 1
        kw.update(BK=cfg.bk, LAYOUT=layout.name, SUB=sub, KTOP=layout.span_k // 2, ASM=not interp,
                  GROUP=group_size if mode in (SCALE_GROUP.value, SCALE_GROUP_ROWS.value) else 0,
                  EVEN_M=M % bm == 0, k_tiles=triton.cdiv(K, layout.bk))
        fn = mma_prepacked_kernel
    elif cfg.kernel == "gemv":
        kw.update(PER=per, PACKED=c.packed_dim, BKR=cfg.bk,
                  MODE=((DOT_F16X2_PORTABLE if interp else DOT_F16X2) if cfg.dot16 else DOT_F32).value,
                  XSHIFT=xshift(c.nbit, per, c.signed) if cfg.dot16 and mode == SCALE_POST.value else 0,
                  PREFETCH=bool(cfg.prefetch) and c.packed_dim == 0)
        fn = gemv_kernel
    else:
        kw.update(PER=per, PACKED=c.packed_dim, BK=cfg.bk, ASM=not interp)
        fn = mm_kernel
    tiles = m_tiles * n_tiles if split > 1 else 0
    ws_numel = tiles * bm * bn * (split if cfg.reduce == 1 else 1)
    xa, wa, sa, ha, ba = c.aligned
    ptr = _plan.ptr
    k = _plan.Kernel(fn, (m_tiles * n_tiles * split,), cfg.num_warps, 3,
                     x_ptr=ptr(c.dtype, xa), w_ptr=ptr(c.container, wa), s_ptr=ptr(c.scale_dtype, sa),
                     h_ptr=ptr(c.shift_dtype, ha), b_ptr=ptr(c.bias_dtype, ba) if has_bias else ptr(c.dtype),
                     y_ptr=ptr(c.dtype), ws_ptr=ptr(torch.float32) if tiles else ptr(c.dtype),
                     cnt_ptr=ptr(torch.int32) if tiles else ptr(c.dtype),
                     M=M, N=N, K=K, stride_xm=c.stride_xm, stride_ym=N, group_size=group_size, iters=iters,
                     n_tiles=n_tiles, **kw)
    return LinearPlan((k,), tiles, ws_numel, cfg.reduce, cfg)


@functools.lru_cache(maxsize=4096)
def _default(M, K, N, nbit, width, packed_dim, dtype, sms):
    return default_config(M, K, N, nbit, width, packed_dim, dtype, sms)


@functools.lru_cache(maxsize=4096)
def _default_prepacked(M, K, N, layout, dtype, sms):
    return prepacked_config(M, K, N, layout, dtype, sms)


def _dequant_operands(qweight, scale, shift, nbit, group_size, packed_dim, K, N):
    """The weight, scale and shift as the "dequant" route hands them to
    :func:`..dequant.dequantize` (groups of K rows along dim ``1 + packed_dim``)."""
    groups = scale.shape[0] if scale.dim() == 2 else 1
    per = CONTAINER_BITS[qweight.dtype] // nbit
    if packed_dim == 0:
        qg = qweight.reshape(groups, group_size // per if groups > 1 else K // per, N)
    else:
        qg = qweight.reshape(groups, K // groups, N // per)
    return qg, scale.reshape(groups, 1, N), shift.reshape(groups, 1, N), 1 + packed_dim


def _dequant_route(c: LinearCall, target) -> tuple:
    """The kernels of the "dequant" route: the dequantize call on tensors of the
    call's shapes (meta tensors: shapes and strides only; the alignments are the call's)."""
    from .. import dequant
    per = CONTAINER_BITS[c.container] // c.nbit
    qshape = (c.K // per, c.N) if c.packed_dim == 0 else (c.K, c.N // per)
    sshape = (c.N,) if c.groups == 1 else (c.groups, c.N)
    meta = lambda shape, dt: torch.empty(shape, dtype=dt, device="meta")  # noqa: E731
    qg, s3, h3, dim = _dequant_operands(meta(qshape, c.container), meta(sshape, c.scale_dtype),
                                        meta(sshape, c.shift_dtype), c.nbit, c.group_size, c.packed_dim, c.K, c.N)
    dc, *_ = dequant._prepare_dequantize(qg, s3, h3, c.nbit, c.dtype, dim, bool(c.signed), None, 8)
    dc = dc._replace(aligned=(c.aligned[1], c.aligned[2], c.aligned[3]))
    return dequant.plan_dequantize(dc, target).kernels


def _dequant_matmul(x2, qweight, scale, shift, nbit, group_size, packed_dim, signed, K, N, bias):
    """The "dequant" route: ``W`` dequantized once into x.dtype (the package's
    dequant kernel, exact), then ``torch.matmul`` (cuBLAS on CUDA)."""
    from .. import dequant
    qg, s3, h3, dim = _dequant_operands(qweight, scale, shift, nbit, group_size, packed_dim, K, N)
    w = dequant.dequantize(qg, s3, h3, nbit, x2.dtype, dim, bool(signed)).reshape(K, N)
    y = x2 @ w
    return y if bias is None else y + bias.to(y.dtype)


def _prepare(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, config=None, unpack=None, layout=None,
             bias=None):
    """(call, x2, qweight, scale, shift, bias, leading dims): the tensors as the kernels read them."""
    if layout is not None:
        layout = layouts.as_layout(layout)
        K, N = x.shape[-1], scale.shape[-1]
    else:
        per = CONTAINER_BITS[qweight.dtype] // nbit
        K = qweight.shape[0] * (per if packed_dim == 0 else 1)
        N = qweight.shape[1] * (per if packed_dim == 1 else 1)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1 or x2.stride(0) % 2 or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    if not qweight.is_contiguous():
        qweight = qweight.contiguous()
    scale = scale.contiguous()
    shift = shift.contiguous()
    if bias is not None:
        bias = bias.contiguous()
    groups = scale.shape[0] if scale.dim() == 2 else 1
    M = x2.shape[0]
    call = LinearCall(M, K, N, nbit, qweight.dtype, x.dtype, scale.dtype, shift.dtype, groups, group_size,
                      bool(signed), packed_dim, x2.stride(0) if M > 1 else K,
                      (x2.data_ptr() % 16 == 0, qweight.data_ptr() % 16 == 0, scale.data_ptr() % 16 == 0,
                       shift.data_ptr() % 16 == 0, bias is None or bias.data_ptr() % 16 == 0),
                      None if bias is None else bias.dtype, layout, config, unpack)
    return call, x2, qweight, scale, shift, bias, lead


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
    call, x2, qweight, scale, shift, bias, lead = _prepare(x, qweight, scale, shift, nbit, group_size, packed_dim,
                                                           signed, config, unpack, layout, bias)
    M, K, N = call.M, call.K, call.N
    if M == 0 or N == 0:
        return torch.empty((M, N), dtype=x.dtype, device=x.device).reshape(*lead, N)
    if K == 0:
        y = torch.zeros((M, N), dtype=x.dtype, device=x.device)
        return (y if bias is None else y + bias.to(y.dtype)).reshape(*lead, N)
    dev = x.device
    target = _plan.target_of(dev)
    p = plan(call, target)
    if p.route == "dequant":
        return _dequant_matmul(x2, qweight, scale, shift, nbit, group_size, packed_dim, signed, K, N,
                               bias).reshape(*lead, N)
    y = torch.empty((M, N), dtype=x.dtype, device=dev)
    where = stream = None
    if not target.interpret:
        where = _plan.device_stream(dev)
        stream = where[1]
    if p.tiles:
        cnt = _zeroed("cnt", p.tiles, torch.int32, dev, where)
        ws = (_zeroed("acc", p.ws_numel, torch.float32, dev, where) if p.reduce == 2
              else _workspace(p.ws_numel, dev, where))
    else:
        cnt = ws = y  # unused
    _plan.launch(p.kernels[0], (x2, qweight, scale, shift, y if bias is None else bias, y, ws, cnt), dev, target,
                 stream)
    return y.reshape(*lead, N)
