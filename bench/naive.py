"""Like-for-like "naive Triton" baselines for the fused kernels.

:func:`unpack` has the signature of ``triton_dequant.kernels.linear._common.unpack``
and is passed to the same kernels (``kernels.linear.linear(..., unpack=unpack)``),
so the baseline keeps the shipped tiling, grid and epilogue and differs only in
the unpack step: shift/mask plus an int-to-float conversion per code instead of
``tl.dequantize``'s bit tricks.
"""
import os

import triton
import triton.language as tl

# Triton 3.6's interpreter gets int -> bf16 casts and bf16 arithmetic wrong: there
# (only) the bf16 baseline computes in fp32 and rounds once
_VIA_F32 = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


@triton.jit
def unpack(w, s, h, NBIT: tl.constexpr, PER: tl.constexpr, DST: tl.constexpr, SIGNED: tl.constexpr,
           AFFINE: tl.constexpr):
    """Codes of ``w`` along axis 1 ([R, 1, C] -> [R, PER, C], or [R, C] -> [R, C * PER])."""
    u = w.to(tl.int32)
    sh = tl.arange(0, PER) * NBIT
    if len(w.shape) == 3:
        c = (u >> sh[None, :, None]) & ((1 << NBIT) - 1)  # [R, PER, C]
    else:
        c = (u[:, :, None] >> sh[None, None, :]) & ((1 << NBIT) - 1)
        c = tl.reshape(c, [w.shape[0], w.shape[1] * PER])
    if SIGNED:
        c = (c ^ (1 << (NBIT - 1))) - (1 << (NBIT - 1))
    if DST == tl.bfloat16 and _VIA_F32:
        q = c.to(tl.float32)
        if AFFINE:
            q = q * s.to(DST).to(tl.float32) + h.to(DST).to(tl.float32)
        return q.to(DST)
    q = c.to(DST)
    if AFFINE:
        q = q * s.to(DST) + h.to(DST)
    return q
