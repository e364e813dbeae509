"""Slow, exact reference implementations (plain torch, CPU or CUDA).

Everything here computes the *exact* value and rounds it once to the output
format, which is the contract of ``tl.dequantize`` (:func:`triton_dequant.language.dequantize`) and of the
PTX emulator in :mod:`triton_dequant.ptx`. Values travel as float64 tensors:
every fp16 / bf16 / fp32 number is exactly representable in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import formats


@dataclass(frozen=True)
class FloatFormat:
    name: str
    bits: int        # storage width
    precision: int   # significand bits, implicit bit included
    emin: int        # exponent of the smallest normal number
    emax: int        # exponent of the largest finite number
    torch_dtype: torch.dtype

    @property
    def max_finite(self) -> float:
        return (2.0 - 2.0 ** (1 - self.precision)) * 2.0 ** self.emax


FP16 = FloatFormat("fp16", 16, 11, -14, 15, torch.float16)
BF16 = FloatFormat("bf16", 16, 8, -126, 127, torch.bfloat16)
FP32 = FloatFormat("fp32", 32, 24, -126, 127, torch.float32)
FORMATS = {f.name: f for f in (FP16, BF16, FP32)}
_BY_TORCH = {f.torch_dtype: f for f in (FP16, BF16, FP32)}


def float_format(dtype) -> FloatFormat:
    """The :class:`FloatFormat` of a torch dtype, a name ('fp16', ...) or a format."""
    if isinstance(dtype, FloatFormat):
        return dtype
    if isinstance(dtype, str):
        return FORMATS[dtype]
    return _BY_TORCH[dtype]


def round_to(v: torch.Tensor, fmt) -> torch.Tensor:
    """Round float64 values to ``fmt`` (round-to-nearest-even, subnormals, overflow
    to inf), returned as float64. NaN and inf pass through."""
    fmt = float_format(fmt)
    v = v.to(torch.float64)
    _, e = torch.frexp(v)  # v = m * 2**e with 0.5 <= |m| < 1
    exp = torch.clamp(e - 1, min=fmt.emin)
    shift = (fmt.precision - 1) - exp  # v * 2**shift has `precision` integer bits
    r = torch.ldexp(torch.round(torch.ldexp(v, shift)), -shift)  # torch.round is half-to-even
    r = torch.where(r.abs() > fmt.max_finite, torch.copysign(torch.full_like(r, float("inf")), v), r)
    return torch.where(torch.isfinite(v), r, v)


def round_scalar(v, fmt) -> float:
    """A Python number (int or float, any magnitude) rounded once to ``fmt``, as a float.

    A float is already exact in float64; an int with more than 53 significant bits is
    first rounded to odd at 53 bits (its dropped bits become a sticky last bit), which
    makes the one rounding to ``fmt`` (<= 24 bits) correct."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected an int or float, got {type(v).__name__}")
    if isinstance(v, int):
        a, n = abs(v), abs(v).bit_length()
        if n > 53:
            top = a >> (n - 53) | (1 if a & ((1 << (n - 53)) - 1) else 0)
            try:
                v = math.copysign(math.ldexp(top, n - 53), v)
            except OverflowError:
                v = math.copysign(math.inf, v)
        v = float(v)
    return float(round_to(torch.tensor([v], dtype=torch.float64), fmt)[0])


def to_bits(v: torch.Tensor, fmt) -> torch.Tensor:
    """Bit patterns (int32 tensor holding the unsigned pattern) of values already
    representable in ``fmt``."""
    fmt = float_format(fmt)
    t = v.to(fmt.torch_dtype)  # exact: v is representable
    if fmt.bits == 16:
        return t.view(torch.int16).to(torch.int32) & 0xFFFF
    return t.view(torch.int32)


