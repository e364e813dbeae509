"""CPU paths of the host ops (:mod:`triton_dequant.ops`): exact, and fast enough to
develop with.

The references in :mod:`triton_dequant.reference` evaluate every output in float64
with a round-to-odd TwoSum (a dozen passes over float64 tensors): exact but
seconds per call at model sizes. Here the same values come from plain torch
arithmetic in a *working precision* (fp32, else float64) that is proven exact
for the given scale/shift before it is used, then one rounding:

* ``scale * q + shift`` with ``|q| < 2**nbit`` only ever has bits between the
  lowest set bit of ``scale``/``shift`` and one above the highest bit of
  ``scale * 2**nbit`` / ``shift`` (:func:`exact_in`). When that span fits the
  working precision's significand (and cannot overflow), the product and the sum
  are exact, whatever the evaluation order or fusion, so converting the result
  to the output type is the only rounding: bit-identical to the reference.
  The check runs on the scale/shift tensors (one value per group), not per output.
* Where neither fp32 nor float64 is exact for some group (a shift many binades
  below the scale's products), the whole call falls back to
  :func:`triton_dequant.reference.fma`, correct and slow.
* Non-finite scale/shift (inf, NaN) follow IEEE arithmetic, which is exact too.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from . import formats as fmt
from . import reference as ref

# working precisions: (torch dtype, significand bits, exponent of the largest finite binade)
_WORK = ((torch.float32, 24, 127), (torch.float64, 53, 1023))
# weights per block of :func:`linear`: a block (fp32) stays in the cache between its
# dequantization and its matmul
_BLOCK_ELEMS = 1 << 17  # 512 KiB of fp32: this machine's L2 (bench/cpu.py)
# outputs per chunk of :func:`dequantize` / :func:`dequantize_rows`: the temporaries
# (codes, working values) stay a few MiB whatever the output size
_CHUNK = 1 << 18
_WIDTH = fmt.CONTAINER_BITS


def _bit_range(v: torch.Tensor):
    """Exponents of the highest and lowest set bit of each finite nonzero value of
    ``v`` (float64 tensor); zeros and non-finite values give (-big, +big)."""
    big = 1 << 20
    m, e = torch.frexp(v)  # v = m * 2**e, 0.5 <= |m| < 1
    sig = torch.ldexp(m.abs(), torch.full_like(e, 53)).to(torch.int64)  # 53-bit integer significand
    low = sig & -sig
    _, le = torch.frexp(low.to(torch.float64))  # low = 2**(le - 1)
    live = torch.isfinite(v) & (v != 0)
    hi = torch.where(live, e - 1, -big)
    lo = torch.where(live, e - 54 + le, big)
    return hi, lo


def exact_in(scale: torch.Tensor, shift: torch.Tensor, nbit: int, precision: int, emax: int) -> bool:
    """True if ``scale * q + shift`` is exact in a binary format of ``precision``
    significand bits and largest binade ``emax`` for every integer ``|q| < 2**nbit``
    and every (broadcast) pair of values of ``scale``/``shift`` (float tensors whose
    lowest bits lie above the format's subnormal range, as fp16/bf16/fp32 values do
    for fp32 and float64)."""
    hs, ls = _bit_range(scale.to(torch.float64))
    hh, lh = _bit_range(shift.to(torch.float64))
    hi = torch.maximum(hs + nbit, hh) + 1  # |q*s + h| < 2**(hi + 1): one carry
    lo = torch.minimum(ls, lh)
    zero = lo > hi  # both zero or non-finite: nothing to round
    return bool(((hi - lo + 1 <= precision) & (hi <= emax) | zero).all())


_SIG_BITS = {torch.float16: 11, torch.bfloat16: 8, torch.float32: 24}


def _fp32_exact_narrow(s: torch.Tensor, h: torch.Tensor, nbit: int, bits: int) -> bool:
    """A cheap sufficient condition for :func:`exact_in` at fp32 when ``s`` and ``h``
    hold values of at most ``bits <= 11`` significant bits (fp16/bf16 values): their
    magnitudes (with ``2**nbit`` for the codes) within ``2**(23 - bits)`` of each other
    put every bit of ``s*q + h`` within 24 consecutive positions. Zeros and IEEE
    specials are exact anyway; overflow needs |values| < 2**(127 - 23 + bits - nbit)."""
    r = float(1 << (23 - bits))
    a, b = s.float().abs(), h.float().abs()
    ab = a * b  # 0 or not finite: a zero or special operand
    near = (b <= a * r) & (a * float(1 << nbit) <= b * r) & (a < 2.0 ** 100) & (b < 2.0 ** 100)
    return bool((near | (ab == 0) | ~torch.isfinite(ab)).all())


def _bits(scale: torch.Tensor, shift: torch.Tensor, dtype: torch.dtype) -> int:
    """Significant bits of scale/shift once rounded to ``dtype``."""
    return min(_SIG_BITS[scale.dtype], _SIG_BITS[shift.dtype], _SIG_BITS[dtype])


def _work_dtype(scale: torch.Tensor, shift: torch.Tensor, nbit: int, bits: int | None = None):
    """The cheapest exact working precision (None: neither fp32 nor float64);
    ``bits``: significant bits of the values if known to be at most 11."""
    if bits is not None and bits <= 11 and _fp32_exact_narrow(scale, shift, nbit, bits):
        return torch.float32
    for dtype, precision, emax in _WORK:
        if exact_in(scale, shift, nbit, precision, emax):
            return dtype
    return None


def _codes(x: torch.Tensor, nbit: int, axis: int, signed: bool, dtype) -> torch.Tensor:
    """Codes of container tensor ``x`` unpacked along ``axis``, as ``dtype`` (exact;
    None: integer codes, int32 or (last axis) uint8/int8, which torch's arithmetic
    promotes exactly)."""
    width = _WIDTH[x.dtype]
    per = width // nbit
    shape = list(x.shape)
    shape[axis] *= per
    if axis == x.dim() - 1 and x.stride(-1) == 1:  # little endian: the codes are the bytes' bit stream
        q = _byte_codes(x.view(torch.uint8), nbit, signed).reshape(shape)
    else:
        x = x.view(fmt.SIGNED_TWIN[x.dtype])
        if x.dtype != torch.int32:
            x = x.to(torch.int32)
        shifts = torch.arange(0, width, nbit, dtype=torch.int32)
        q = x.unsqueeze(axis + 1) >> shifts.view([per] + [1] * (x.dim() - axis - 1))  # [..., n, PER, ...]
        q &= (1 << nbit) - 1
        if signed:  # two's complement: (c ^ bias) - bias
            bias = 1 << (nbit - 1)
            q ^= bias
            q -= bias
        q = q.reshape(shape)
    return q if dtype is None else q.to(dtype)


def _byte_codes(b: torch.Tensor, nbit: int, signed: bool) -> torch.Tensor:
    """``[..., bytes]`` uint8 -> ``[..., bytes, 8 // nbit]`` codes (uint8, int8 if signed)."""
    if nbit == 8:
        return (b.view(torch.int8) if signed else b).unsqueeze(-1)
    per = 8 // nbit
    if signed:  # the field to the top bits, then an arithmetic shift sign-extends it
        b = b.view(torch.int8)
    out = torch.empty(*b.shape, per, dtype=b.dtype)
    for j in range(per):
        if signed:
            up = 8 - nbit - j * nbit
            out[..., j] = (b << up if up else b) >> (8 - nbit)
        else:
            v = b >> (j * nbit) if j else b
            out[..., j] = v if j == per - 1 else v & ((1 << nbit) - 1)
    return out


def round_from_f64(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 values rounded once (RNE) to ``dtype``. torch's float64 -> fp16/bf16 casts
    round twice (through fp32): rounding to odd at fp32 first makes the second rounding
    exact (24 >= 11 + 2 bits)."""
    if dtype == torch.float32 or dtype == torch.float64:
        return w.to(dtype)
    r = w.to(torch.float32)
    # one ulp toward the exact value where r is inexact and even (round to odd): the
    # direction is sign((w - r) * r); NaN (inf - inf, NaN inputs) means nothing to fix
    step = torch.nan_to_num(torch.sign((w - r.to(torch.float64)) * r), nan=0.0).to(torch.int32)
    bits = r.view(torch.int32)
    bits = bits + step * (1 - (bits & 1))
    return bits.view(torch.float32).to(dtype)


def _affine(q: torch.Tensor, s: torch.Tensor, h: torch.Tensor, work, dtype: torch.dtype,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """``s * q + h`` rounded once to ``dtype`` (into ``out`` if given); ``q`` holds codes
    in ``work`` (float64 when ``work`` is None: the exact fallback)."""
    if work is None:
        w = ref.fma(q, s, h, ref.float_format(dtype))
    else:
        # exact (see exact_in); contiguous scale/shift rows keep addcmul on its vectorized path
        w = torch.addcmul(h.to(work).contiguous(), q, s.to(work).contiguous())
        if work == torch.float64 and dtype != torch.float32:
            w = round_from_f64(w, dtype)
    if out is not None:
        return out.copy_(w)  # exact (fp32 / float64 values already rounded) or one RNE cast
    return w if w.dtype == dtype else w.to(dtype)


def linear_weight(qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int, *,
                  dtype: torch.dtype, group_size: int, packed_dim: int, signed: bool,
                  k0: int = 0, k1: int | None = None, n0: int = 0, n1: int | None = None,
                  work="auto") -> torch.Tensor:
    """Block ``[k0:k1, n0:n1]`` of the dequantized weight ``[K, N]``, bit for bit
    :func:`triton_dequant.reference.linear_weight`: scale/shift rounded to ``dtype``,
    then ``scale * q + shift`` rounded once to ``dtype``. Block bounds along the packed
    dim must be multiples of ``PER``, ``k0``/``k1`` multiples of ``group_size`` (per-group
    scale). ``work``: the working precision (default: the cheapest exact one)."""
    per = _WIDTH[qweight.dtype] // nbit
    pk, pn = (per, 1) if packed_dim == 0 else (1, per)
    k1 = qweight.shape[0] * pk if k1 is None else k1
    n1 = qweight.shape[1] * pn if n1 is None else n1
    s = scale.to(dtype)  # one RNE: every cast among fp16, bf16, fp32 is correctly rounded
    h = shift.to(dtype)
    if work == "auto":
        work = _work_dtype(s, h, nbit, _bits(scale, shift, dtype))
    # integer codes: addcmul converts them exactly on the fly (no separate float pass)
    q = _codes(qweight[k0 // pk:k1 // pk, n0 // pn:n1 // pn], nbit, packed_dim, signed, None if work else torch.float64)
    if s.dim() == 1 or s.shape[0] == 1:
        s, h = s.reshape(1, -1)[:, n0:n1], h.reshape(1, -1)[:, n0:n1]
        return _affine(q, s, h, work, dtype)
    g0, g1 = k0 // group_size, k1 // group_size
    w = _affine(q.view(g1 - g0, group_size, n1 - n0), s[g0:g1, None, n0:n1], h[g0:g1, None, n0:n1], work, dtype)
    return w.view(k1 - k0, n1 - n0)


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
           group_size: int, packed_dim: int, signed: bool, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W`` on the CPU (arguments checked by :func:`triton_dequant.ops.linear`).

    W is dequantized exactly (:func:`linear_weight`, rounded once to ``x.dtype``) in
    blocks of about ``_BLOCK_ELEMS`` weights, each multiplied right away by torch's
    matmul (``addmm`` into an fp32 accumulator) while it is still in cache. fp16/bf16
    ``x`` are computed in fp32 (x and W widen exactly), the result rounded once to
    ``x.dtype``. ``bias`` ([N], optional) starts the fp32 accumulator."""
    per = _WIDTH[qweight.dtype] // nbit
    pk, pn = (per, 1) if packed_dim == 0 else (1, per)
    K, N = qweight.shape[0] * pk, qweight.shape[1] * pn
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.dtype != torch.float32:
        x2 = x2.float()
    y = torch.zeros((x2.shape[0], N), dtype=torch.float32)
    if bias is not None:
        y += bias.float()
    if y.numel() and K:
        dtype = x.dtype
        s, h = scale.to(dtype), shift.to(dtype)
        work = _work_dtype(s, h, nbit, _bits(scale, shift, dtype))
        gk = group_size if s.dim() == 2 and s.shape[0] > 1 else pk  # block steps along K and N
        kb = max(gk, 128 // gk * gk) if gk < 128 else gk
        nb = max(pn, _BLOCK_ELEMS // kb // pn * pn)
        for k0 in range(0, K, kb):
            k1 = min(K, k0 + kb)
            for n0 in range(0, N, nb):
                n1 = min(N, n0 + nb)
                w = linear_weight(qweight, s, h, nbit, dtype=dtype, group_size=group_size, packed_dim=packed_dim,
                                  signed=signed, k0=k0, k1=k1, n0=n0, n1=n1, work=work)
                y[:, n0:n1].addmm_(x2[:, k0:k1], w if w.dtype == torch.float32 else w.float())
    y = y if x.dtype == torch.float32 else y.to(x.dtype)
    return y.reshape(*lead, N)


# --- dequantize, dequantize_rows -------------------------------------------------------------

def _chunks(shape: list, per: int, dim: int):
    """Index tuples cutting a packed tensor of ``shape`` (unpacked along ``dim``) into
    pieces of at most about ``_CHUNK`` outputs: size-1 slices along the leading axes,
    a range along axis ``a``, whole trailing axes."""
    nd = len(shape)
    out = [n * (per if d == dim else 1) for d, n in enumerate(shape)]
    for a in range(nd):
        per_index = (per if a == dim else 1) * math.prod(out[a + 1:])
        if per_index <= _CHUNK or a == nd - 1:
            break
    step = max(1, _CHUNK // per_index)
    for lead in itertools.product(*(range(n) for n in shape[:a])):
        for j in range(0, shape[a], step):
            yield tuple(slice(i, i + 1) for i in lead) + (slice(j, min(shape[a], j + step)),)


def _out_index(idx: tuple, per: int, dim: int) -> tuple:
    return tuple(slice(sl.start * per, sl.stop * per) if d == dim else sl for d, sl in enumerate(idx))


def _bcast_index(t: torch.Tensor, idx: tuple) -> torch.Tensor:
    """The part of ``t`` (broadcastable, already of the output's rank) under output index ``idx``."""
    return t[tuple(sl if t.shape[d] != 1 else slice(None) for d, sl in enumerate(idx))]


def dequantize(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int, dtype: torch.dtype,
               dim: int, signed: bool) -> torch.Tensor:
    """:func:`triton_dequant.ops.dequantize` on the CPU, bit for bit the reference, in
    chunks: besides the output, a few MiB of temporaries."""
    width = _WIDTH[packed.dtype]
    per = width // nbit
    shape = list(packed.shape)
    out_shape = list(shape)
    out_shape[dim] *= per
    out = torch.empty(out_shape, dtype=dtype)
    if out.numel() == 0:
        return out
    nd = len(shape)
    bits = _bits(scale, shift, dtype)
    s = scale.to(dtype).reshape([1] * (nd - scale.dim()) + list(scale.shape))
    h = shift.to(dtype).reshape([1] * (nd - shift.dim()) + list(shift.shape))
    work0 = _work_dtype(s, h, nbit, bits) if s.numel() * h.numel() <= _CHUNK else "chunk"
    for idx in _chunks(shape, per, dim):
        oidx = _out_index(idx, per, dim)
        sc, hc = _bcast_index(s, oidx), _bcast_index(h, oidx)
        work = _work_dtype(sc, hc, nbit, bits) if work0 == "chunk" else work0
        q = _codes(packed[idx], nbit, dim, signed, work or torch.float64)
        _affine(q, sc, hc, work, dtype, out=out[oidx])
    return out


def dequantize_rows(rows: torch.Tensor, nbit: int, dtype: torch.dtype, n_codes: int, signed: bool) -> torch.Tensor:
    """:func:`triton_dequant.ops.dequantize_rows` on the CPU (bit for bit the reference), in chunks of rows."""
    width = _WIDTH[rows.dtype]
    per = width // nbit
    head = fmt.header_elems(width)
    R = rows.shape[0]
    out = torch.empty((R, n_codes), dtype=dtype)
    if out.numel() == 0:
        return out
    used = -(-n_codes // per)
    step = max(1, _CHUNK // n_codes)
    for r0 in range(0, R, step):
        part = rows[r0:r0 + step]
        _, s, h = ref.split_rows(part)
        s, h = s.to(dtype)[:, None], h.to(dtype)[:, None]
        work = _work_dtype(s, h, nbit, min(11, _SIG_BITS[dtype]))
        q = _codes(part[:, head:head + used], nbit, 1, signed, work or torch.float64)[:, :n_codes]
        _affine(q, s, h, work, dtype, out=out[r0:r0 + step])
    return out


def _header(rows: torch.Tensor):
    """fp16 scale and shift ``[R]`` of row-fused ``rows`` (contiguous rows: a view)."""
    n = fmt.header_elems(_WIDTH[rows.dtype])
    head = rows[:, :n]
    try:
        head = head.view(torch.float16)  # [R, 2]: scale, shift (little endian)
    except RuntimeError:
        head = head.contiguous().view(torch.float16)
    return head[:, 0], head[:, 1]


def embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype, include_last_offset,
                  signed) -> torch.Tensor:
    """:func:`triton_dequant.ops.embedding_bag` on the CPU (offsets already validated):
    only the rows looked up are dequantized to fp16, exactly (in fp32 where that is
    exact for their scale/shift, else in float64, where it always is for fp16 scale and
    shift), then ``F.embedding_bag`` sums them in fp32 like the CUDA kernel, rounded once
    to ``dtype``."""
    n_bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    if n_bags <= 0 or n_codes == 0:
        return torch.zeros((max(n_bags, 0), n_codes), dtype=dtype)
    width = _WIDTH[rows.dtype]
    per = width // nbit
    head = fmt.header_elems(width)
    sub = rows[indices]  # [n, E]: the looked-up rows, in lookup order
    s, h = _header(sub)
    q = _codes(sub[:, head:head - (-n_codes // per)], nbit, 1, signed, None)[:, :n_codes]  # int32
    if _fp32_exact_narrow(s, h, nbit, 11):
        table = torch.addcmul(h.float()[:, None], q, s.float()[:, None]).half()  # exact, then one rounding
    else:
        table = round_from_f64(torch.addcmul(h.double()[:, None], q, s.double()[:, None]), torch.float16)
    w = None if per_sample_weights is None else per_sample_weights.float()
    out = F.embedding_bag(torch.arange(indices.numel()), table.float(), offsets.long(), mode=mode,
                          per_sample_weights=w, include_last_offset=include_last_offset)
    return out.to(dtype)
