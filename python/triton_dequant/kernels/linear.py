"""Weight-only low-bit matmul ``y = x @ W`` (:func:`triton_dequant.ops.linear`).

``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]`` with ``g = k // group_size``;
``q`` packed along K (``packed_dim=0``: ``[K / PER, N]`` containers, the GPTQ-like
layout) or along N (``packed_dim=1``: ``[K, N / PER]``). ``x``: ``[M, K]`` fp16/bf16.

Two kernels, one host entry point (:func:`linear`) that flattens ``x``, picks a
kernel and a :class:`Config` by shape (:func:`default_config`, a small table the
H100 sweep in ``bench/linear.py`` feeds), launches once and reshapes:

``_gemv_kernel`` (decode, M <= 4; packed along K: 2, 4, 8 or 16 codes per container)
    A CTA owns ``BN`` output columns, ``BM`` (1, 2, 4) rows of ``x`` and one of
    ``SPLIT`` slices of K. Per step it loads a ``[BKR, 1, BN]`` tile of
    containers (four int32 per lane along N: 16-byte loads, ``evict_first``),
    ``tl.dequantize`` unpacks it along axis 1 to ``[BKR, PER, BN]``, splits the PER
    codes back out (the split tree undoes the dequant's join tree: no data
    movement) and forms ``sum_j q_j * x_j`` per container (``MODE``):
    F16X2 (fp16): one asm per container, ``fma.rn.f16x2`` on the register pairs
    (code ``j``, ``j+1``) the dequant asm produced, the two fp16 lanes added in
    fp32: fp16 partials span at most PER/2 products, everything across
    containers is fp32. With raw codes (SCALE 0) ``x`` is first multiplied by
    ``2**-XSHIFT`` (``2**XSHIFT >= PER/2 * max|code|``) so no fp16 lane can
    overflow for any fp16 ``x``; the sum is multiplied back in fp32.
    F32 (bf16, or by config): fp32 products and sums.
    Each row of ``x`` has its own ``[BKR, BN]`` fp32 accumulator; the reduction
    over K across threads happens once, after the loop. On sm_90 (int4, fp16,
    BKR=16): 3.3 SASS instructions per weight in the loop, no layout conversion,
    no shared memory, 71 registers (test/lit/linear.py).
    Packed along N: ``[BKR, BN / PER]`` container tiles, fp32 products.
``_mm_kernel`` (M > 4, and layouts the GEMV does not take)
    ``[BM, BK] x [BK, BN]`` tiles: the weight tile is dequantized in registers
    and fed to ``tl.dot`` (fp16/bf16 operands, fp32 accumulator: mma.sync for
    BM = 16, wgmma from BM = 64), split-K for small M, any M/N/K with masks.

Scale/shift (``SCALE``):
    0  per channel, applied after the K reduction: the codes are dequantized with
       ``scale=1.0, shift=0.0`` (exact small integers, no affine fma) and
       ``y = s * sum(x * q) + h * sum(x)``. Same dot, different rounding than
       summing the rounded ``W`` (s and h are still rounded to ``x.dtype`` first).
    1  per channel, inside ``tl.dequantize`` (``[1, 1, BN]`` tile, packed fma in
       the asm): ``W`` rounded once, exactly as the reference.
    2  per group, one group per K tile (``group_size % (K rows per tile) == 0``):
       a ``[1, 1, BN]`` tile per iteration, inside the asm.
    3  per group, any group size: a ``[BKR, 1, BN]`` tile per iteration.
    Packed along N, scales vary along the unpacked axis: tl.dequantize applies
    them per output (modes 1-3), or SCALE 0 after the reduction.

Split-K (``SPLIT > 1``) in ONE launch, no memset: every CTA writes its fp32
partial to a workspace and bumps a per-tile counter (``atom.acq_rel.gpu``); the
CTA that arrives last sums the ``SPLIT`` partials (``REDUCE=1``: deterministic,
fixed order) or reads the fp32 sum accumulated with ``red.add`` (``REDUCE=2``),
casts, stores ``y`` and puts the counter (and for ``REDUCE=2`` the accumulator)
back to zero for the next call. Counters and accumulators are allocated zeroed
once per (device, stream) and cached, so concurrent calls on one stream are
ordered; calls on different streams get different buffers.

``NAIVE`` swaps ``tl.dequantize`` for shift/mask + int-to-float conversion,
leaving everything else as is: the bench's like-for-like "naive Triton" baseline.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)

from ._launch import launch

_BITS = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.uint16: 16, torch.int32: 32, torch.uint32: 32}
_DOT16_PER = (2, 4, 8, 16)


# --- per-container products for the GEMV (packed along K) ----------------------------------

# MODE: how sum_j q_j * x_j over the PER codes of a container is formed
F32, F16X2, F16X2_PORTABLE = 0, 1, 2


def _dot16_asm(pairs: int) -> str:
    """PTX: ``sum_j q_j * x_j`` over the ``2 * pairs`` codes of one container.
    Operands: ``$0`` f32 result, ``$1..$2p`` the codes (f16; codes ``j``, ``j+1``
    come out of one register of the dequant asm, so the ``mov`` packing is free),
    then ``p`` registers of packed ``(x_2i, x_2i+1)``. fp16 products and lanes,
    the two lanes added in fp32."""
    per = 2 * pairs
    lines = ["{", ".reg .b32 a, p;", ".reg .f16 lo, hi;", ".reg .f32 f0, f1;"]
    for i in range(pairs):
        lines.append(f"mov.b32 p, {{${1 + 2 * i}, ${2 + 2 * i}}};")
        x = f"${1 + per + i}"
        lines.append(f"mul.rn.f16x2 a, p, {x};" if i == 0 else f"fma.rn.f16x2 a, p, {x}, a;")
    lines += ["mov.b32 {lo, hi}, a;", "cvt.f32.f16 f0, lo;", "cvt.f32.f16 f1, hi;", "add.f32 $0, f0, f1;", "}"]
    return "\n".join(lines)


def _dot16_constraints(pairs: int) -> str:
    return "=r," + ",".join(["h"] * (2 * pairs) + ["r"] * pairs)


_DOT16_1 = tl.constexpr(_dot16_asm(1))
_DOT16_2 = tl.constexpr(_dot16_asm(2))
_DOT16_4 = tl.constexpr(_dot16_asm(4))
_DOT16_8 = tl.constexpr(_dot16_asm(8))
_CONS_1 = tl.constexpr(_dot16_constraints(1))


def _xscale_asm(k: int) -> str:
    half = (15 - k) << 10  # fp16 bits of 2**-k
    return "{\n.reg .b32 c;\nmov.b32 c, 0x%04x%04x;\nmul.rn.f16x2 $0, $1, c;\n}" % (half, half)


_XSCALE_3 = tl.constexpr(_xscale_asm(3))
_XSCALE_4 = tl.constexpr(_xscale_asm(4))
_XSCALE_5 = tl.constexpr(_xscale_asm(5))
_XSCALE_6 = tl.constexpr(_xscale_asm(6))
_CONS_2 = tl.constexpr(_dot16_constraints(2))
_CONS_4 = tl.constexpr(_dot16_constraints(4))
_CONS_8 = tl.constexpr(_dot16_constraints(8))


@triton.jit
def _split2(q):
    """[A, B, 2] -> q0, q1 ([A, B])."""
    return tl.split(q)


@triton.jit
def _split4(q):
    e, o = tl.split(tl.reshape(q, [q.shape[0], q.shape[1], 2, 2]))  # j = 2i + c
    q0, q2 = tl.split(e)
    q1, q3 = tl.split(o)
    return q0, q1, q2, q3


@triton.jit
def _split8(q):
    e, o = tl.split(tl.reshape(q, [q.shape[0], q.shape[1], 4, 2]))
    q0, q2, q4, q6 = _split4(e)
    q1, q3, q5, q7 = _split4(o)
    return q0, q1, q2, q3, q4, q5, q6, q7


@triton.jit
def _split16(q):
    e, o = tl.split(tl.reshape(q, [q.shape[0], q.shape[1], 8, 2]))
    q0, q2, q4, q6, q8, q10, q12, q14 = _split8(e)
    q1, q3, q5, q7, q9, q11, q13, q15 = _split8(o)
    return q0, q1, q2, q3, q4, q5, q6, q7, q8, q9, q10, q11, q12, q13, q14, q15


@triton.jit
def _split_codes(q, PER: tl.constexpr):
    """[R, C, PER] (codes in-thread) -> PER tensors [R, C], code order. The
    split tree undoes the dequant's join tree: no data movement."""
    if PER == 1:
        return (tl.reshape(q, [q.shape[0], q.shape[1]]),)
    elif PER == 2:
        return _split2(q)
    elif PER == 4:
        return _split4(q)
    elif PER == 8:
        return _split8(q)
    else:
        tl.static_assert(PER == 16, "the GEMV handles 2, 4, 8 or 16 codes per container")
        return _split16(q)


