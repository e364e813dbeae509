"""Host-side packing: the producer side of ``tl.dequantize``.

Plain torch (CPU or CUDA). Bit order, used everywhere in the project:

* **padded** (default): a container element of ``W`` bits holds
  ``PER = W // nbit`` codes, code ``j`` of the element at bits
  ``[j*nbit, (j+1)*nbit)`` (least significant first), the ``W % nbit`` high bits
  zero. Along the packed dim, element ``i`` holds codes ``i*PER .. i*PER+PER-1``.
* **dense** (``dense=True``): no wasted bits. Code ``i`` sits at bits
  ``[i*nbit, (i+1)*nbit)`` of the LSB-first bit stream along the packed dim,
  cut into ``W``-bit elements (element ``k`` holds stream bits ``[k*W, (k+1)*W)``).
  In ``uint8`` that is the little-endian byte stream (8 x uint3 -> 3 bytes); in a
  wider container on a little-endian machine it is the same bytes viewed as
  wider words (GPTQ's 3-bit layout is dense ``int32``).

For containers wider than 8 bits on a little-endian machine, padded packing
with ``nbit`` dividing ``W`` also equals the LSB-first bit stream of the bytes.

Containers: ``uint8, int8, int16, uint16, int32, uint32`` (:mod:`triton_dequant.formats`).
``uint64``/``int64`` containers are not supported.

Implementation: shifted slices ORed together. Padded packing ORs ``codes[..., j::PER]
<< j*nbit`` for the ``PER`` code positions; dense packing ORs each code's part into the
one or two words it overlaps (``W + nbit - 1`` slices per group of ``W`` codes);
unpacking writes ``(words >> shift) & mask`` into strided slices of the output. All
arithmetic runs in the container's own width (``uint8``, ``int16``, ``int32``: torch
(2.13, CPU) has no shifts for ``uint16``/``uint32``, so those are bit-cast to their
signed twins), with no intermediate wider than the container, so each call moves
about the bytes of its input plus its output; a ragged tail is zero-padded first (a
copy of the codes). No data-dependent control flow: ``torch.compile(pack,
fullgraph=True)`` and ``torch.compile(unpack, fullgraph=True)`` each lower to one
fused kernel with inductor's CPU backend (tested), also with ``dynamic=True`` (the
bit width is specialized: one graph per width).

Range check (``pack(check=True)``): eagerly, one ``aminmax`` reduction and one
host sync, raising ``ValueError``; under ``torch.compile`` a
``torch._assert_async`` instead (no graph break; inductor fuses it into the
packing kernel on the CPU), which fails with ``RuntimeError`` on the CPU and a
device-side assert on CUDA (that kills the CUDA context): pass ``check=False`` to
compiled code fed with trusted codes.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import formats as fmt

__all__ = ["pack", "unpack", "bitpack", "bitunpack", "quantize", "pack_rows", "unpack_rows"]

# arithmetic dtype per container width (uint8 for both 8-bit containers: shifts never
# see a sign; the signed twins for 16/32 bits, where torch lacks unsigned shifts)
_WORK = {8: torch.uint8, 16: torch.int16, 32: torch.int32}
_SCALE_DTYPES = fmt.OUT_DTYPES


# --- argument checks --------------------------------------------------------------------

def _nbit(nbit) -> int:
    return fmt.check_nbit(nbit, fmt.PACK_NBITS)


def _code_range(nbit: int, signed: bool) -> Tuple[int, int]:
    return (-(1 << (nbit - 1)), (1 << (nbit - 1)) - 1) if signed else (0, (1 << nbit) - 1)


def _reinterpret(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bytes of the last dim of ``t`` viewed as ``dtype`` (copied first when
    ``Tensor.view(dtype)`` would reject the strides or storage offset)."""
    try:
        return t.view(dtype)
    except RuntimeError:
        return t.clone(memory_format=torch.contiguous_format).view(dtype)