def from_bits(bits: torch.Tensor, fmt) -> torch.Tensor:
    """float64 values of bit patterns (any integer tensor; low ``fmt.bits`` used)."""
    fmt = float_format(fmt)
    b = bits.to(torch.int64) & ((1 << fmt.bits) - 1)
    if fmt.bits == 16:
        b = torch.where(b >= 1 << 15, b - (1 << 16), b)
        return b.to(torch.int16).view(fmt.torch_dtype).to(torch.float64)
    b = torch.where(b >= 1 << 31, b - (1 << 32), b)
    return b.to(torch.int32).view(torch.float32).to(torch.float64)


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, fmt) -> torch.Tensor:
    """``a*b + c`` computed exactly and rounded once to ``fmt`` (float64 result).

    ``a`` and ``b`` must have at most 26 significant bits each (true for every
    fp16/bf16/fp32 value and every nbit code), so ``a*b`` is exact in float64.
    The sum is made exact-then-round-once with round-to-odd: TwoSum gives the
    float64 sum and its exact error; forcing the last bit odd when the sum was
    inexact makes the final rounding to any format of <= 51 bits correct.
    """
    a, b, c = (t.to(torch.float64) for t in (a, b, c))
    p = a * b
    s = p + c
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    even = (s.view(torch.int64) & 1) == 0
    fix = (err != 0) & even & torch.isfinite(s)
    toward = torch.where(err > 0, float("inf"), float("-inf")).to(s.dtype)
    s = torch.where(fix, torch.nextafter(s, toward), s)
    return round_to(s, fmt)


# --- codes -------------------------------------------------------------------

_INT_BITS = {**formats.CONTAINER_BITS, torch.int64: 64}  # int64: wide words in tests


def unpack_codes(x: torch.Tensor, nbit: int, *, axis: int = -1, signed: bool = False,
                 width: int | None = None) -> torch.Tensor:
    """Codes of a packed integer tensor as int64.

    Each element of ``x`` (``width`` bits, default its dtype's) holds
    ``PER = width // nbit`` codes, code ``j`` at bits ``[j*nbit, (j+1)*nbit)``.
    Returns ``x.shape`` with ``axis`` multiplied by ``PER``; output index along
    ``axis`` is ``i*PER + j``. ``signed`` reads two's complement nbit codes.
    """
    width = width or _INT_BITS[x.dtype]
    per = width // nbit
    axis = axis % x.dim()
    u = x.to(torch.int64) & ((1 << width) - 1)
    shifts = torch.arange(per, dtype=torch.int64, device=x.device) * nbit
    q = (u.unsqueeze(-1) >> shifts) & ((1 << nbit) - 1)  # [..., PER]
    if signed:
        q = q - ((q >> (nbit - 1)) << nbit)
    q = q.movedim(-1, axis + 1)  # [..., n, PER, ...]
    shape = list(x.shape)
    shape[axis] *= per
    return q.reshape(shape)


def dequantize(x: torch.Tensor, scale, shift, nbit: int, dtype=torch.float16, *,
               axis: int = -1, signed: bool = False) -> torch.Tensor:
    """Exact reference of ``tl.dequantize``: ``scale*q + shift`` rounded once.

    ``scale`` and ``shift`` (numbers or tensors broadcastable to the output) are
    first rounded to ``dtype`` (as the kernels do), then the fused multiply-add is
    evaluated exactly and rounded once. Returns a tensor of ``dtype``.
    """
    fmt = float_format(dtype)
    q = unpack_codes(x, nbit, axis=axis, signed=signed).to(torch.float64)
    s, h = (round_to(v.to(device=q.device, dtype=torch.float64), fmt) if isinstance(v, torch.Tensor)
            else torch.tensor(round_scalar(v, fmt), dtype=torch.float64, device=q.device) for v in (scale, shift))
    out = fma(q, s, h, fmt)
    return out.to(fmt.torch_dtype)


# --- whole-tensor references of the host ops (triton_dequant.ops) -------------------

