"""Decode GEMV (M <= 4) for weights packed along K or N: ``y = x @ W``.

A CTA owns ``BN`` output columns, ``BM`` (1, 2, 4) rows of ``x`` and one of
``SPLIT`` slices of K. Packed along K (2, 4, 8 or 16 codes per container), each
step loads a ``[BKR, 1, BN]`` tile of containers (four int32 per lane along N:
16-byte loads, ``evict_first``), unpacks it along axis 1 to ``[BKR, PER, BN]``,
splits the PER codes back out (the split tree undoes the dequant's join tree: no
data movement) and forms ``sum_j q_j * x_j`` per container (``DOT``):

``DOT_F16X2`` (fp16 x): one asm per container, ``fma.rn.f16x2`` on the register
    pairs (code ``j``, ``j+1``) the dequant asm produced, the two fp16 lanes added
    in fp32: fp16 partials span at most PER/2 products, everything across
    containers is fp32. With raw codes (``SCALE_POST``) ``x`` is first multiplied
    by ``2**-XSHIFT`` (``2**XSHIFT >= PER/2 * max|code|``) so no fp16 lane can
    overflow for any fp16 ``x``; the sum is multiplied back in fp32.
``DOT_F32`` (bf16, or by config): fp32 products and sums.

Each row of ``x`` has its own ``[BKR, BN]`` fp32 accumulator; the reduction over K
across threads happens once, after the loop. On sm_90 (int4, fp16, BKR=16): 3.3
SASS instructions per weight in the loop, no layout conversion, no shared memory
(test/lit/linear.py). Packed along N: ``[BKR, BN / PER]`` container tiles, fp32
products.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import SCALE_POST, channel_scales, epilogue, group_scales, xsum

# DOT: how sum_j q_j * x_j over the PER codes of a container is formed
DOT_F32 = tl.constexpr(0)             # fp32 products and sums
DOT_F16X2 = tl.constexpr(1)           # fma.rn.f16x2 on the dequant asm's register pairs (fp16 x)
DOT_F16X2_PORTABLE = tl.constexpr(2)  # the same arithmetic in plain tl (interpreter)


@triton.constexpr_function
def dot16_asm(pairs):
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


@triton.constexpr_function
def dot16_constraints(pairs):
    return "=r," + ",".join(["h"] * (2 * pairs) + ["r"] * pairs)


@triton.constexpr_function
def xscale_asm(k):
    """PTX: both fp16 halves of ``$1`` times ``2**-k`` (``mul.rn.f16x2``)."""
    half = (15 - k) << 10  # fp16 bits of 2**-k (exponent bias 15, zero mantissa), 1 <= k <= 14
    return "{\n.reg .b32 c;\nmov.b32 c, 0x%04x%04x;\nmul.rn.f16x2 $0, $1, c;\n}" % (half, half)


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
def split_codes(q, PER: tl.constexpr):
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


@triton.jit
def _scale_pairs(xt, XSHIFT: tl.constexpr, MODE: tl.constexpr):
    """x pairs (int32 holding two fp16) times 2**-XSHIFT, exactly as fp16 rounds it."""
    if XSHIFT == 0:
        return xt
    elif MODE == DOT_F16X2:
        return tl.inline_asm_elementwise(xscale_asm(XSHIFT), "=r,r", [xt], dtype=tl.int32, is_pure=True, pack=1)
    else:
        f = 1.0 / (1 << XSHIFT)
        lo = ((xt & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True) * f).to(tl.float16)  # exact, then one
        hi = ((xt >> 16).to(tl.int16).to(tl.float16, bitcast=True) * f).to(tl.float16)  # rounding, like fp16
        lo = lo.to(tl.int16, bitcast=True)
        hi = hi.to(tl.int16, bitcast=True)
        return (lo.to(tl.int32) & 0xFFFF) | (hi.to(tl.int32) << 16)


@triton.jit
def row_dot(acc, qs, xi_ptr, xoff, kw, xmask, PER: tl.constexpr, MODE: tl.constexpr, DST: tl.constexpr,
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
    xp = split_codes(_scale_pairs(xt, XSHIFT, MODE), P)  # P tensors [R, 1]
    if MODE == DOT_F16X2:  # one asm per container
        acc += tl.inline_asm_elementwise(dot16_asm(P), dot16_constraints(P), qs + xp, dtype=tl.float32,
                                         is_pure=True, pack=1)
    elif MODE == DOT_F16X2_PORTABLE:
        a0 = tl.zeros(qs[0].shape, dtype=tl.float16)
        a1 = tl.zeros(qs[0].shape, dtype=tl.float16)
        for i in tl.static_range(P):
            a0 += qs[2 * i] * (xp[i] & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
            a1 += qs[2 * i + 1] * (xp[i] >> 16).to(tl.int16).to(tl.float16, bitcast=True)
        acc += a0.to(tl.float32) + a1.to(tl.float32)
    else:  # DOT_F32
        for i in tl.static_range(P):
            lo, hi = _xpair(xp[i], DST)
            acc = acc + qs[2 * i].to(tl.float32) * lo  # two fma, no separate add
            acc = acc + qs[2 * i + 1].to(tl.float32) * hi
    return acc


@triton.jit
def stack_rows(p0, p1, p2, p3, BM: tl.constexpr):
    """[BN] rows -> [BM, BN] (BM in 1, 2, 4)."""
    r = tl.arange(0, BM)[:, None]
    out = tl.where(r == 0, p0[None, :], 0.0)
    if BM >= 2:
        out = tl.where(r == 1, p1[None, :], out)
    if BM >= 4:
        out = tl.where(r == 2, p2[None, :], out)
        out = tl.where(r == 3, p3[None, :], out)
    return out


@triton.jit
def gemv_kernel(x_ptr, w_ptr, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
                M, N, K, stride_xm, stride_ym, group_size, iters, n_tiles,
                NBIT: tl.constexpr, PER: tl.constexpr, PACKED: tl.constexpr, SIGNED: tl.constexpr,
                BM: tl.constexpr, BKR: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
                SCALE: tl.constexpr, MODE: tl.constexpr, XSHIFT: tl.constexpr, REDUCE: tl.constexpr,
                EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, UNPACK: tl.constexpr, STAGES: tl.constexpr,
                ITERS: tl.constexpr, PREFETCH: tl.constexpr, HAS_BIAS: tl.constexpr):
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
    AFFINE: tl.constexpr = SCALE != SCALE_POST
    t0 = pid_k * iters
    acc0 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc1 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc2 = tl.zeros([BKR, BN], dtype=tl.float32)
    acc3 = tl.zeros([BKR, BN], dtype=tl.float32)
    if PACKED == 0:
        KR = K // PER
        s_t, h_t = channel_scales(s_ptr, h_ptr, n, N, SCALE, EVEN_N)
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
            # fresh names in the loop: a loop-carried value must keep its type
            s_l, h_l = group_scales(s_ptr, h_ptr, s_t, h_t, r0 * PER, kw * PER, kw < KR, n, N, K, group_size, SCALE)
            q = UNPACK(w, s_l[:, None, :], h_l[:, None, :], NBIT, PER, DST, SIGNED, AFFINE)  # [BKR, PER, BN]
            qs = split_codes(tl.permute(q, [0, 2, 1]), PER)
            kmask = kw < KR
            if BM == 1 and EVEN_K:
                acc0 = row_dot(acc0, qs, xi_ptr, m0.to(tl.int64) * sxw, kw, None, PER, MODE, DST, XSHIFT)
            else:
                acc0 = row_dot(acc0, qs, xi_ptr, m0.to(tl.int64) * sxw, kw, kmask & (m0 < M), PER, MODE, DST, XSHIFT)
            if BM >= 2:
                acc1 = row_dot(acc1, qs, xi_ptr, (m0 + 1).to(tl.int64) * sxw, kw, kmask & (m0 + 1 < M), PER, MODE, DST, XSHIFT)
            if BM >= 4:
                acc2 = row_dot(acc2, qs, xi_ptr, (m0 + 2).to(tl.int64) * sxw, kw, kmask & (m0 + 2 < M), PER, MODE, DST, XSHIFT)
                acc3 = row_dot(acc3, qs, xi_ptr, (m0 + 3).to(tl.int64) * sxw, kw, kmask & (m0 + 3 < M), PER, MODE, DST, XSHIFT)
    else:
        BNW: tl.constexpr = BN // PER
        NW = N // PER
        nw = pid_n * BNW + tl.arange(0, BNW)
        s_t, h_t = channel_scales(s_ptr, h_ptr, n, N, SCALE, EVEN_N)
        for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
            r0 = (t0 + it) * BKR
            k = r0 + tl.arange(0, BKR)
            w_ptrs = w_ptr + r0.to(tl.int64) * NW + (tl.arange(0, BKR) * NW)[:, None] + nw[None, :]
            if EVEN_K and EVEN_N:
                w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptrs, mask=(k < K)[:, None] & (nw < NW)[None, :], other=0,
                           eviction_policy="evict_first")
            s_l, h_l = group_scales(s_ptr, h_ptr, s_t, h_t, r0, k, k < K, n, N, K, group_size, SCALE)
            q = UNPACK(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE).to(tl.float32)  # [BKR, BN]
            kmask = k < K
            xv = tl.load(x_ptr + m0.to(tl.int64) * stride_xm + k, mask=kmask & (m0 < M), other=0.0)
            acc0 += q * xv.to(tl.float32)[:, None]
            if BM >= 2:
                xv = tl.load(x_ptr + (m0 + 1).to(tl.int64) * stride_xm + k, mask=kmask & (m0 + 1 < M), other=0.0)
                acc1 += q * xv.to(tl.float32)[:, None]
            if BM >= 4:
                xv = tl.load(x_ptr + (m0 + 2).to(tl.int64) * stride_xm + k, mask=kmask & (m0 + 2 < M), other=0.0)
                acc2 += q * xv.to(tl.float32)[:, None]
                xv = tl.load(x_ptr + (m0 + 3).to(tl.int64) * stride_xm + k, mask=kmask & (m0 + 3 < M), other=0.0)
                acc3 += q * xv.to(tl.float32)[:, None]
    part = stack_rows(tl.sum(acc0, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0), tl.sum(acc3, axis=0), BM)
    if XSHIFT > 0:
        part = part * (1 << XSHIFT)
    if SCALE == SCALE_POST:  # sum of x over this K slice, for the shift term
        KSPAN: tl.constexpr = BKR * PER if PACKED == 0 else BKR
        XB: tl.constexpr = 1024 // BM
        xs = xsum(x_ptr, m0 + tl.arange(0, BM), stride_xm, M, t0 * KSPAN,
                  tl.minimum(t0 * KSPAN + (ITERS if ITERS > 0 else iters) * KSPAN, K),
                  ((ITERS if ITERS > 0 else iters) * KSPAN + XB - 1) // XB, BM, XB)
    else:
        xs = tl.zeros([BM], dtype=tl.float32)
    epilogue(part, xs, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
             BM, BN, SPLIT, SCALE, REDUCE, EVEN_N, HAS_BIAS, DST,
             ITERS == 0)  # compiled (not interpreted): fence the split-K partials