def _check_range(codes: torch.Tensor, nbit: int, signed: bool) -> None:
    """Raise ``ValueError`` if a code is outside the nbit range (one reduction, one sync).

    Under ``torch.compile`` the check is a ``torch._assert_async`` instead (no
    graph break; inductor fuses it; it fails with ``RuntimeError`` on the CPU and
    a device-side assert on CUDA)."""
    lo, hi = _code_range(nbit, signed)
    if codes.dtype == torch.bool:
        codes = codes.to(torch.uint8)
    if torch.compiler.is_compiling():
        v = codes.to(torch.int64)
        ok = (v >= lo) & (v <= hi)
        if codes.dtype == torch.uint64:
            ok = ok & (v >= 0)
        torch._assert_async(ok.all(), f"`codes` values must be in [{lo}, {hi}] for nbit={nbit}")
        return
    if codes.numel() == 0:
        return
    if codes.dtype in (torch.uint16, torch.uint32, torch.uint64):  # no min/max kernels for these
        codes = codes.to(torch.int64)  # uint64 >= 2**63 wraps negative: still reported as bad
    mn, mx = torch.aminmax(codes)
    mn, mx = torch.stack([mn, mx]).tolist()
    if mn < lo or mx > hi:
        raise ValueError(f"`codes` values must be in [{lo}, {hi}] for nbit={nbit}"
                         f"{' signed' if signed else ''}, got values in [{mn}, {mx}]")


def _check_codes(codes) -> torch.Tensor:
    fmt.check_tensor(codes, "codes")
    if codes.dtype != torch.bool and (codes.is_floating_point() or codes.is_complex()):
        raise TypeError(f"`codes` must be an integer or bool tensor, got {codes.dtype}")
    return codes


def _check_out_dtype(dtype, nbit: int, signed: bool) -> torch.dtype:
    """An integer dtype holding every ``nbit`` code (no silent wrap-around)."""
    if not isinstance(dtype, torch.dtype) or dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"`dtype` must be an integer torch.dtype, got {dtype}")
    lo, hi = _code_range(nbit, signed)
    info = torch.iinfo(dtype)
    if lo < info.min or hi > info.max:
        raise ValueError(f"`dtype` {dtype} cannot hold the {nbit}-bit{' signed' if signed else ''} codes "
                         f"[{lo}, {hi}] (values would wrap); use a wider dtype")
    return dtype


# --- pack / unpack ------------------------------------------------------------------------

def pack(codes: torch.Tensor, nbit: int, *, dim: int = -1, container: torch.dtype = torch.int32,
         dense: bool = False, check: bool = True, signed: bool = False) -> torch.Tensor:
    """Pack ``nbit``-bit codes along ``dim`` into ``container`` elements.

    ``codes``: any integer dtype or bool, values in ``[0, 2**nbit)``, or with
    ``signed=True`` in ``[-2**(nbit-1), 2**(nbit-1))`` (stored as nbit-bit two's
    complement). ``check=False`` skips the range check (out-of-range codes are
    then truncated to their low ``nbit`` bits).

    Returns a contiguous ``container`` tensor, ``codes.shape`` with ``dim`` of
    length ``n`` replaced by ``ceil(n / PER)`` (padded, ``PER = W // nbit``) or
    ``ceil(n / W) * nbit`` (dense: groups of ``W`` codes fill ``nbit`` elements).
    Missing codes of the last element/group are zero, as are the padded mode's
    ``W % nbit`` high bits. See the module docstring for the bit order.
    """
    codes = _check_codes(codes)
    nbit = _nbit(nbit)
    W = fmt.check_container_dtype(container)
    d = fmt.check_dim(dim, codes.dim(), what="`codes` tensor")
    fmt.check_bool(dense, "dense")
    fmt.check_bool(signed, "signed")
    if fmt.check_bool(check, "check"):
        _check_range(codes, nbit, signed)
    # the low nbit bits only: needed for negative (signed) and unchecked codes, and
    # wherever codes of another dtype could carry bits above nbit
    masked = signed or not check
    x = codes.movedim(d, -1)
    out = _pack_dense(x, nbit, W, masked) if dense else _pack_padded(x, nbit, W, masked)
    if out.dtype != container:
        out = out.view(container)
    return out.movedim(-1, d).contiguous()


