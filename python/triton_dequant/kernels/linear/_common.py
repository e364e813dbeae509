"""Pieces shared by the weight-only matmul kernels: named modes, the unpack
step, the per-group scale loader, the split-K epilogue.

Named modes (constexprs; the host passes ``MODE.value``):

``SCALE`` -- where the scale/shift are applied
    ``SCALE_POST``       per channel, after the K reduction: the codes are dequantized
                         with ``scale=1.0, shift=0.0`` (exact small integers) and
                         ``y = s * sum(x * q) + h * sum(x)``. Same dot, different rounding
                         than summing the rounded ``W`` (s and h still rounded to x.dtype).
    ``SCALE_CHANNEL``    per channel, inside ``tl.dequantize`` (packed fma in the asm):
                         ``W`` rounded once, exactly as the reference.
    ``SCALE_GROUP``      per group, one group per K tile (``group_size % k_span == 0``).
    ``SCALE_GROUP_ROWS`` per group, any group size: one scale row per tile row of K.
``REDUCE`` -- how split-K partials meet (one launch, the last CTA of a tile finishes)
    ``REDUCE_PARTIALS``  fp32 partials in a workspace, summed in a fixed order (deterministic).
    ``REDUCE_ATOMIC``    fp32 ``red.add`` into a zeroed accumulator.
"""
from __future__ import annotations

import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)

SCALE_POST = tl.constexpr(0)
SCALE_CHANNEL = tl.constexpr(1)
SCALE_GROUP = tl.constexpr(2)
SCALE_GROUP_ROWS = tl.constexpr(3)

REDUCE_PARTIALS = tl.constexpr(1)
REDUCE_ATOMIC = tl.constexpr(2)


@triton.jit
def unpack(w, s, h, NBIT: tl.constexpr, PER: tl.constexpr, DST: tl.constexpr, SIGNED: tl.constexpr,
           AFFINE: tl.constexpr):
    """Codes of ``w`` along axis 1 (a [R, 1, C] tile -> [R, PER, C], or a [R, C] tile
    -> [R, C * PER]); ``AFFINE`` applies ``s * q + h`` (else the codes themselves).

    The kernels take the unpack step as a constexpr function argument (``UNPACK``):
    this one is the shipped step; ``bench/naive.py`` passes a shift/mask +
    int-to-float twin with the same signature for the like-for-like baseline."""
    if AFFINE:
        q = tl.dequantize(w, s, h, NBIT, DST, axis=1, signed=SIGNED)
    else:
        q = tl.dequantize(w, 1.0, 0.0, NBIT, DST, axis=1, signed=SIGNED)
    return q


