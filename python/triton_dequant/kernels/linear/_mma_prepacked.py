"""Tensor-core matmul on prepacked weights (:mod:`triton_dequant.layouts`): ``y = x @ W``.

Swap AB: a CTA computes ``acc[BN, BM] = W^T[BN, K] x^T[K, BM]`` for ``BN`` output
channels and ``BM`` tokens (16..256, padded: M = 1 runs too), so the weights are
the MMA's A operand (wgmma on sm_90, ``mma.sync`` on sm_80) and the tokens its N
dimension. Per K tile: one 1-D contiguous load of the tile's ``BN * BK / PER``
int32 words (cp.async by Triton's pipeliner, 16 bytes per thread), the
activations ``x^T[BK, BM]`` (cp.async into shared memory: the wgmma B operand),
``tl.dequantize`` of every word with its own scale/shift (gathered in the word's
register layout: no conversion), :func:`layouts.unshuffle` (a register
relabeling into the MMA operand layout), ``tl.dot`` with an fp32 accumulator.
The dequantized weights never touch shared memory (``test/lit/linear_mma.py``).

Scale modes (``SCALE``, see :mod:`._common`): ``SCALE_POST`` (per channel, raw
codes into the MMA, ``s * acc + h * sum(x)`` after the loop), ``SCALE_CHANNEL``
(per channel, inside the dequant asm: W rounded once like the reference),
``SCALE_GROUP`` (``group_size`` a multiple of ``BK``: one group row per tile),
``SCALE_GROUP_ROWS`` (``BK`` a multiple of ``group_size``: the group of each word).
``SUB = 2`` (``SCALE_GROUP_ROWS`` only) splits each word into 16-bit halves with
their own scale/shift, for groups smaller than the K span of a word (int2 words
span 64 values of K).

Split-K in one launch through :func:`._common.epilogue`; the grid is
``(m-tiles fastest, K slices, n-tiles)`` so that the CTAs reading the same weight
tiles run together (L2 reuse for M > BM). Every product that can pass 2**31
(``m * stride``, tile offsets, ``g * N``) is 64-bit.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ... import layouts
from ._common import SCALE_CHANNEL, SCALE_GROUP, SCALE_GROUP_ROWS, SCALE_POST, epilogue, xsum


@triton.jit
def _word_scales(s_ptr, h_ptr, g64, off, mask, N):
    """Scale/shift of each word: ``s[g, n]`` at ``s_ptr + g64 * N + off``."""
    s = tl.load(s_ptr + g64 * N + off, mask=mask, other=0.0)
    h = tl.load(h_ptr + g64 * N + off, mask=mask, other=0.0)
    return s, h


@triton.jit
def _halves(w):
    """int32 words [NW] -> their 16-bit halves [2 * NW] (low half first)."""
    lo = (w & 0xFFFF).to(tl.int16)
    hi = (w >> 16).to(tl.int16)
    return tl.reshape(tl.join(lo, hi), [2 * w.shape[0]])


@triton.jit
def mma_prepacked_kernel(x_ptr, w_ptr, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                         M, N, K, stride_xm, stride_ym, group_size, iters, n_tiles, k_tiles,
                         NBIT: tl.constexpr, SIGNED: tl.constexpr, LAYOUT: tl.constexpr,
                         BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                         SPLIT: tl.constexpr, SCALE: tl.constexpr, SUB: tl.constexpr,
                         KTOP: tl.constexpr, REDUCE: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
                         HAS_BIAS: tl.constexpr, UNPACK: tl.constexpr, STAGES: tl.constexpr, ITERS: tl.constexpr,
                         ASM: tl.constexpr, GROUP: tl.constexpr, EVEN_M: tl.constexpr):
    """``y[m-tile, n-tile]`` over K slice ``pid_k``. ``w_ptr``: the prepacked
    ``[n_tiles, k_tiles, BN * BK / PER]`` int32 weights of layout ``LAYOUT``;
    ``KTOP`` (``SUB = 2``): K offset of a word's high half. ``ITERS``: the loop
    count as a constexpr for the interpreter, 0 on GPUs. ``GROUP``: the group size
    as a constexpr (per-group modes; the group index of a tile is then a shift,
    not a 20-instruction integer division per step); ``group_size`` is unused.
    Scale/shift loads are unmasked when N and K are multiples of the tile (a
    masked 16-bit load costs a register clear each)."""
    DST: tl.constexpr = x_ptr.dtype.element_ty
    PER: tl.constexpr = 32 // NBIT
    NW: tl.constexpr = BN * BK // PER
    AFFINE: tl.constexpr = SCALE != SCALE_POST
    pid = tl.program_id(0)
    m_tiles = tl.cdiv(M, BM)
    pid_m = pid % m_tiles
    pid_k = (pid // m_tiles) % SPLIT
    pid_n = pid // (m_tiles * SPLIT)
    t0 = pid_k * iters
    m = pid_m * BM + tl.arange(0, BM)
    widx = tl.arange(0, NW)
    n_off, k_off = layouts.word_offsets(widx, LAYOUT)
    n_w = pid_n * BN + n_off                          # the row of N of each word
    nmask = n_w < N
    x_ptrs = x_ptr + m.to(tl.int64)[None, :] * stride_xm + (t0 * BK + tl.arange(0, BK))[:, None]
    w_ptrs = w_ptr + (pid_n.to(tl.int64) * k_tiles + t0) * NW + widx
    if SCALE == SCALE_CHANNEL:
        if EVEN_N:
            s_c = tl.load(s_ptr + n_w)
            h_c = tl.load(h_ptr + n_w)
        else:
            s_c, h_c = _word_scales(s_ptr, h_ptr, 0, n_w, nmask, N)
    if SCALE == SCALE_GROUP_ROWS:
        g_w = k_off // GROUP                           # group of each word (or low half) inside the tile
        if SUB == 2:
            g_h = (k_off + KTOP) // GROUP
    acc = tl.zeros([BN, BM], dtype=tl.float32)
    for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
        kt = t0 + it
        k0 = kt * BK
        if EVEN_K:
            if EVEN_M:
                xT = tl.load(x_ptrs + it * BK)
            else:
                xT = tl.load(x_ptrs + it * BK, mask=(m < M)[None, :], other=0.0)
            w = tl.load(w_ptrs + it * NW, eviction_policy="evict_first")
        else:
            k = k0 + tl.arange(0, BK)
            xT = tl.load(x_ptrs + it * BK, mask=(m < M)[None, :] & (k < K)[:, None], other=0.0)
            w = tl.load(w_ptrs + it * NW, mask=(widx < NW) & (kt < k_tiles), other=0,
                        eviction_policy="evict_first")
        # scale/shift of every word (fresh names in the loop: loop-carried values keep their type)
        if SCALE == SCALE_GROUP:  # one group row for the whole tile
            g = (kt // (GROUP // BK)).to(tl.int64)
            if EVEN_K and EVEN_N:
                s_l = tl.load(s_ptr + g * N + n_w)
                h_l = tl.load(h_ptr + g * N + n_w)
            else:
                s_l, h_l = _word_scales(s_ptr, h_ptr, g, n_w, nmask & (kt < k_tiles), N)
        elif SCALE == SCALE_GROUP_ROWS:
            gb = (kt * (BK // GROUP)).to(tl.int64)    # the tile's first group
            if EVEN_K and EVEN_N:
                s_l = tl.load(s_ptr + (gb + g_w) * N + n_w)
                h_l = tl.load(h_ptr + (gb + g_w) * N + n_w)
            else:
                s_l, h_l = _word_scales(s_ptr, h_ptr, gb + g_w, n_w, nmask & (k0 + k_off < K), N)
            if SUB == 2:
                if EVEN_K and EVEN_N:
                    s_2 = tl.load(s_ptr + (gb + g_h) * N + n_w)
                    h_2 = tl.load(h_ptr + (gb + g_h) * N + n_w)
                else:
                    s_2, h_2 = _word_scales(s_ptr, h_ptr, gb + g_h, n_w, nmask & (k0 + k_off + KTOP < K), N)
                s_l = tl.reshape(tl.join(s_l, s_2), [2 * NW])
                h_l = tl.reshape(tl.join(h_l, h_2), [2 * NW])
        elif SCALE == SCALE_CHANNEL:
            s_l = s_c
            h_l = h_c
        else:
            s_l = 1.0
            h_l = 0.0
        if SUB == 2:
            ww = _halves(w)[:, None]
            PW: tl.constexpr = PER // 2
        else:
            ww = w[:, None]
            PW: tl.constexpr = PER
        if AFFINE:
            q = UNPACK(ww, s_l[:, None], h_l[:, None], NBIT, PW, DST, SIGNED, True)
        else:
            q = UNPACK(ww, 1.0, 0.0, NBIT, PW, DST, SIGNED, False)
        q = layouts.unshuffle(q, BN, BK, LAYOUT)       # [BN, BK], the MMA's A operand
        if ASM or DST == tl.float16:
            acc = tl.dot(q, xT, acc)
        else:  # the interpreter's bf16 tl.dot reads bf16 bits as integers
            acc = tl.dot(q.to(tl.float32), xT.to(tl.float32), acc)
    if SCALE == SCALE_POST:  # sum of x over this K slice, for the shift term
        XB: tl.constexpr = 4096 // BM if BM <= 256 else 16
        xs = xsum(x_ptr, m, stride_xm, M, t0 * BK, tl.minimum((t0 + (ITERS if ITERS > 0 else iters)) * BK, K),
                  ((ITERS if ITERS > 0 else iters) * BK + XB - 1) // XB, BM, XB)
    else:
        xs = tl.zeros([BM], dtype=tl.float32)
    epilogue(tl.trans(acc), xs, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N,
             stride_ym, BM, BN, SPLIT, SCALE, REDUCE, EVEN_N, HAS_BIAS, DST,
             ITERS == 0)  # compiled (not interpreted): fence the split-K partials