def _slices(x: torch.Tensor, n_pad: int):
    """``x`` zero-padded along the last dim to ``n_pad`` (a copy only if needed)."""
    n = x.shape[-1]
    if n_pad == n:
        return x
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    return F.pad(x, (0, n_pad - n))


def _as_work(c: torch.Tensor, work: torch.dtype, mask: int, masked: bool) -> torch.Tensor:
    """Codes of one slice in the container's arithmetic dtype, low bits kept if ``masked``
    (``to`` wraps modulo 2**W, which keeps the low bits of any integer)."""
    t = c.to(work)
    return t & mask if masked else t


def _pack_padded(x: torch.Tensor, nbit: int, W: int, masked: bool) -> torch.Tensor:
    work, per, mask = _WORK[W], W // nbit, (1 << nbit) - 1
    m = -(-x.shape[-1] // per)
    x = _slices(x, m * per)
    out = x[..., 0::per].to(work, copy=True)  # a copy: never an alias of `codes`
    if masked:
        out &= mask
    for j in range(1, per):
        out |= _as_work(x[..., j::per], work, mask, masked) << (j * nbit)  # disjoint fields
    return out


def _pack_dense(x: torch.Tensor, nbit: int, W: int, masked: bool) -> torch.Tensor:
    """Groups of ``W`` codes -> ``nbit`` words: word ``k`` ORs every code overlapping it,
    shifted into place (a code crosses at most one word boundary)."""
    work, mask = _WORK[W], (1 << nbit) - 1
    m = -(-x.shape[-1] // W)
    x = _slices(x, m * W)
    words = [None] * nbit
    for j in range(W):
        t = _as_work(x[..., j::W], work, mask, masked)
        bit = j * nbit
        k, off = divmod(bit, W)
        parts = [(k, t << off if off else t)]
        if off + nbit > W:  # the code's high bits start word k + 1
            parts.append((k + 1, t >> (W - off)))
        for kk, part in parts:
            words[kk] = part if words[kk] is None else words[kk] | part
    out = torch.empty(*x.shape[:-1], m, nbit, dtype=work, device=x.device)
    for k in range(nbit):  # strided writes: one fused kernel under torch.compile (a stack is not)
        out[..., k] = words[k]
    return out.reshape(*x.shape[:-1], m * nbit)


def unpack(packed: torch.Tensor, nbit: int, *, dim: int = -1, container: Optional[torch.dtype] = None,
           dense: bool = False, n: Optional[int] = None, signed: bool = False,
           dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Inverse of :func:`pack`: the codes of ``packed`` along ``dim``.

    ``container``: how to read the elements; default ``packed.dtype``. A
    different container of the same width reinterprets the bits (e.g. int32 data
    read as uint32). ``n``: number of codes to keep along ``dim`` (default: all,
    padding included). ``signed=True`` sign-extends nbit two's complement codes.
    Returns ``dtype`` (default ``uint8``, or ``int8`` when signed; a dtype that cannot
    hold every code, e.g. int8 for unsigned 8-bit codes, raises), ``packed.shape``
    with ``dim`` multiplied by ``PER`` (dense: by ``W / nbit``) or set to ``n``.
    """
    width = fmt.check_container(packed, "packed")
    nbit = _nbit(nbit)
    if container is None:
        container = packed.dtype
    W = fmt.check_container_dtype(container)
    if W != width:
        raise ValueError(f"`container` ({container}) must have the width of `packed`'s dtype "
                         f"({packed.dtype}, {width} bits)")
    d = fmt.check_dim(dim, packed.dim(), what="`packed` tensor")
    fmt.check_bool(dense, "dense")
    fmt.check_bool(signed, "signed")
    dtype = _check_out_dtype((torch.int8 if signed else torch.uint8) if dtype is None else dtype, nbit, signed)
    elems = packed.shape[d]
    if dense and elems % nbit:
        raise ValueError(f"`packed` must have a multiple of nbit={nbit} elements along dim {dim} in "
                         f"dense mode (groups of {W} codes fill {nbit} elements), got {elems}")
    capacity = elems // nbit * W if dense else elems * (W // nbit)
    if n is not None:
        n = fmt.check_int(n, "n", 0, capacity, what=" (the codes `packed` holds along `dim`)")
    work = (torch.int8 if signed else torch.uint8) if W == 8 else fmt.SIGNED_TWIN[packed.dtype]
    x = packed.view(work).movedim(d, -1)
    q = _unpack_dense(x, nbit, W, signed, dtype) if dense else _unpack_padded(x, nbit, W, signed, dtype)
    if n is not None and n != capacity:
        q = q[..., :n]
    return q.movedim(-1, d)


def _field(t: torch.Tensor, shift: int, nbit: int, W: int, signed: bool) -> torch.Tensor:
    """Bits ``[shift, shift + nbit)`` of each word (arithmetic dtype of width ``W``; int8
    for signed 8-bit codes) as a code, sign-extended if ``signed``."""
    if signed:  # the field to the top, then an arithmetic shift down sign-extends it
        up = W - nbit - shift
        return (t << up if up else t) >> (W - nbit)
    v = t >> shift if shift else t
    # uint8: a logical shift, so the top field needs no mask; int16/int32 shifts are arithmetic
    return v if t.dtype == torch.uint8 and shift + nbit == W else v & ((1 << nbit) - 1)


def _unpack_padded(x: torch.Tensor, nbit: int, W: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    per = W // nbit
    out = torch.empty(*x.shape, per, dtype=dtype, device=x.device)
    for j in range(per):  # strided writes into the output (a stack would copy, and not fuse)
        out[..., j] = _field(x, j * nbit, nbit, W, signed)
    return out.reshape(*x.shape[:-1], x.shape[-1] * per)


def _unpack_dense(x: torch.Tensor, nbit: int, W: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    m = x.shape[-1] // nbit
    words = x.reshape(*x.shape[:-1], m, nbit)
    out = torch.empty(*x.shape[:-1], m, W, dtype=dtype, device=x.device)
    for j in range(W):
        k, off = divmod(j * nbit, W)
        w = words[..., k]
        if off + nbit <= W:
            c = _field(w, off, nbit, W, signed)
        else:  # the code spans words k and k + 1: its low bits end word k, its high bits start k + 1
            lo_bits = W - off
            c = ((w >> off) & ((1 << lo_bits) - 1)) | ((words[..., k + 1] & ((1 << (nbit - lo_bits)) - 1)) << lo_bits)
            if signed:  # c < 2**nbit <= 2**7 here: fits the (signed) arithmetic dtype
                c = c - ((c >> (nbit - 1)) << nbit)
        out[..., j] = c
    return out.reshape(*x.shape[:-1], m * W)


# --- bool masks -------------------------------------------------------------------------------

def bitpack(mask: torch.Tensor, dim: int = -1, *, container: torch.dtype = torch.uint8) -> torch.Tensor:
    """Bitset of a bool mask along ``dim``: bit ``i % W`` of element ``i // W`` is
    ``mask[i]`` (LSB first), ``W`` = 8 (``uint8``, default) or 32 (``int32``)."""
    fmt.check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a bool tensor, got {mask.dtype}")
    if container not in (torch.uint8, torch.int32):
        raise ValueError(f"`container` must be torch.uint8 or torch.int32 for a bitset, got {container}")
    return pack(mask, 1, dim=dim, container=container, check=False)


def bitunpack(bits: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """Inverse of :func:`bitpack`: a bool tensor with ``n`` entries along ``dim``."""
    fmt.check_tensor(bits, "bits")
    if bits.dtype not in (torch.uint8, torch.int32):
        raise TypeError(f"`bits` must be a uint8 or int32 bitset, got {bits.dtype}")
    if n is None:
        raise TypeError("`n` must be an int (the number of mask entries along `dim`), got None")
    return unpack(bits, 1, dim=dim, n=n, dtype=torch.uint8).bool()


# --- quantization -----------------------------------------------------------------------------

def _round_dir(v: torch.Tensor, dtype: torch.dtype, up: bool) -> torch.Tensor:
    """float64 ``v`` rounded toward +inf (``up``) or -inf to ``dtype`` (returned as float64)."""
    r = v.to(dtype)
    wrong = r.to(torch.float64) < v if up else r.to(torch.float64) > v
    inf = torch.tensor(float("inf") if up else float("-inf"), dtype=dtype, device=v.device)
    return torch.where(wrong, torch.nextafter(r, inf.expand_as(r)), r).to(torch.float64)


def quantize(x: torch.Tensor, nbit: int, *, group_size: Optional[int] = None, dim: int = -1,
             signed: bool = False, container: torch.dtype = torch.int32,
             scale_dtype: torch.dtype = torch.float16) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affine (min/max) or symmetric quantization of ``x`` to packed ``nbit`` codes.

    Groups: ``group_size`` consecutive entries along ``dim`` (default: the whole dim);
    ``group_size`` must divide the length of ``dim``, so that every result is accepted
    by :func:`triton_dequant.linear` and broadcasts in :func:`triton_dequant.dequantize`.
    Per group, computed in float64, with ``rd``/``ru`` rounding to ``scale_dtype``
    toward -inf/+inf:

    * unsigned: ``shift = rd(min)``, ``scale = ru((max - shift) / (2**nbit - 1))``,
      ``q = clamp(round((x - shift) / scale), 0, 2**nbit - 1)``;
    * signed (symmetric, ``nbit >= 2``): ``shift = 0``,
      ``scale = ru(max|x| / (2**(nbit-1) - 1))``, ``q = clamp(round(x / scale),
      -2**(nbit-1), 2**(nbit-1) - 1)``, packed as two's complement;

    a zero scale (constant group) becomes 1. The codes use the rounded
    scale/shift and the directed rounding keeps every group inside
    ``[shift, shift + (2**nbit - 1) * scale]``, so ``scale*q + shift`` is within
    ``scale / 2`` of ``x`` before the final rounding to the output dtype (``round``
    is half-to-even).

    Returns ``(packed, scale, shift)``: ``packed = pack(q, nbit, dim=dim,
    container=container, signed=signed)``; ``scale``/``shift`` of ``scale_dtype``
    with ``x.shape``, ``dim`` replaced by the number of groups. Raises
    ``ValueError`` if a scale/shift overflows ``scale_dtype`` or ``x`` is not finite.
    """
    fmt.check_tensor(x, "x")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating point tensor, got {x.dtype}")
    nbit = _nbit(nbit)
    fmt.check_bool(signed, "signed")
    if signed and nbit < 2:
        raise ValueError("`nbit` must be >= 2 for signed (symmetric) quantization, got 1")
    fmt.check_container_dtype(container)
    fmt.check_dtype(scale_dtype, "scale_dtype", _SCALE_DTYPES)
    d = fmt.check_dim(dim, x.dim(), what="`x` tensor")
    n = x.shape[d]
    if n == 0:
        raise ValueError(f"`x` has no entries along dim {dim}")
    if group_size is None:
        group_size = n
    fmt.check_positive_int(group_size, "group_size")
    if n % group_size:
        raise ValueError(f"`group_size` ({group_size}) must divide the length of dim {dim} ({n}): "
                         f"linear and dequantize take whole groups only")
    xt = x.movedim(d, -1).to(torch.float64)
    G = n // group_size
    xg = xt.reshape(*xt.shape[:-1], G, group_size)
    if signed:
        pmax = (1 << (nbit - 1)) - 1
        scale = _round_dir(xg.abs().amax(-1) / pmax, scale_dtype, up=True)
        shift = torch.zeros_like(scale)
        lo, hi = -pmax - 1, pmax
    else:
        shift = _round_dir(xg.amin(-1), scale_dtype, up=False)
        scale = _round_dir((xg.amax(-1) - shift) / ((1 << nbit) - 1), scale_dtype, up=True)
        lo, hi = 0, (1 << nbit) - 1
    if not bool(torch.isfinite(scale).all() & torch.isfinite(shift).all()):
        raise ValueError(f"`x` must be finite with a range that fits {scale_dtype} scale/shift "
                         f"(got |x| up to {xt.abs().max().item():g})")
    scale = torch.where(scale == 0, 1.0, scale)
    q = torch.clamp(torch.round((xg - shift[..., None]) / scale[..., None]), lo, hi)
    q = q.reshape(*xt.shape[:-1], n).to(torch.int8 if signed or nbit < 8 else torch.uint8)
    packed = pack(q.movedim(-1, d), nbit, dim=d, container=container, signed=signed, check=False)
    return packed, scale.to(scale_dtype).movedim(-1, d), shift.to(scale_dtype).movedim(-1, d)


# --- row-fused layout -------------------------------------------------------------------------

def pack_rows(x: torch.Tensor, nbit: int, *, container: torch.dtype = torch.int32, signed: bool = False,
              row_align: int = 1) -> torch.Tensor:
    """Quantize each row of a 2-D ``x`` ``[R, D]`` (see :func:`quantize`, one group
    per row, fp16 scale/shift) into the row-fused layout ``[R, E]`` of ``container``:
    ``[scale fp16, shift fp16, data...]`` (:mod:`triton_dequant.formats`).

    The 4 header bytes are scale then shift, little endian: in an int32 row word 0
    holds the scale bits in its low 16 bits and the shift bits in its high 16 bits;
    int16 rows: elements 0 and 1; uint8/int8 rows: bytes 0-1 and 2-3. The data
    elements follow (padded packing along the row, ``ceil(D / PER)`` elements), then
    zero elements up to a multiple of ``row_align`` bytes per row (rounded up to
    whole elements).
    """
    fmt.check_tensor(x, "x")
    if x.dim() != 2:
        raise ValueError(f"`x` must be 2-D [rows, n_codes], got shape {list(x.shape)}")
    W = fmt.check_container_dtype(container)
    fmt.check_positive_int(row_align, "row_align", what=" (bytes)")
    data, scale, shift = quantize(x, nbit, dim=-1, signed=signed, container=container,
                                  scale_dtype=torch.float16)
    header = _reinterpret(torch.cat([scale, shift], -1), container)  # [R, 4 bytes]: scale, shift
    rows = torch.cat([header, data], -1)
    per_row = math.lcm(row_align, W // 8) // (W // 8)  # elements
    return F.pad(rows, (0, -rows.shape[1] % per_row)) if rows.shape[1] % per_row else rows


def unpack_rows(rows: torch.Tensor, nbit: int, n_codes: int, *, container: Optional[torch.dtype] = None,
                signed: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split row-fused ``rows`` ``[R, E]`` (see :func:`pack_rows`) into
    ``(codes [R, n_codes] uint8 (int8 if signed), scale [R] fp16, shift [R] fp16)``."""
    width = fmt.check_container(rows, "rows")
    if rows.dim() != 2:
        raise ValueError(f"`rows` must be 2-D [rows, elements], got shape {list(rows.shape)}")
    container = rows.dtype if container is None else container
    W = fmt.check_container_dtype(container)
    nbit = _nbit(nbit)
    h = fmt.header_elems(width)
    capacity = max(rows.shape[1] - h, 0) * (W // nbit)
    n_codes = fmt.check_int(n_codes, "n_codes", 0, capacity, what=f" for rows of {rows.shape[1]} elements")
    head = _reinterpret(rows[:, :h], torch.float16)  # [R, 2]: scale, shift
    used = -(-n_codes // (W // nbit))
    codes = unpack(rows[:, h:h + used], nbit, dim=-1, container=container, n=n_codes, signed=signed)
    return codes, head[:, 0], head[:, 1]