@triton.jit
def group_scales(s_ptr, h_ptr, s_t, h_t, k_first, k_rows, row_mask, n, N, K, group_size, SCALE: tl.constexpr):
    """Scale and shift for one K tile, as ``[1, BN]`` or ``[R, BN]`` tensors.

    ``SCALE_GROUP``: the group of ``k_first`` (the tile's first K index) for the whole
    tile; ``SCALE_GROUP_ROWS``: the group of each tile row, ``k_rows`` ([R], the first
    K index of each row; ``row_mask`` [R] masks rows past K; ``K``: the codes along K,
    so a split's tail tile past K reads no scale row past the last); otherwise the
    per-channel ``s_t``/``h_t`` the caller loaded before the loop (or 0.0 with
    ``SCALE_POST``). ``s``/``h`` are ``[groups, N]`` row-major."""
    if SCALE == SCALE_GROUP:
        g = (k_first // group_size).to(tl.int64)
        s = tl.load(s_ptr + g * N + n, mask=(n < N) & (k_first < K), other=0.0)[None, :]
        h = tl.load(h_ptr + g * N + n, mask=(n < N) & (k_first < K), other=0.0)[None, :]
    elif SCALE == SCALE_GROUP_ROWS:
        g = (k_rows // group_size).to(tl.int64)
        gmask = row_mask[:, None] & (n < N)[None, :]
        s = tl.load(s_ptr + g[:, None] * N + n[None, :], mask=gmask, other=0.0)
        h = tl.load(h_ptr + g[:, None] * N + n[None, :], mask=gmask, other=0.0)
    else:
        s = s_t
        h = h_t
    return s, h


@triton.jit
def channel_scales(s_ptr, h_ptr, n, N, SCALE: tl.constexpr, EVEN_N: tl.constexpr):
    """Per-channel scale/shift as ``[1, BN]`` for ``SCALE_CHANNEL`` (else zeros, unused)."""
    if SCALE == SCALE_CHANNEL:
        if EVEN_N:
            s = tl.load(s_ptr + n)[None, :]
            h = tl.load(h_ptr + n)[None, :]
        else:
            s = tl.load(s_ptr + n, mask=n < N, other=0.0)[None, :]
            h = tl.load(h_ptr + n, mask=n < N, other=0.0)[None, :]
    else:  # unused (SCALE_POST applies them after the reduction)
        s = tl.zeros([1, n.shape[0]], dtype=tl.float32)
        h = tl.zeros([1, n.shape[0]], dtype=tl.float32)
    return s, h


@triton.jit
def _bias(b_ptr, n, N, EVEN_N: tl.constexpr):
    if EVEN_N:
        b = tl.load(b_ptr + n)
    else:
        b = tl.load(b_ptr + n, mask=n < N, other=0.0)
    return b.to(tl.float32)[None, :]


@triton.jit
def epilogue(part, xs, s_ptr, h_ptr, b_ptr, y_ptr, ws_ptr, cnt_ptr, pid_m, pid_n, pid_k, n_tiles, M, N, stride_ym,
             BM: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
             SCALE: tl.constexpr, REDUCE: tl.constexpr, EVEN_N: tl.constexpr, HAS_BIAS: tl.constexpr,
             DST: tl.constexpr, FENCE: tl.constexpr):
    """``part``: [BM, BN] fp32 partial of this CTA's K slice; ``xs``: [BM] sum of
    ``x`` over the slice (``SCALE_POST``). Writes ``y = sum + bias`` (``HAS_BIAS``:
    ``b_ptr`` [N], added in fp32 once, before the one rounding to ``DST``), once
    per tile, by the last CTA."""
    m = pid_m * BM + tl.arange(0, BM)
    n = pid_n * BN + tl.arange(0, BN)
    if SCALE == SCALE_POST:
        if EVEN_N:
            s = tl.load(s_ptr + n)
            h = tl.load(h_ptr + n)
        else:
            s = tl.load(s_ptr + n, mask=n < N, other=0.0)
            h = tl.load(h_ptr + n, mask=n < N, other=0.0)
        s = s.to(DST).to(tl.float32)  # rounded to x.dtype first, like the reference
        h = h.to(DST).to(tl.float32)
        part = part * s[None, :] + xs[:, None] * h[None, :]
    y_ptrs = y_ptr + m.to(tl.int64)[:, None] * stride_ym + n[None, :]
    if EVEN_N:
        y_mask = (m < M)[:, None]
    else:
        y_mask = (m < M)[:, None] & (n < N)[None, :]
    if SPLIT == 1:
        if HAS_BIAS:
            part = part + _bias(b_ptr, n, N, EVEN_N)
        tl.store(y_ptrs, part.to(DST), mask=y_mask)
    else:
        tile = pid_m * n_tiles + pid_n
        offs = tl.arange(0, BM)[:, None] * BN + tl.arange(0, BN)[None, :]
        if REDUCE == REDUCE_PARTIALS:  # partials [tiles, SPLIT, BM, BN], summed in a fixed order
            ws_tile = ws_ptr + tile.to(tl.int64) * (SPLIT * BM * BN)
            tl.store(ws_tile + pid_k * (BM * BN) + offs, part)
        else:  # fp32 sums [tiles, BM, BN], zero between calls
            ws_tile = ws_ptr + tile.to(tl.int64) * (BM * BN)
            tl.atomic_add(ws_tile + offs, part, sem="relaxed", scope="gpu")
        # The counter's release below is one thread's: it orders that thread's own
        # writes, and bar.sync does not wait for the other warps' stores and red.adds to
        # reach L2. So every thread fences its partial first (fence.acq_rel.gpu, the
        # __threadfence() of CUDA's threadFenceReduction sample); without it the H200 ran
        # the last CTA's sum before other slices' red.adds landed (relative error 0.4-0.6
        # for the tensor-core kernels' REDUCE_ATOMIC, bench/results/h200_sanitizer.log).
        if FENCE:
            _fence_gpu(tile)
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            if REDUCE == REDUCE_PARTIALS:  # one [BM, BN] partial at a time (registers), fixed order
                tot = tl.load(ws_tile + offs, cache_modifier=".cg")
                for p in tl.static_range(1, SPLIT):
                    tot += tl.load(ws_tile + p * (BM * BN) + offs, cache_modifier=".cg")
            else:
                tot = tl.load(ws_tile + offs, cache_modifier=".cg")
                tl.store(ws_tile + offs, tl.zeros([BM, BN], dtype=tl.float32))
            if HAS_BIAS:
                tot = tot + _bias(b_ptr, n, N, EVEN_N)
            tl.store(y_ptrs, tot.to(DST), mask=y_mask)
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed", scope="gpu")


@triton.jit
def _fence_gpu(v):
    """``fence.acq_rel.gpu`` in every thread (``v``: any scalar, a data dependency
    that keeps the asm in place; compiled kernels only: the interpreter has no asm)."""
    tl.inline_asm_elementwise("fence.acq_rel.gpu;\n mov.b32 $0, $1;", "=r,r", [v], dtype=tl.int32,
                              is_pure=False, pack=1)


@triton.jit
def xsum(x_ptr, m, stride_xm, M, k_lo, k_hi, n_it, BM: tl.constexpr, XB: tl.constexpr):
    """[BM] fp32 sums of x[m, k_lo:k_hi] in ``n_it`` steps of XB (few, independent
    loads: this runs after the main loop, on the CTA's critical path)."""
    acc = tl.zeros([BM, XB], dtype=tl.float32)
    for it in range(0, n_it):
        k = k_lo + it * XB + tl.arange(0, XB)
        acc += tl.load(x_ptr + m.to(tl.int64)[:, None] * stride_xm + k[None, :],
                       mask=(m < M)[:, None] & (k < k_hi)[None, :], other=0.0).to(tl.float32)
    return tl.sum(acc, axis=1)
