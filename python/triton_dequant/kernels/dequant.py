"""Standalone dequantization kernels: whole tensors and the row-fused format.

Host functions take torch tensors already checked by :mod:`triton_dequant.ops`.

Sizes: offsets are int32 while every element offset a program computes stays below
2**31, and int64 (``IDX64``, chosen per launch by :func:`needs_int64`) otherwise, so
tensors and rows of any length work; the one limit is the grid, at most 2**31 - 1
programs (a few times 2**41 outputs at the default tiles).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import formats

from ._rows import HEADER_BITS, row_header

_TL = formats.TL_OUT
_BITS = formats.CONTAINER_BITS
_I32_MAX = 2 ** 31 - 1


def needs_int64(*extents: int) -> bool:
    """Whether an offset up to any of ``extents`` (element counts, strides x extents)
    can leave int32: the switch to 64-bit index arithmetic, taken at launch."""
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


def dequantize(packed, scale, shift, nbit, dtype, dim, signed, block: int | None = None, num_warps: int = 8):
    width = _BITS[packed.dtype]
    per = width // nbit
    packed = packed.contiguous()
    shape = list(packed.shape)
    outer = math.prod(shape[:dim])
    n = shape[dim]
    inner = math.prod(shape[dim + 1:])
    out_shape = list(shape)
    out_shape[dim] *= per
    y = torch.empty(out_shape, dtype=dtype, device=packed.device)
    if y.numel() == 0:
        return y
    # scale/shift broadcast to the output, seen as [outer, n*PER, inner]
    o3 = (outer, n * per, inner)
    s3, h3 = _as3(scale, out_shape, o3), _as3(shift, out_shape, o3)
    per_output = s3.stride(1) != 0 or h3.stride(1) != 0
    block = block or _default_tile(per, dtype, num_warps)
    common = dict(PER=per, NBIT=nbit, DST=_TL[dtype], SIGNED=signed, PER_OUTPUT=per_output)
    if inner == 1:
        b = min(block, triton.next_power_of_2(n))
        tiles = triton.cdiv(n, b)
        col = max(s3.stride(1), h3.stride(1), 1)
        idx64 = needs_int64((tiles * b + 1) * per * col)
        _dequant_last[(outer * tiles,)](packed, s3, h3, y, n, tiles, s3.stride(0), h3.stride(0),
                                        s3.stride(1), h3.stride(1), BLOCK=b, IDX64=idx64, num_warps=num_warps,
                                        **common)
    else:
        bb = min(64, triton.next_power_of_2(inner))
        bn = max(1, min(triton.next_power_of_2(n), 4096 // (bb * per)))
        tn, tb = triton.cdiv(n, bn), triton.cdiv(inner, bb)
        n_pad, inner_pad = tn * bn * per, tb * bb
        idx64 = needs_int64(n_pad * inner_pad, n_pad * max(s3.stride(1), h3.stride(1)) +
                            inner_pad * max(s3.stride(2), h3.stride(2)))
        _dequant_mid[(outer * tn * tb,)](packed, s3, h3, y, n, inner, tn, tb, *s3.stride(), *h3.stride(),
                                         BN=bn, BB=bb, IDX64=idx64, num_warps=num_warps, **common)
    return y


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


def dequantize_rows(rows, nbit, dtype, dim, signed, block: int | None = None, num_warps: int = 8):
    """``[R, dim]`` of ``dtype`` (``dim``: codes per row, ``n_codes`` of the op)."""
    width = _BITS[rows.dtype]
    per = width // nbit
    block = block or _default_tile(per, dtype, num_warps)
    rows = rows.contiguous()
    R, E = rows.shape
    y = torch.empty((R, dim), dtype=dtype, device=rows.device)
    if y.numel() == 0:
        return y
    used = triton.cdiv(dim, per)  # data elements actually needed
    b = min(block, triton.next_power_of_2(used))
    tiles = triton.cdiv(used, b)
    idx64 = needs_int64(tiles * b * per + E)
    _dequant_rows[(R, tiles)](rows, y, E, dim, BLOCK=b, PER=per, NBIT=nbit, WIDTH=width,
                              DST=_TL[dtype], SIGNED=signed, IDX64=idx64, num_warps=num_warps)
    return y
