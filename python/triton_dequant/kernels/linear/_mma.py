"""Tensor-core matmul (M > 4, and layouts the GEMV does not take): ``y = x @ W``.

``[BM, BK] x [BK, BN]`` tiles: the weight tile is dequantized in registers and fed
to ``tl.dot`` (fp16/bf16 operands, fp32 accumulator: mma.sync for BM = 16, wgmma
from BM = 64), split-K for small M, any M/N/K with masks. The dequantized tile
reaches the MMA through shared memory (a ``local_alloc`` per step).
"""
from __future__ import annotations

import triton
import triton.language as tl

from ._common import SCALE_POST, channel_scales, epilogue, group_scales


@triton.jit
def mm_kernel(x_ptr, w_ptr, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr,
              M, N, K, stride_xm, stride_ym, group_size, iters, n_tiles,
              NBIT: tl.constexpr, PER: tl.constexpr, PACKED: tl.constexpr, SIGNED: tl.constexpr,
              BM: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
              SCALE: tl.constexpr, REDUCE: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
              UNPACK: tl.constexpr, STAGES: tl.constexpr, ITERS: tl.constexpr, ASM: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """``y[m-tile, n-tile]`` over K slice ``pid_k``: ``[BM, BK] x [BK, BN]`` steps,
    the weight tile dequantized in registers, ``tl.dot`` with an fp32 accumulator."""
    DST: tl.constexpr = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    pid_k = pid % SPLIT
    pid_n = (pid // SPLIT) % n_tiles
    pid_m = pid // (SPLIT * n_tiles)
    m = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    AFFINE: tl.constexpr = SCALE != SCALE_POST
    t0 = pid_k * iters
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    xacc = tl.zeros([BM, BK], dtype=tl.float32)  # SCALE_POST: sum of x, reduced after the loop
    s_t, h_t = channel_scales(s_ptr, h_ptr, n, N, SCALE, False)
    if PACKED == 0:
        BKW: tl.constexpr = BK // PER
        KW = K // PER
    else:
        BNW: tl.constexpr = BN // PER
        NW = N // PER
        nw = pid_n * BNW + tl.arange(0, BNW)
    for it in tl.range(0, ITERS if ITERS > 0 else iters, num_stages=STAGES):
        k0 = (t0 + it) * BK
        k = k0 + tl.arange(0, BK)
        if EVEN_K:
            xv = tl.load(x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :], mask=(m < M)[:, None], other=0.0)
        else:
            xv = tl.load(x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :], mask=(m < M)[:, None] & (k < K)[None, :],
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
            # fresh names in the loop: a loop-carried value must keep its type
            s_l, h_l = group_scales(s_ptr, h_ptr, s_t, h_t, k0, kw * PER, kw < KW, n, N, K, group_size, SCALE)
            q = UNPACK(w, s_l[:, None, :], h_l[:, None, :], NBIT, PER, DST, SIGNED, AFFINE)  # [BKW, PER, BN]
            q = tl.reshape(q, [BK, BN])
        else:
            w_ptrs = w_ptr + k0.to(tl.int64) * NW + (tl.arange(0, BK) * NW)[:, None] + nw[None, :]
            if EVEN_K and EVEN_N:
               w = tl.load(w_ptrs, eviction_policy="evict_first")
            else:
               w = tl.load(w_ptrs, mask=(k < K)[:, None] & (nw < NW)[None, :], other=0,
                           eviction_policy="evict_first")
            s_l, h_l = group_scales(s_ptr, h_ptr, s_t, h_t, k0, k, k < K, n, N, K, group_size, SCALE)
            q = UNPACK(w, s_l, h_l, NBIT, PER, DST, SIGNED, AFFINE)  # [BK, BN]
        if ASM or DST == tl.float16:
            acc = tl.dot(xv, q, acc)
        else:  # the interpreter's bf16 tl.dot reads bf16 bits as integers
            acc = tl.dot(xv.to(tl.float32), q.to(tl.float32), acc)
        if SCALE == SCALE_POST:
            xacc += xv.to(tl.float32)
    xs = tl.sum(xacc, axis=1)
    epilogue(acc, xs, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
             BM, BN, SPLIT, SCALE, REDUCE, EVEN_N, HAS_BIAS, DST,
             ITERS == 0)  # compiled (not interpreted): fence the split-K partials
