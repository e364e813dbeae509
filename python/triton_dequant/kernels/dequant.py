"""Standalone dequantization kernels: whole tensors and the row-fused format.

Host functions take torch tensors already checked by :mod:`triton_dequant.ops`.

Sizes: offsets are int32 while every element offset a program computes stays below
2**31, and int64 (``IDX64``, chosen per launch by :func:`needs_int64`) otherwise, so
tensors and rows of any length work; the one limit is the grid, at most 2**31 - 1
programs (a few times 2**41 outputs at the default tiles).
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import formats

from . import _plan
from ._plan import Kernel, Plan, Target, ptr
from ._rows import HEADER_BITS, row_header

_TL = formats.TL_OUT
_BITS = formats.CONTAINER_BITS
_I32_MAX = 2 ** 31 - 1


def needs_int64(*extents: int) -> bool:
    """Whether an offset up to any of ``extents`` (element counts, strides x extents)
    can leave int32: the switch to 64-bit index arithmetic, taken at plan time."""
    return max(extents, default=0) > _I32_MAX


@triton.jit
def _dequant_last(x_ptr, s_ptr, h_ptr, y_ptr, n, tiles, s_row, h_row, s_col, h_col,
                  BLOCK: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr, DST: tl.constexpr,
                  SIGNED: tl.constexpr, PER_OUTPUT: tl.constexpr, IDX64: tl.constexpr = False):
    """One [BLOCK]-word segment of a [rows, n] packed tensor (``tiles`` per row;
    a 1-D grid: CUDA caps grid dims 1 and 2 at 65535).

    Scale/shift: element ``(row, c)`` of the output at ``row*s_row + c*s_col``;
    with ``PER_OUTPUT`` false they are constant along the row (s_col == 0).
    ``IDX64``: offsets within a row in int64 (``n * PER`` or ``n * PER * s_col`` past 2**31)."""
    pid = tl.program_id(0)
    row = (pid // tiles).to(tl.int64)
    t = pid % tiles
    if IDX64:
        t = t.to(tl.int64)
        n = n.to(tl.int64)
    cols = t * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * n + cols, mask=cols < n)
    out = t * BLOCK * PER + tl.arange(0, BLOCK * PER)
    if PER_OUTPUT:
        s = tl.load(s_ptr + row * s_row + out * s_col, mask=out < n * PER)
        h = tl.load(h_ptr + row * h_row + out * h_col, mask=out < n * PER)
    else:
        s = tl.load(s_ptr + row * s_row)
        h = tl.load(h_ptr + row * h_row)
    y = tl.dequantize(x, s, h, NBIT, DST, signed=SIGNED)
    tl.store(y_ptr + row * n * PER + out, y, mask=out < n * PER)


@triton.jit
def _dequant_mid(x_ptr, s_ptr, h_ptr, y_ptr, n, inner, tiles_n, tiles_b, s_outer, s_mid, s_inner,
                 h_outer, h_mid, h_inner, BN: tl.constexpr, BB: tl.constexpr, PER: tl.constexpr,
                 NBIT: tl.constexpr, DST: tl.constexpr, SIGNED: tl.constexpr, PER_OUTPUT: tl.constexpr,
                 IDX64: tl.constexpr = False):
    """A [BN, BB] tile of a packed [outer, n, inner] tensor, unpacked along the middle dim.
    ``IDX64``: offsets within an outer slice in int64 (``n * PER * inner`` or a scale
    offset past 2**31)."""
    pid = tl.program_id(0)
    a = (pid // (tiles_n * tiles_b)).to(tl.int64)
    tn = (pid // tiles_b) % tiles_n
    tb = pid % tiles_b
    if IDX64:
        tn = tn.to(tl.int64)
        tb = tb.to(tl.int64)
        n = n.to(tl.int64)
        inner = inner.to(tl.int64)
    rn = tn * BN + tl.arange(0, BN)[:, None]
    rb = tb * BB + tl.arange(0, BB)[None, :]
    x = tl.load(x_ptr + a * n * inner + rn * inner + rb, mask=(rn < n) & (rb < inner))
    ro = tn * BN * PER + tl.arange(0, BN * PER)[:, None]
    omask = (ro < n * PER) & (rb < inner)
    if PER_OUTPUT:
        s = tl.load(s_ptr + a * s_outer + ro * s_mid + rb * s_inner, mask=omask)
        h = tl.load(h_ptr + a * h_outer + ro * h_mid + rb * h_inner, mask=omask)
    else:
        s = tl.load(s_ptr + a * s_outer + rb * s_inner, mask=rb < inner)
        h = tl.load(h_ptr + a * h_outer + rb * h_inner, mask=rb < inner)
    y = tl.dequantize(x, s, h, NBIT, DST, axis=0, signed=SIGNED)
    tl.store(y_ptr + a * n * PER * inner + ro * inner + rb, y, mask=omask)


@triton.jit
def _dequant_rows(rows_ptr, y_ptr, n_elems, dim, BLOCK: tl.constexpr, PER: tl.constexpr,
                  NBIT: tl.constexpr, WIDTH: tl.constexpr, DST: tl.constexpr, SIGNED: tl.constexpr,
                  IDX64: tl.constexpr = False):
    """Row ``pid(0)`` of a row-fused table, data elements ``[pid(1)*BLOCK, +BLOCK)``.

    Tiles cover the data, not the header: outputs stay 16-byte aligned and a row
    of ``dim`` codes takes exactly ``ceil(dim / (BLOCK*PER))`` programs (counting
    the header into the first tile would add a nearly empty program per row:
    a quarter slower on the H100). The data start 4 bytes into the row, which
    costs nothing at the default tile (one 4-byte container per thread).
    ``IDX64``: offsets within a row in int64 (rows of 2**31 codes or more)."""
    HEADER: tl.constexpr = HEADER_BITS // WIDTH  # container elements of the header
    row = tl.program_id(0).to(tl.int64)
    base = rows_ptr + row * n_elems
    s, h = row_header(base, row >= 0, WIDTH)
    t = tl.program_id(1)
    if IDX64:
        t = t.to(tl.int64)
    cols = t * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(base + HEADER + cols, mask=cols * PER < dim)
    y = tl.dequantize(x, s, h, NBIT, DST, signed=SIGNED)
    out = t * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + row * dim + out, y, mask=out < dim)


def _as3(t: torch.Tensor, out_shape: list, o3: tuple) -> torch.Tensor:
    """``t`` broadcast to the output and seen as (outer, n*PER, inner); a view
    (stride 0 where broadcast) whenever the merged dims allow it."""
    t = t.reshape([1] * (len(out_shape) - t.dim()) + list(t.shape))
    return t.expand(out_shape).reshape(o3)


def _default_tile(per: int, dtype: torch.dtype, num_warps: int) -> int:
    """Words per program so that each thread owns one 16-byte vector of outputs:
    on the H100 that is where the standalone kernel runs at the copy limit
    (bench/results/h100_sweep_dequant.log), and no layout conversion is needed."""
    out_per_thread = 16 // torch.empty((), dtype=dtype).element_size()
    return num_warps * 32 * max(1, out_per_thread // per)


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


# --- dequantize ------------------------------------------------------------------------------

class DequantCall(NamedTuple):
    """A call of :func:`dequantize`: ``packed`` seen as ``[outer, n, inner]``
    containers unpacked along the middle; ``scale``/``shift`` broadcast to the output
    and seen as ``[outer, n * PER, inner]`` with element strides ``s_strides`` /
    ``h_strides`` (0 where broadcast); ``aligned``: 16-byte alignment of the packed,
    scale and shift tensors."""
    container: torch.dtype
    nbit: int
    signed: bool
    dtype: torch.dtype
    scale_dtype: torch.dtype
    shift_dtype: torch.dtype
    outer: int
    n: int
    inner: int
    s_strides: tuple
    h_strides: tuple
    aligned: tuple = (True, True, True)
    block: Optional[int] = None
    num_warps: int = 8

    @property
    def per(self) -> int:
        return _BITS[self.container] // self.nbit


@functools.lru_cache(maxsize=4096)
def plan_dequantize(call: DequantCall, target: Target) -> Plan:
    """The launches of a :class:`DequantCall`: one ``_dequant_last`` (``inner == 1``)
    or ``_dequant_mid`` kernel, none for an empty output."""
    c = call
    per = c.per
    if c.outer * c.n * c.inner == 0:
        return Plan(())
    per_output = c.s_strides[1] != 0 or c.h_strides[1] != 0
    block = c.block or _default_tile(per, c.dtype, c.num_warps)
    pa, sa, ha = c.aligned
    common = dict(x_ptr=ptr(c.container, pa), s_ptr=ptr(c.scale_dtype, sa), h_ptr=ptr(c.shift_dtype, ha),
                  y_ptr=ptr(c.dtype), PER=per, NBIT=c.nbit, DST=_TL[c.dtype], SIGNED=bool(c.signed),
                  PER_OUTPUT=per_output)
    if c.inner == 1:
        b = min(block, triton.next_power_of_2(c.n))
        tiles = triton.cdiv(c.n, b)
        col = max(c.s_strides[1], c.h_strides[1], 1)
        k = Kernel(_dequant_last, (c.outer * tiles,), c.num_warps, 3, n=c.n, tiles=tiles,
                   s_row=c.s_strides[0], h_row=c.h_strides[0], s_col=c.s_strides[1], h_col=c.h_strides[1],
                   BLOCK=b, IDX64=needs_int64((tiles * b + 1) * per * col), **common)
    else:
        bb = min(64, triton.next_power_of_2(c.inner))
        bn = max(1, min(triton.next_power_of_2(c.n), 4096 // (bb * per)))
        tn, tb = triton.cdiv(c.n, bn), triton.cdiv(c.inner, bb)
        s, h = c.s_strides, c.h_strides
        n_pad, inner_pad = tn * bn * per, tb * bb
        k = Kernel(_dequant_mid, (c.outer * tn * tb,), c.num_warps, 3, n=c.n, inner=c.inner, tiles_n=tn,
                   tiles_b=tb, s_outer=s[0], s_mid=s[1], s_inner=s[2], h_outer=h[0], h_mid=h[1], h_inner=h[2],
                   BN=bn, BB=bb, IDX64=needs_int64(n_pad * inner_pad, n_pad * max(s[1], h[1]) +
                                                    inner_pad * max(s[2], h[2])), **common)
    return Plan((k,))


def _prepare_dequantize(packed, scale, shift, nbit, dtype, dim, signed, block, num_warps):
    """(call, packed, scale, shift, output shape): the tensors as the kernels read them."""
    width = _BITS[packed.dtype]
    per = width // nbit
    packed = packed.contiguous()
    shape = list(packed.shape)
    outer = 1
    for v in shape[:dim]:
        outer *= v
    n = shape[dim]
    inner = 1
    for v in shape[dim + 1:]:
        inner *= v
    out_shape = list(shape)
    out_shape[dim] *= per
    o3 = (outer, n * per, inner)
    s3, h3 = _as3(scale, out_shape, o3), _as3(shift, out_shape, o3)
    call = DequantCall(packed.dtype, nbit, bool(signed), dtype, s3.dtype, h3.dtype, outer, n, inner,
                       s3.stride(), h3.stride(), (_aligned(packed), _aligned(s3), _aligned(h3)), block, num_warps)
    return call, packed, s3, h3, out_shape


def dequantize(packed, scale, shift, nbit, dtype, dim, signed, block: int | None = None, num_warps: int = 8):
    call, packed, s3, h3, out_shape = _prepare_dequantize(packed, scale, shift, nbit, dtype, dim, signed, block,
                                                          num_warps)
    y = torch.empty(out_shape, dtype=dtype, device=packed.device)
    target = _plan.target_of(packed.device)
    plan = plan_dequantize(call, target)
    if plan.kernels:
        _plan.launch(plan.kernels[0], (packed, s3, h3, y), packed.device, target)
    return y


# --- dequantize_rows ---------------------------------------------------------------------------

class RowsCall(NamedTuple):
    """A call of :func:`dequantize_rows`: ``R`` rows of ``E`` container elements
    (contiguous), ``dim`` outputs per row; ``aligned``: 16-byte alignment of the rows."""
    container: torch.dtype
    nbit: int
    signed: bool
    dtype: torch.dtype
    R: int
    E: int
    dim: int
    aligned: bool = True
    block: Optional[int] = None
    num_warps: int = 8


@functools.lru_cache(maxsize=4096)
def plan_dequantize_rows(call: RowsCall, target: Target) -> Plan:
    """One ``_dequant_rows`` kernel (none for an empty output)."""
    c = call
    width = _BITS[c.container]
    per = width // c.nbit
    if c.R * c.dim == 0:
        return Plan(())
    block = c.block or _default_tile(per, c.dtype, c.num_warps)
    used = triton.cdiv(c.dim, per)  # data elements actually needed
    b = min(block, triton.next_power_of_2(used))
    tiles = triton.cdiv(used, b)
    k = Kernel(_dequant_rows, (c.R, tiles), c.num_warps, 3, rows_ptr=ptr(c.container, c.aligned),
               y_ptr=ptr(c.dtype), n_elems=c.E, dim=c.dim, BLOCK=b, PER=per, NBIT=c.nbit, WIDTH=width,
               DST=_TL[c.dtype], SIGNED=bool(c.signed), IDX64=needs_int64(tiles * b * per + c.E))
    return Plan((k,))


def _prepare_rows(rows, nbit, dtype, dim, signed, block, num_warps):
    rows = rows.contiguous()
    R, E = rows.shape
    return RowsCall(rows.dtype, nbit, bool(signed), dtype, R, E, dim, _aligned(rows), block, num_warps), rows


def dequantize_rows(rows, nbit, dtype, dim, signed, block: int | None = None, num_warps: int = 8):
    call, rows = _prepare_rows(rows, nbit, dtype, dim, signed, block, num_warps)
    y = torch.empty((call.R, dim), dtype=dtype, device=rows.device)
    target = _plan.target_of(rows.device)
    plan = plan_dequantize_rows(call, target)
    if plan.kernels:
        _plan.launch(plan.kernels[0], (rows, y), rows.device, target)
    return y