@triton.jit
def _xpair(xp, DST: tl.constexpr):
    """int32 holding ``x[2i]`` (low half) and ``x[2i+1]`` -> both as fp32 (exact)."""
    if DST == tl.bfloat16:
        lo = (xp << 16).to(tl.float32, bitcast=True)
        hi = (xp & -65536).to(tl.float32, bitcast=True)
    else:
        lo = (xp & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = (xp >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


def _xshift(nbit: int, per: int, signed: bool) -> int:
    """k such that PER/2 fp16 products of a code and ``x * 2**-k`` cannot overflow
    fp16 for any fp16 ``x``: ``2**k >= PER/2 * max|code|``."""
    top = (1 << (nbit - 1)) if signed else (1 << nbit) - 1
    return max(1, (per // 2 * top - 1).bit_length())


@triton.jit
def _scale_pairs(xt, XSHIFT: tl.constexpr, MODE: tl.constexpr):
    """x pairs (int32 holding two fp16) times 2**-XSHIFT, exactly as fp16 rounds it."""
    if XSHIFT == 0:
        return xt
    elif MODE == 1:
        if XSHIFT == 4:
            return tl.inline_asm_elementwise(_XSCALE_4, "=r,r", [xt], dtype=tl.int32, is_pure=True, pack=1)
        elif XSHIFT == 5:
            return tl.inline_asm_elementwise(_XSCALE_5, "=r,r", [xt], dtype=tl.int32, is_pure=True, pack=1)
        elif XSHIFT == 6:
            return tl.inline_asm_elementwise(_XSCALE_6, "=r,r", [xt], dtype=tl.int32, is_pure=True, pack=1)
        else:
            tl.static_assert(XSHIFT == 3, "XSHIFT must be 0, 3, 4, 5 or 6")
            return tl.inline_asm_elementwise(_XSCALE_3, "=r,r", [xt], dtype=tl.int32, is_pure=True, pack=1)
    else:
        f = 1.0 / (1 << XSHIFT)
        lo = ((xt & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True) * f).to(tl.float16)  # exact, then one
        hi = ((xt >> 16).to(tl.int16).to(tl.float16, bitcast=True) * f).to(tl.float16)  # rounding, like fp16
        lo = lo.to(tl.int16, bitcast=True)
        hi = hi.to(tl.int16, bitcast=True)
        return (lo.to(tl.int32) & 0xFFFF) | (hi.to(tl.int32) << 16)


@triton.jit
def _row_dot(acc, qs, xi_ptr, xoff, kw, xmask, PER: tl.constexpr, MODE: tl.constexpr, DST: tl.constexpr,
             XSHIFT: tl.constexpr):
    """``acc + sum_j qs[j] * x[row, kw * PER + j]`` ([R, C] fp32).

    ``qs``: PER tensors [R, C] (the codes or weights of R container rows x C
    columns); ``xi_ptr + xoff``: the row of x seen as int32 pairs; ``kw``: [R]
    container rows; ``xmask``: [R] or None. The PER/2 pairs of a row are one
    vector load ([R, 1, PER/2] split like the codes). ``XSHIFT``: the fp16 modes
    multiply x by ``2**-XSHIFT`` first (raw codes times x must not overflow the
    fp16 lanes); the caller multiplies the sum back."""
    P: tl.constexpr = PER // 2
    ptrs = (xi_ptr + xoff + kw * P)[:, None, None] + tl.arange(0, P)[None, None, :]
    if xmask is None:
        xt = tl.load(ptrs)
    else:
        xt = tl.load(ptrs, mask=xmask[:, None, None], other=0)
    xp = _split_codes(_scale_pairs(xt, XSHIFT, MODE), P)  # P tensors [R, 1]
    if MODE == 1:  # F16X2: one asm per container
        if PER == 2:
            r = tl.inline_asm_elementwise(_DOT16_1, _CONS_1, [qs[0], qs[1], xp[0]], dtype=tl.float32,
                                          is_pure=True, pack=1)
        elif PER == 4:
            r = tl.inline_asm_elementwise(_DOT16_2, _CONS_2, [qs[0], qs[1], qs[2], qs[3], xp[0], xp[1]],
                                          dtype=tl.float32, is_pure=True, pack=1)
        elif PER == 8:
            r = tl.inline_asm_elementwise(
                _DOT16_4, _CONS_4,
                [qs[0], qs[1], qs[2], qs[3], qs[4], qs[5], qs[6], qs[7], xp[0], xp[1], xp[2], xp[3]],
                dtype=tl.float32, is_pure=True, pack=1)
        else:
            r = tl.inline_asm_elementwise(
                _DOT16_8, _CONS_8,
                [qs[0], qs[1], qs[2], qs[3], qs[4], qs[5], qs[6], qs[7],
                 qs[8], qs[9], qs[10], qs[11], qs[12], qs[13], qs[14], qs[15],
                 xp[0], xp[1], xp[2], xp[3], xp[4], xp[5], xp[6], xp[7]],
                dtype=tl.float32, is_pure=True, pack=1)
        acc += r
    elif MODE == 2:  # F16X2_PORTABLE: the same arithmetic in plain tl (interpreter)
        a0 = tl.zeros(qs[0].shape, dtype=tl.float16)
        a1 = tl.zeros(qs[0].shape, dtype=tl.float16)
        for i in tl.static_range(P):
            a0 += qs[2 * i] * (xp[i] & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
            a1 += qs[2 * i + 1] * (xp[i] >> 16).to(tl.int16).to(tl.float16, bitcast=True)
        acc += a0.to(tl.float32) + a1.to(tl.float32)
    else:  # F32: fp32 products and sums
        for i in tl.static_range(P):
            lo, hi = _xpair(xp[i], DST)
            acc = acc + qs[2 * i].to(tl.float32) * lo  # two fma, no separate add
            acc = acc + qs[2 * i + 1].to(tl.float32) * hi
    return acc


@triton.jit
def _stack_rows(p0, p1, p2, p3, BM: tl.constexpr):
    """[BN] rows -> [BM, BN] (BM in 1, 2, 4)."""
    r = tl.arange(0, BM)[:, None]
    out = tl.where(r == 0, p0[None, :], 0.0)
    if BM >= 2:
        out = tl.where(r == 1, p1[None, :], out)
    if BM >= 4:
        out = tl.where(r == 2, p2[None, :], out)
        out = tl.where(r == 3, p3[None, :], out)
    return out


# --- unpacking: tl.dequantize, or the naive baseline -----------------------------------------

@triton.jit
def _unpack(w, s, h, NBIT: tl.constexpr, PER: tl.constexpr, DST: tl.constexpr, SIGNED: tl.constexpr,
            AFFINE: tl.constexpr, NAIVE: tl.constexpr):
    """Codes of ``w`` along axis 1 (a [R, 1, C] tile -> [R, PER, C], or a [R, C] tile
    -> [R, C * PER]); ``AFFINE`` applies ``s * q + h`` (else codes only)."""
    if not NAIVE:
        if AFFINE:
            q = tl.dequantize(w, s, h, NBIT, DST, axis=1, signed=SIGNED)
        else:
            q = tl.dequantize(w, 1.0, 0.0, NBIT, DST, axis=1, signed=SIGNED)
    else:
        u = w.to(tl.int32)
        sh = tl.arange(0, PER) * NBIT
        if len(w.shape) == 3:
            c = (u >> sh[None, :, None]) & ((1 << NBIT) - 1)  # [R, PER, C]
        else:
            c = (u[:, :, None] >> sh[None, None, :]) & ((1 << NBIT) - 1)
            c = tl.reshape(c, [w.shape[0], w.shape[1] * PER])
        if SIGNED:
            c = (c ^ (1 << (NBIT - 1))) - (1 << (NBIT - 1))
        q = c.to(DST)
        if AFFINE:
            q = q * s.to(DST) + h.to(DST)
    return q


# --- the split-K epilogue ---------------------------------------------------------------

@triton.jit
def _epilogue(part, xs, s_ptr, h_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
              BM: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr,
              SCALE: tl.constexpr, REDUCE: tl.constexpr, EVEN_N: tl.constexpr, DST: tl.constexpr):
    """``part``: [BM, BN] fp32 partial of this CTA's K slice; ``xs``: [BM] sum of
    ``x`` over the slice (SCALE 0). Writes ``y`` (once per tile, by the last CTA)."""
    m = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    if SCALE == 0:
        if EVEN_N:
            s = tl.load(s_ptr + n)
            h = tl.load(h_ptr + n)
        else:
            s = tl.load(s_ptr + n, mask=n < N, other=0.0)
            h = tl.load(h_ptr + n, mask=n < N, other=0.0)
        s = s.to(DST).to(tl.float32)  # rounded to x.dtype first, like the reference
        h = h.to(DST).to(tl.float32)
        part = part * s[None, :] + xs[:, None] * h[None, :]
    y_ptrs = y_ptr + m[:, None] * stride_ym + n[None, :]
    if EVEN_N:
        y_mask = (m < M)[:, None]
    else:
        y_mask = (m < M)[:, None] & (n < N)[None, :]
    if SPLIT == 1:
        tl.store(y_ptrs, part.to(DST), mask=y_mask)
    else:
        tile = pid_m * n_tiles + pid_n
        offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        if REDUCE == 1:  # partials [tiles, SPLIT, BM, BN], summed in a fixed order
            ws_tile = ws_ptr + tile.to(tl.int64) * (SPLIT * BM * BN)
            tl.store(ws_tile + pid_k * (BM * BN) + offs, part)
        else:  # fp32 sums [tiles, BM, BN], zero between calls
            ws_tile = ws_ptr + tile.to(tl.int64) * (BM * BN)
            tl.atomic_add(ws_tile + offs, part, sem="relaxed", scope="gpu")
        tl.debug_barrier()  # every thread's partial precedes the release below
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            if REDUCE == 1:
                sl = tl.arange(0, SPLIT_P2)[:, None, None]
                allp = tl.load(ws_tile + sl * (BM * BN) + offs[None, :, :], mask=sl < SPLIT, other=0.0,
                               cache_modifier=".cg")
                tot = tl.sum(allp, axis=0)
            else:
                tot = tl.load(ws_tile + offs, cache_modifier=".cg")
                tl.store(ws_tile + offs, tl.zeros([BM, BN], dtype=tl.float32))
            tl.store(y_ptrs, tot.to(DST), mask=y_mask)
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _xsum(x_ptr, m, stride_xm, M, k_lo, k_hi, n_it, BM: tl.constexpr, XB: tl.constexpr):
    """[BM] fp32 sums of x[m, k_lo:k_hi] in ``n_it`` steps of XB (few, independent
    loads: this runs after the main loop, on the CTA's critical path)."""
    acc = tl.zeros([BM, XB], dtype=tl.float32)
    for it in range(0, n_it):
        k = k_lo + it * XB + tl.arange(0, XB)
        acc += tl.load(x_ptr + m[:, None] * stride_xm + k[None, :], mask=(m < M)[:, None] & (k < k_hi)[None, :],
                       other=0.0).to(tl.float32)
    return tl.sum(acc, axis=1)


# --- decode GEMV -------------------------------------------------------------------------

@triton.jit
def _scales_rows_of_k(s_ptr, h_ptr, s_t, h_t, k0, k, K, n, N, group_size, SCALE: tl.constexpr):
    """Scale/shift for a [rows of K, BN] tile (codes packed along N): SCALE 2 one
    group row for the tile (starting at ``k0``), 3 one per row ``k``, else the
    per-channel ``s_t``/``h_t`` loaded before the loop."""
    if SCALE == 2:
        g = k0 // group_size
        s_l = tl.load(s_ptr + g * N + n, mask=n < N, other=0.0)[None, :]
        h_l = tl.load(h_ptr + g * N + n, mask=n < N, other=0.0)[None, :]
    elif SCALE == 3:
        g = k // group_size
        gmask = (k < K)[:, None] & (n < N)[None, :]
        s_l = tl.load(s_ptr + g[:, None] * N + n[None, :], mask=gmask, other=0.0)
        h_l = tl.load(h_ptr + g[:, None] * N + n[None, :], mask=gmask, other=0.0)
    else:
        s_l = s_t
        h_l = h_t
    return s_l, h_l


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, s_ptr, h_ptr, y_ptr, ws_ptr, cnt_ptr,
                 M, N, K, stride_xm, stride_ym, group_size, iters, n_tiles,
                 NBIT: tl.constexpr, PER: tl.constexpr, PACKED: tl.constexpr, SIGNED: tl.constexpr,
                 BM: tl.constexpr, BKR: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr,
                 SCALE: tl.constexpr, MODE: tl.constexpr, XSHIFT: tl.constexpr, REDUCE: tl.constexpr,
                 EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, NAIVE: tl.constexpr, STAGES: tl.constexpr,
                 ITERS: tl.constexpr, PREFETCH: tl.constexpr = False):
    """``y[m-tile, n-tile]`` over K slice ``pid_k`` (1-D grid, slices fastest).

    PACKED 0: tiles of ``BKR`` container rows (``BKR * PER`` values of K) x ``BN``
    columns; PACKED 1: ``BKR`` rows of K x ``BN // PER`` containers. ``BM`` (1, 2
    or 4) rows of x, each with its own [BKR, BN] fp32 accumulator (a 3-D
    accumulator would make Triton pick a layout that converts every tile).
    ``ITERS``: the loop count as a constexpr for the interpreter (numpy 2 cannot
    loop to a runtime bound there); 0 on GPUs (``iters`` at run time)."""
    DST: tl.constexpr = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = pid % SPLIT
    pid_n = (pid // SPLIT) % n_tiles
    pid_m = pid // (SPLIT * n_tiles)
    m0 = pid_m * BM
    n = pid_n * BN + tl.arange(0, BN)
    AFFINE: tl.constexpr = SCALE != 0
    t0 = pid_k * iters
    acc0 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc1 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc2 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc3 = tl.zeros([BKR, BN], dtype=tl.float32)
    if PACKED == 0:
        KR = K // PER
        if SCALE == 1:
            if EVEN_N:
                s_t = tl.load(s_ptr + n)[None, None, :]
                h_t = tl.load(h_ptr + n)[None, None, :]
            else:
                s_t = tl.load(s_ptr + n, mask=n < N, other=0.0)[None, None, :]
                h_t = tl.load(h_ptr + n, mask=n < N, other=0.0)[None, None, :]
        else:
            s_t = 0.0
            h_t = 0.0
        xi_ptr = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
        sxw = stride_xm // 2
        w_rows = (tl.arange(0, BKR) * N)[:, None, None] + n[None, None, :]
        if PREFETCH:  # register double buffer: the next tile's loads are in flight during this tile's math
            kwp = t0 * BKR + tl.arange(0, BKR)
            w_nxt = tl.load(w_ptr + (t0 * BKR).to(tl.int64) * N + w_rows,
                            mask=(kwp < KR)[:, None, None] & (n < N)[None, None, :], other=0,
                            eviction_policy="evict_first")
        for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
            r0 = (t0 + it) * BKR
            kw = r0 + tl.arange(0, BKR)
            if PREFETCH:
                w = w_nxt
                kwn = kw + BKR
                w_nxt = tl.load(w_ptr + (r0 + BKR).to(tl.int64) * N + w_rows,
                                mask=((kwn < KR) & (it + 1 < (ITERS if ITERS > 0 else iters)))[:, None, None]
                                & (n < N)[None, None, :],
                                other=0, eviction_policy="evict_first")
            elif EVEN_K and EVEN_N:  # streamed once: do not let it push x and the partials out of L2
                w = tl.load(w_ptr + r0.to(tl.int64) * N + w_rows, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptr + r0.to(tl.int64) * N + w_rows,
                            mask=(kw < KR)[:, None, None] & (n < N)[None, None, :], other=0,
                            eviction_policy="evict_first")
            # per-group scale/shift: fresh names in the loop (a loop-carried value must keep its type)
            if SCALE == 2:
                g = (r0 * PER) // group_size
                s_l = tl.load(s_ptr + g * N + n, mask=n < N, other=0.0)[None, None, :]
                h_l = tl.load(h_ptr + g * N + n, mask=n < N, other=0.0)[None, None, :]
            elif SCALE == 3:
                g = (kw * PER) // group_size
                gmask = (kw < KR)[:, None, None] & (n < N)[None, None, :]
                s_l = tl.load(s_ptr + g[:, None, None] * N + n[None, None, :], mask=gmask, other=0.0)
                h_l = tl.load(h_ptr + g[:, None, None] * N + n[None, None, :], mask=gmask, other=0.0)
            else:
                s_l = s_t
                h_l = h_t
            q = _unpack(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE, NAIVE)  # [BKR, PER, BN]
            qs = _split_codes(tl.permute(q, [0, 2, 1]), PER)
            kmask = kw < KR
            if BM == 1 and EVEN_K:
                acc0 = _row_dot(acc0, qs, xi_ptr, m0 * sxw, kw, None, PER, MODE, DST, XSHIFT)
            else:
                acc0 = _row_dot(acc0, qs, xi_ptr, m0 * sxw, kw, kmask & (m0 < M), PER, MODE, DST, XSHIFT)
            if BM >= 2:
                acc1 = _row_dot(acc1, qs, xi_ptr, (m0 + 1) * sxw, kw, kmask & (m0 + 1 < M), PER, MODE, DST, XSHIFT)
            if BM >= 4:
                acc2 = _row_dot(acc2, qs, xi_ptr, (m0 + 2) * sxw, kw, kmask & (m0 + 2 < M), PER, MODE, DST, XSHIFT)
                acc3 = _row_dot(acc3, qs, xi_ptr, (m0 + 3) * sxw, kw, kmask & (m0 + 3 < M), PER, MODE, DST, XSHIFT)
    else:
        BNW: tl.constexpr = BN // PER
        NW = N // PER
        nw = pid_n * BNW + tl.arange(0, BNW)
        if SCALE == 1:
            if EVEN_N:
                s_t = tl.load(s_ptr + n)[None, :]
                h_t = tl.load(h_ptr + n)[None, :]
            else:
                s_t = tl.load(s_ptr + n, mask=n < N, other=0.0)[None, :]
                h_t = tl.load(h_ptr + n, mask=n < N, other=0.0)[None, :]
        else:
            s_t = 0.0
            h_t = 0.0
        for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
            r0 = (t0 + it) * BKR
            k = r0 + tl.arange(0, BKR)
            w_ptrs = w_ptr + r0.to(tl.int64) * NW + (tl.arange(0, BKR) * NW)[:, None] + nw[None, :]
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptrs, mask=(k < K)[:, None] & (nw < NW)[None, :], other=0,
                            eviction_policy="evict_first")
            s_l, h_l = _scales_rows_of_k(s_ptr, h_ptr, s_t, h_t, r0, k, K, n, N, group_size, SCALE)
            q = _unpack(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE, NAIVE).to(tl.float32)  # [BKR, BN]
            kmask = k < K
            xv = tl.load(x_ptr + m0 * stride_xm + k, mask=kmask & (m0 < M), other=0.0)
            acc0 += q * xv.to(tl.float32)[:, None]
            if BM >= 2:
                xv = tl.load(x_ptr + (m0 + 1) * stride_xm + k, mask=kmask & (m0 + 1 < M), other=0.0)
                acc1 += q * xv.to(tl.float32)[:, None]
            if BM >= 4:
                xv = tl.load(x_ptr + (m0 + 2) * stride_xm + k, mask=kmask & (m0 + 2 < M), other=0.0)
                acc2 += q * xv.to(tl.float32)[:, None]
                xv = tl.load(x_ptr + (m0 + 3) * stride_xm + k, mask=kmask & (m0 + 3 < M), other=0.0)
                acc3 += q * xv.to(tl.float32)[:, None]
    part = _stack_rows(tl.sum(acc0, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0), tl.sum(acc3, axis=0), BM)
    if XSHIFT > 0:
        part = part * (1 << XSHIFT)
    if SCALE == 0:  # sum of x over this K slice, for the shift term
        KSPAN: tl.constexpr = BKR * PER if PACKED == 0 else BKR
        XB: tl.constexpr = 1024 // BM
        xs = _xsum(x_ptr, m0 + tl.arange(0, BM), stride_xm, M, t0 * KSPAN,
                   tl.minimum(t0 * KSPAN + (ITERS if ITERS > 0 else iters) * KSPAN, K),
                   ((ITERS if ITERS > 0 else iters) * KSPAN + XB - 1) // XB, BM, XB)
    else:
        xs = tl.zeros([BM], dtype=tl.float32)
    _epilogue(part, xs, s_ptr, h_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
              BM, BN, SPLIT, SPLIT_P2, SCALE, REDUCE, EVEN_N, DST)


# --- tensor-core matmul --------------------------------------------------------------------

@triton.jit
def _mm_kernel(x_ptr, w_ptr, s_ptr, h_ptr, y_ptr, ws_ptr, cnt_ptr,
               M, N, K, stride_xm, stride_ym, group_size, iters, n_tiles,
               NBIT: tl.constexpr, PER: tl.constexpr, PACKED: tl.constexpr, SIGNED: tl.constexpr,
               BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr, SPLIT_P2: tl.constexpr,
               SCALE: tl.constexpr, REDUCE: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
               NAIVE: tl.constexpr, STAGES: tl.constexpr, ITERS: tl.constexpr, ASM: tl.constexpr):
    """``y[m-tile, n-tile]`` over K slice ``pid_k``: ``[BM, BK] x [BK, BN]`` steps,
    the weight tile dequantized in registers, ``tl.dot`` with an fp32 accumulator."""
    DST: tl.constexpr = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = pid % SPLIT
    pid_n = (pid // SPLIT) % n_tiles
    pid_m = pid // (SPLIT * n_tiles)
    m = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    AFFINE: tl.constexpr = SCALE != 0
    t0 = pid_k * iters
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    xacc = tl.zeros([BM, BK], dtype=tl.float32)  # SCALE 0: sum of x, reduced after the loop
    if PACKED == 0:
        BKW: tl.constexpr = BK // PER
        KW = K // PER
        if SCALE == 1:
            s_t = tl.load(s_ptr + n, mask=n < N, other=0.0)[None, None, :]
            h_t = tl.load(h_ptr + n, mask=n < N, other=0.0)[None, None, :]
        else:
            s_t = 0.0
            h_t = 0.0
    else:
        BNW: tl.constexpr = BN // PER
        NW = N // PER
        nw = pid_n * BNW + tl.arange(0, BNW)
        if SCALE == 1:
            s_t = tl.load(s_ptr + n, mask=n < N, other=0.0)[None, :]
            h_t = tl.load(h_ptr + n, mask=n < N, other=0.0)[None, :]
        else:
            s_t = 0.0
            h_t = 0.0
    for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
        k0 = (t0 + it) * BK
        k = k0 + tl.arange(0, BK)
        if EVEN_K:
            xv = tl.load(x_ptr + m[:, None] * stride_xm + k[None, :], mask=(m < M)[:, None], other=0.0)
        else:
            xv = tl.load(x_ptr + m[:, None] * stride_xm + k[None, :], mask=(m < M)[:, None] & (k < K)[None, :],
                         other=0.0)
        if PACKED == 0:
            r0 = (t0 + it) * BKW
            kw = r0 + tl.arange(0, BKW)
            w_ptrs = w_ptr + r0.to(tl.int64) * N + (tl.arange(0, BKW) * N)[:, None, None] + n[None, None, :]
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptrs, mask=(kw < KW)[:, None, None] & (n < N)[None, None, :], other=0,
                            eviction_policy="evict_first")
            if SCALE == 2:  # fresh names: a loop-carried value must keep its type
                g = k0 // group_size
                s_l = tl.load(s_ptr + g * N + n, mask=n < N, other=0.0)[None, None, :]
                h_l = tl.load(h_ptr + g * N + n, mask=n < N, other=0.0)[None, None, :]
            elif SCALE == 3:
                g = (kw * PER) // group_size
                gmask = (kw < KW)[:, None, None] & (n < N)[None, None, :]
                s_l = tl.load(s_ptr + g[:, None, None] * N + n[None, None, :], mask=gmask, other=0.0)
                h_l = tl.load(h_ptr + g[:, None, None] * N + n[None, None, :], mask=gmask, other=0.0)
            else:
                s_l = s_t
                h_l = h_t
            q = _unpack(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE, NAIVE)  # [BKW, PER, BN]
            q = tl.reshape(q, [BK, BN])
        else:
            w_ptrs = w_ptr + k0.to(tl.int64) * NW + (tl.arange(0, BK) * NW)[:, None] + nw[None, :]
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptrs, mask=(k < K)[:, None] & (nw < NW)[None, :], other=0,
                            eviction_policy="evict_first")
            s_l, h_l = _scales_rows_of_k(s_ptr, h_ptr, s_t, h_t, k0, k, K, n, N, group_size, SCALE)
            q = _unpack(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE, NAIVE)  # [BK, BN]
        if ASM or DST == tl.float16:
            acc = tl.dot(xv, q, acc)
        else:  # the interpreter's bf16 tl.dot reads bf16 bits as integers
            acc = tl.dot(xv.to(tl.float32), q.to(tl.float32), acc)
        if SCALE == 0:
            xacc += xv.to(tl.float32)
    xs = tl.sum(xacc, axis=1)
    _epilogue(acc, xs, s_ptr, h_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
              BM, BN, SPLIT, SPLIT_P2, SCALE, REDUCE, EVEN_N, DST)


# --- host side -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """Launch parameters. ``kernel``: "gemv" or "mm". ``bk``: GEMV: container rows
    per tile (``bk * PER`` values of K when packed along K, ``bk`` rows of K
    otherwise); mm: values of K per tile. ``split``: K slices (1 = no split-K).
    ``post``: per-channel scale/shift after the reduction (SCALE 0) instead of in
    the dequant asm. ``dot16``: GEMV fp16x2 container dot products (fp16 only).
    ``reduce``: 1 partials + last-CTA sum (deterministic), 2 fp32 atomics."""
    kernel: str = "gemv"
    bm: int = 1
    bk: int = 32
    bn: int = 128
    split: int = 1
    num_warps: int = 4
    num_stages: int = 1
    post: bool = True
    dot16: bool = True
    reduce: int = 1
    prefetch: bool = False

    def short(self) -> str:
        return (f"{self.kernel} bm={self.bm} bk={self.bk} bn={self.bn} split={self.split} w={self.num_warps} "
                f"st={self.num_stages} post={int(self.post)} dot16={int(self.dot16)} red={self.reduce}"
                + (" pf=1" if self.prefetch else ""))


_SM_COUNT: dict = {}


def _sm_count(device) -> int:
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


def gemv_supported(M: int, per: int, packed_dim: int) -> bool:
    return M <= 4 and (packed_dim == 1 or per in _DOT16_PER)


def default_config(M: int, K: int, N: int, nbit: int, width: int, packed_dim: int, dtype: torch.dtype,
                   sms: int = 132) -> Config:
    """The launch table (H100; bench/linear.py sweeps the alternatives and prints
    the winners so that this table can be updated).

    GEMV (M <= 4): 4 warps; 16-byte container loads (4 int32 per lane: 128
    columns); 4 container rows per thread and step (bk = 16; 8 for 16 codes per
    container or 4 rows of x: the per-row x tile [bk, PER/2] must have fewer
    elements than the CTA has threads, else Triton routes it through shared
    memory every step). K split so that the grid has ~4 CTAs per SM: all resident
    at once (<= 80 registers), several loads in flight per SM, one launch.
    mm (M > 4): BM 16..128 x 128 x 128 tiles, split-K while the grid is below
    two CTAs per SM."""
    per = width // nbit
    if gemv_supported(M, per, packed_dim):
        bm = triton.next_power_of_2(M)
        if packed_dim == 0:
            bn = min(32 * (128 // width), max(16, triton.next_power_of_2(N)))
            bk = 8 if per >= 16 or bm >= 4 else 16
            rows = K // per
        else:
            bn = max(per, min(32 * per, triton.next_power_of_2(N)))
            bk = 16
            rows = K
        k_tiles = triton.cdiv(rows, bk)
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        # int2 at K >= 8192 ran 8% faster with twice the split (H100 sweep)
        ctas = 8 * sms if (per >= 16 and K >= 8192) else 4 * sms
        split = max(1, min(_pow2_floor(ctas // tiles), max(1, k_tiles // 2), 32))
        dot16 = dtype == torch.float16 and packed_dim == 0
        # fp16 products of raw 8-bit codes would need x * 2**-9: scale inside the asm instead
        post = not (dot16 and _xshift(nbit, per, True) > 6)
        # 8-bit weights (4 codes per load, ALU-light): the register double buffer
        # hides load latency (8192^2: 34.8 us vs 43.7 us, bench/results/h100.json)
        return Config("gemv", bm=bm, bk=bk, bn=bn, split=split, num_warps=4, num_stages=1, post=post,
                      dot16=dot16, reduce=1, prefetch=(per <= 4 and packed_dim == 0))
    bm = 16 if M <= 16 else 32 if M <= 32 else 64 if M <= 64 else 128
    bn = min(128, max(16, per if packed_dim == 1 else 16, triton.next_power_of_2(N)))
    bk = min(128, max(16, per if packed_dim == 0 else 16, triton.next_power_of_2(K)))
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    k_tiles = triton.cdiv(K, bk)
    split = max(1, min(_pow2_floor(2 * sms // tiles), k_tiles, 16)) if tiles < 2 * sms else 1
    return Config("mm", bm=bm, bk=bk, bn=bn, split=split, num_warps=8 if bm >= 128 else 4,
                  num_stages=3 if M > 16 else 2, post=True, dot16=False, reduce=1)


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


def _check_config(cfg: Config, per: int, packed_dim: int, dtype, nbit: int, signed: bool, groups: int) -> Config:
    """Clamp a config to what the kernels support for this problem."""
    if cfg.kernel not in ("gemv", "mm"):
        raise ValueError(f"config.kernel must be 'gemv' or 'mm', got {cfg.kernel!r}")
    if cfg.kernel == "gemv" and (cfg.bm > 4 or (packed_dim == 0 and per not in _DOT16_PER)):
        raise ValueError(f"the GEMV kernel takes bm <= 4 and, packed along K, 2, 4, 8 or 16 codes per "
                         f"container (got bm={cfg.bm}, {per})")
    if cfg.split < 1:
        raise ValueError(f"config.split must be >= 1, got {cfg.split}")
    for name in ("bm", "bk", "bn"):
        v = getattr(cfg, name)
        if v < 1 or v & (v - 1):
            raise ValueError(f"config.{name} must be a power of two, got {v}")
    if packed_dim == 1 and cfg.bn % per:
        raise ValueError(f"config.bn ({cfg.bn}) must be a multiple of the codes per container ({per})")
    if cfg.kernel == "mm":
        if cfg.bm < 16 or cfg.bn < 16 or cfg.bk < 16:
            raise ValueError("mm config needs bm, bn, bk >= 16")
        if packed_dim == 0 and cfg.bk % per:
            raise ValueError(f"config.bk ({cfg.bk}) must be a multiple of the codes per container ({per})")
    dot16 = cfg.dot16 and cfg.kernel == "gemv" and dtype == torch.float16 and packed_dim == 0 and per in _DOT16_PER
    post = cfg.post and groups == 1
    if dot16 and post and _xshift(nbit, per, signed) > 6:  # 8-bit codes: x * 2**-9 would lose too much
        post = False
    return replace(cfg, dot16=dot16, post=post)


def _scale_mode(post: bool, groups: int, group_size: int, k_span: int) -> int:
    if groups == 1:
        return 0 if post else 1
    return 2 if group_size % k_span == 0 else 3


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
          group_size: int, signed: bool, naive: bool, interp: bool) -> _Plan:
    """Everything about a launch that depends only on shapes and the config
    (cached: the host path of a decode step is a dict lookup and one launch)."""
    per = width // nbit
    cfg = _check_config(cfg, per, packed_dim, dtype, nbit, signed, groups)
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
    scale_mode = _scale_mode(cfg.post, groups, group_size, k_span)
    kw = dict(NBIT=nbit, PER=per, PACKED=packed_dim, SIGNED=bool(signed), BM=bm, BN=bn, SPLIT=split,
              SPLIT_P2=triton.next_power_of_2(split), SCALE=scale_mode, REDUCE=cfg.reduce,
              EVEN_K=rows % cfg.bk == 0 and split * iters == k_tiles, EVEN_N=N % bn == 0, NAIVE=bool(naive),
              STAGES=cfg.num_stages, ITERS=iters if interp else 0, num_warps=cfg.num_warps)
    if cfg.kernel == "gemv":
        kw.update(BKR=cfg.bk, MODE=(F16X2_PORTABLE if interp else F16X2) if cfg.dot16 else F32,
                  XSHIFT=_xshift(nbit, per, signed) if cfg.dot16 and scale_mode == 0 else 0,
                  PREFETCH=bool(cfg.prefetch) and packed_dim == 0)
        kernel = _gemv_kernel
    else:
        kw.update(BK=cfg.bk, ASM=not interp)
        kernel = _mm_kernel
    tiles = m_tiles * n_tiles if split > 1 else 0
    ws_numel = tiles * bm * bn * (split if cfg.reduce == 1 else 1)
    return _Plan(kernel, (m_tiles * n_tiles * split,), iters, n_tiles, tiles, ws_numel, cfg.reduce,
                 tuple(kw.items()))


@functools.lru_cache(maxsize=4096)
def _default(M, K, N, nbit, width, packed_dim, dtype, sms):
    return default_config(M, K, N, nbit, width, packed_dim, dtype, sms)


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
           group_size: int, packed_dim: int, signed: bool, config: Optional[Config] = None,
           naive: bool = False) -> torch.Tensor:
    """``x @ W`` (arguments already checked by :func:`triton_dequant.ops.linear`).

    ``config`` overrides :func:`default_config`; ``naive`` runs the shift/mask
    baseline with the same tiling (bench only). One kernel launch, no memset."""
    width = _BITS[qweight.dtype]
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
        return y.zero_().reshape(*lead, N)
    if not qweight.is_contiguous():
        qweight = qweight.contiguous()
    scale = scale.contiguous()
    shift = shift.contiguous()
    groups = scale.shape[0] if scale.dim() == 2 else 1
    dev = x.device
    if config is None:
        config = _default(M, K, N, nbit, width, packed_dim, x.dtype, _sm_count(dev) if x.is_cuda else 132)
    plan = _plan(config, M, K, N, nbit, width, packed_dim, x.dtype, groups, group_size, bool(signed), bool(naive),
                 _interpret())
    if plan.tiles:
        cnt = _zeroed("cnt", plan.tiles, torch.int32, dev)
        ws = _zeroed("acc", plan.ws_numel, torch.float32, dev) if plan.reduce == 2 else _workspace(plan.ws_numel, dev)
    else:
        cnt = ws = y  # unused
    args = (x2, qweight, scale, shift, y, ws, cnt, M, N, K, x2.stride(0), y.stride(0), group_size, plan.iters,
            plan.n_tiles)
    if x.is_cuda:
        launch(plan.kernel, plan.grid, args, dict(plan.kwargs), plan)
    else:  # the interpreter
        plan.kernel[plan.grid](*args, **dict(plan.kwargs))
    return y.reshape(*lead, N)