def split_rows(rows: torch.Tensor):
    """Row-fused layout ``[scale fp16, shift fp16, data...]`` -> (data, scale, shift).

    int32 rows: word 0 holds scale in its low 16 bits and shift in its high 16 bits;
    int16 rows: elements 0 and 1; uint8/int8 rows: bytes 0-1 and 2-3 (little endian)."""
    n = formats.header_elems(formats.CONTAINER_BITS[rows.dtype])
    head = rows[:, :n].contiguous().view(torch.uint8).reshape(rows.shape[0], formats.ROW_HEADER_BYTES)
    scale = head[:, slice(*formats.SCALE_BYTES)].contiguous().view(torch.float16)[:, 0]
    shift = head[:, slice(*formats.SHIFT_BYTES)].contiguous().view(torch.float16)[:, 0]
    return rows[:, n:], scale, shift


def dequantize_rows(rows: torch.Tensor, nbit: int, dtype=torch.float16, *, n_codes: int | None = None,
                    signed: bool = False) -> torch.Tensor:
    """Exact reference of :func:`triton_dequant.dequantize_rows`: ``[R, n_codes]`` of ``dtype``."""
    data, scale, shift = split_rows(rows)
    out = dequantize(data, scale[:, None], shift[:, None], nbit, dtype, axis=-1, signed=signed)
    return out if n_codes is None else out[:, :n_codes]


def embedding_bag(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, nbit: int, *,
                  mode: str = "sum", per_sample_weights: torch.Tensor | None = None,
                  n_codes: int | None = None, dtype=torch.float32, include_last_offset: bool = False,
                  signed: bool = False) -> torch.Tensor:
    """Reference n-bit embedding bag over a row-fused table: each looked-up row is
    dequantized to fp16 exactly (as the kernels do), weighted and summed in float64,
    divided by the bag size for ``mode="mean"``, rounded once to ``dtype``."""
    table = dequantize_rows(rows, nbit, torch.float16, n_codes=n_codes, signed=signed).to(torch.float64)
    offs = offsets.tolist()
    if not include_last_offset:
        offs = offs + [indices.numel()]
    out = torch.zeros(len(offs) - 1, table.shape[1], dtype=torch.float64)
    w = None if per_sample_weights is None else per_sample_weights.to(torch.float64)
    for b in range(len(offs) - 1):
        lo, hi = offs[b], offs[b + 1]
        if hi <= lo:
            continue
        v = table[indices[lo:hi].long()]
        if w is not None:
            v = v * w[lo:hi, None]
        out[b] = v.sum(0) / (hi - lo) if mode == "mean" else v.sum(0)
    return out.to(dtype)


def linear_weight(qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int, *,
                  dtype=torch.float16, group_size: int | None = None, packed_dim: int = 0,
                  signed: bool = False) -> torch.Tensor:
    """The dequantized weight ``W[k, n] = scale[k // group_size, n] * q[k, n] + shift[...]``
    (one rounding to ``dtype``), ``[K, N]``. ``qweight`` packs codes along K
    (``packed_dim=0``: ``[K / PER, N]``) or along N (``packed_dim=1``: ``[K, N / PER]``);
    ``scale``/``shift`` are ``[N]`` (per channel) or ``[K / group_size, N]``."""
    q = unpack_codes(qweight, nbit, axis=packed_dim, signed=signed).to(torch.float64)
    K = q.shape[0]
    s, h = (t.reshape(-1, t.shape[-1]) for t in (scale, shift))
    if s.shape[0] > 1:
        g = group_size or K // s.shape[0]
        s, h = s.repeat_interleave(g, 0)[:K], h.repeat_interleave(g, 0)[:K]
    fmt = float_format(dtype)
    out = fma(q, round_to(s.to(torch.float64), fmt), round_to(h.to(torch.float64), fmt), fmt)
    return out.to(dtype)


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int, *,
           group_size: int | None = None, packed_dim: int = 0, signed: bool = False) -> torch.Tensor:
    """``x @ W`` with ``W`` from :func:`linear_weight`, accumulated in float64 and
    rounded to ``x.dtype``; ``x`` is ``[..., K]``."""
    w = linear_weight(qweight.cpu(), scale.cpu(), shift.cpu(), nbit, dtype=x.dtype, group_size=group_size,
                      packed_dim=packed_dim, signed=signed)
    y = x.cpu().to(torch.float64) @ w.to(torch.float64)
    return y.to(x.dtype).to(x.device)
