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

Containers: ``uint8, int8, int16, uint16, int32, uint32``. This torch (2.x) has
no shifts, comparisons or min/max for ``uint16``/``uint32`` (torch 2.13 CPU), so those are
handled by bit-casting (``Tensor.view``) to their signed twins: every operation
runs on ``int16``/``int32`` and the result is re-viewed. ``uint64``/``int64``
containers are not supported.

:func:`pack` and :func:`unpack` are compile friendly (no data-dependent control
flow; shapes and shifts depend only on static arguments): with inductor's CPU
backend, ``torch.compile(pack, fullgraph=True)`` and
``torch.compile(unpack, fullgraph=True)`` each lower to one fused kernel (tested).
On CUDA (seen on an H100, torch 2.11) the same holds except dense packing along a
non-last dim (two kernels). Eager calls run several torch kernels each, with
int32/int64 intermediates: compile them where speed matters.

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

__all__ = ["pack", "unpack", "bitpack", "bitunpack", "quantize", "pack_rows", "unpack_rows",
           "CONTAINERS", "container_bits"]

CONTAINERS = {torch.uint8: 8, torch.int8: 8, torch.int16: 16, torch.uint16: 16,
              torch.int32: 32, torch.uint32: 32}
# the signed (or otherwise fully supported) dtype each container is computed in
_TWIN = {torch.uint8: torch.uint8, torch.int8: torch.int8, torch.int16: torch.int16,
         torch.uint16: torch.int16, torch.int32: torch.int32, torch.uint32: torch.int32}
_UNSIGNED_INPUTS = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
_SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --- argument checks --------------------------------------------------------------------

def _check_nbit(nbit) -> int:
    if isinstance(nbit, bool) or not isinstance(nbit, int):
        raise TypeError(f"`nbit` must be an int in [1, 8], got {type(nbit).__name__}")
    if not 1 <= nbit <= 8:
        raise ValueError(f"`nbit` must be an int in [1, 8], got {nbit}")
    return nbit


def container_bits(container, name: str = "container") -> int:
    """Width in bits of a supported container dtype (raises naming ``name``)."""
    if not isinstance(container, torch.dtype):
        raise TypeError(f"`{name}` must be a torch.dtype, one of {_names(CONTAINERS)}, "
                        f"got {type(container).__name__}")
    if container not in CONTAINERS:
        raise ValueError(f"`{name}` must be one of {_names(CONTAINERS)}, got {container}")
    return CONTAINERS[container]


def _names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def _check_dim(dim, ndim: int, name: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"`{name}` must be an int, got {type(dim).__name__}")
    if ndim == 0:
        raise ValueError(f"`{name}`: a 0-d tensor has no dimension to pack along; reshape it to 1-d")
    if not -ndim <= dim < ndim:
        raise ValueError(f"`{name}` must be in [{-ndim}, {ndim}) for a {ndim}-d tensor, got {dim}")
    return dim % ndim


def _check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    return t


def _check_bool(v, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(v).__name__}")
    return v


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
    _check_tensor(codes, "codes")
    if codes.dtype != torch.bool and (codes.is_floating_point() or codes.is_complex()):
        raise TypeError(f"`codes` must be an integer or bool tensor, got {codes.dtype}")
    return codes


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
    nbit = _check_nbit(nbit)
    W = container_bits(container)
    d = _check_dim(dim, codes.dim())
    _check_bool(dense, "dense")
    _check_bool(signed, "signed")
    if _check_bool(check, "check"):
        _check_range(codes, nbit, signed)
    x = codes.movedim(d, -1)
    if dense:
        out = _pack_dense(x, nbit, W)
    else:
        out = _pack_padded(x, nbit, W)
    out = out.to(_TWIN[container])
    if out.dtype != container:
        out = out.view(container)
    return out.movedim(-1, d).contiguous()


def _pack_padded(x: torch.Tensor, nbit: int, W: int) -> torch.Tensor:
    per = W // nbit
    n = x.shape[-1]
    m = -(-n // per)
    # int32 arithmetic for every width: fields are disjoint, so the sum is their OR
    # and never carries (only the top field can set bit 31, and `<<` wraps into it).
    q = x.to(torch.int32) & ((1 << nbit) - 1)
    if m * per != n:
        q = F.pad(q, (0, m * per - n))
    q = q.reshape(*x.shape[:-1], m, per)
    shifts = torch.arange(per, dtype=torch.int32, device=x.device) * nbit
    return (q << shifts).sum(-1, dtype=torch.int32)


def _dense_tables(nbit: int, W: int, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """For a group of ``W`` codes filling ``nbit`` words: shift of code ``j``
    relative to word ``k`` (``s[k, j] = j*nbit - k*W``) and whether they overlap."""
    j = torch.arange(W, dtype=torch.int64, device=device)
    k = torch.arange(nbit, dtype=torch.int64, device=device)
    s = j[None, :] * nbit - k[:, None] * W
    return s, (s > -nbit) & (s < W)


def _pack_dense(x: torch.Tensor, nbit: int, W: int) -> torch.Tensor:
    n = x.shape[-1]
    m = -(-n // W)
    q = x.to(torch.int64) & ((1 << nbit) - 1)
    if m * W != n:
        q = F.pad(q, (0, m * W - n))
    q = q.reshape(*x.shape[:-1], m, 1, W)
    s, overlap = _dense_tables(nbit, W, x.device)
    # word k = sum over codes j of (code_j placed at bit j*nbit - k*W), cut to W bits;
    # int64 so that a code shifted past bit W-1 (spilling into word k+1) is still exact
    part = torch.where(s >= 0, q << s.clamp(min=0), q >> (-s).clamp(min=0)) & ((1 << W) - 1)
    words = torch.where(overlap, part, 0).sum(-1)  # [..., m, nbit]
    return words.reshape(*x.shape[:-1], m * nbit)


def unpack(packed: torch.Tensor, nbit: int, *, dim: int = -1, container: Optional[torch.dtype] = None,
           dense: bool = False, n: Optional[int] = None, signed: bool = False,
           dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Inverse of :func:`pack`: the codes of ``packed`` along ``dim``.

    ``container``: how to read the elements; default ``packed.dtype``. A
    different container of the same width reinterprets the bits (e.g. int32 data
    read as uint32). ``n``: number of codes to keep along ``dim`` (default: all,
    padding included). ``signed=True`` sign-extends nbit two's complement codes.
    Returns ``dtype`` (default ``uint8``, or ``int8`` when signed), ``packed.shape``
    with ``dim`` multiplied by ``PER`` (dense: by ``W / nbit``) or set to ``n``.
    """
    _check_tensor(packed, "packed")
    if packed.dtype not in CONTAINERS:
        raise TypeError(f"`packed` must be a container tensor ({_names(CONTAINERS)}), got {packed.dtype}")
    nbit = _check_nbit(nbit)
    if container is None:
        container = packed.dtype
    W = container_bits(container)
    if W != CONTAINERS[packed.dtype]:
        raise ValueError(f"`container` ({container}) must have the width of `packed`'s dtype "
                         f"({packed.dtype}, {CONTAINERS[packed.dtype]} bits)")
    d = _check_dim(dim, packed.dim())
    _check_bool(dense, "dense")
    _check_bool(signed, "signed")
    if dtype is None:
        dtype = torch.int8 if signed else torch.uint8
    if not isinstance(dtype, torch.dtype) or dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"`dtype` must be an integer torch.dtype, got {dtype}")
    elems = packed.shape[d]
    if dense and elems % nbit:
        raise ValueError(f"`packed` must have a multiple of nbit={nbit} elements along dim {dim} in "
                         f"dense mode (groups of {W} codes fill {nbit} elements), got {elems}")
    capacity = elems // nbit * W if dense else elems * (W // nbit)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= capacity):
        raise ValueError(f"`n` must be an int in [0, {capacity}] (the codes `packed` holds along "
                         f"dim {dim}), got {n!r}")
    x = packed.view(_TWIN[packed.dtype]).movedim(d, -1)
    q = _unpack_dense(x, nbit, W) if dense else _unpack_padded(x, nbit, W)
    if n is not None and n != capacity:
        q = q[..., :n]
    if signed:
        q = q - ((q >> (nbit - 1)) << nbit)
    return q.to(dtype).movedim(-1, d)


def _unpack_padded(x: torch.Tensor, nbit: int, W: int) -> torch.Tensor:
    per = W // nbit
    # sign extension of int8/int16/int32 only touches bits >= W, never a field
    shifts = torch.arange(per, dtype=torch.int32, device=x.device) * nbit
    q = (x.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << nbit) - 1)
    return q.reshape(*x.shape[:-1], x.shape[-1] * per)


def _unpack_dense(x: torch.Tensor, nbit: int, W: int) -> torch.Tensor:
    m = x.shape[-1] // nbit
    u = x.to(torch.int64) & ((1 << W) - 1)  # the word's W bits, zero-extended
    u = u.reshape(*x.shape[:-1], m, nbit)
    bit = torch.arange(W, dtype=torch.int64, device=x.device) * nbit  # first bit of code j
    k0 = bit // W
    k1 = torch.clamp(k0 + 1, max=nbit - 1)  # the next word (a code spans at most two)
    pair = u[..., k0] | (u[..., k1] << W)  # [..., m, W]: bits of word k0 then word k0+1
    q = (pair >> (bit % W)) & ((1 << nbit) - 1)
    return q.reshape(*x.shape[:-1], m * W)


# --- bool masks -------------------------------------------------------------------------------

def bitpack(mask: torch.Tensor, dim: int = -1, *, container: torch.dtype = torch.uint8) -> torch.Tensor:
    """Bitset of a bool mask along ``dim``: bit ``i % W`` of element ``i // W`` is
    ``mask[i]`` (LSB first), ``W`` = 8 (``uint8``, default) or 32 (``int32``)."""
    _check_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"`mask` must be a bool tensor, got {mask.dtype}")
    if container not in (torch.uint8, torch.int32):
        raise ValueError(f"`container` must be torch.uint8 or torch.int32 for a bitset, got {container}")
    return pack(mask, 1, dim=dim, container=container, check=False)


def bitunpack(bits: torch.Tensor, n: int, dim: int = -1) -> torch.Tensor:
    """Inverse of :func:`bitpack`: a bool tensor with ``n`` entries along ``dim``."""
    _check_tensor(bits, "bits")
    if bits.dtype not in (torch.uint8, torch.int32):
        raise TypeError(f"`bits` must be a uint8 or int32 bitset, got {bits.dtype}")
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

    Groups: ``group_size`` consecutive entries along ``dim`` (default: the whole
    dim; the last group may be shorter). Per group, computed in float64, with
    ``rd``/``ru`` rounding to ``scale_dtype`` toward -inf/+inf:

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
    _check_tensor(x, "x")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a floating point tensor, got {x.dtype}")
    nbit = _check_nbit(nbit)
    _check_bool(signed, "signed")
    if signed and nbit < 2:
        raise ValueError("`nbit` must be >= 2 for signed (symmetric) quantization, got 1")
    container_bits(container)
    if not isinstance(scale_dtype, torch.dtype) or scale_dtype not in _SCALE_DTYPES:
        raise TypeError(f"`scale_dtype` must be one of {_names(_SCALE_DTYPES)}, got {scale_dtype}")
    d = _check_dim(dim, x.dim())
    n = x.shape[d]
    if group_size is None:
        group_size = max(n, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"`group_size` must be a positive int or None, got {group_size!r}")
    if n == 0:
        raise ValueError(f"`x` has no entries along dim {dim}")
    xt = x.movedim(d, -1).to(torch.float64)
    G = -(-n // group_size)
    if G * group_size != n:  # repeat the last entry: min/max of the short group unchanged
        xt = torch.cat([xt, xt[..., -1:].expand(*xt.shape[:-1], G * group_size - n)], -1)
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
    q = q.reshape(*xt.shape[:-1], G * group_size)[..., :n].to(torch.int32)
    packed = pack(q.movedim(-1, d), nbit, dim=d, container=container, signed=signed, check=False)
    return packed, scale.to(scale_dtype).movedim(-1, d), shift.to(scale_dtype).movedim(-1, d)


# --- row-fused layout -------------------------------------------------------------------------

def _header_elems(W: int) -> int:
    return 32 // W  # the fp16 scale + shift take 4 bytes


def pack_rows(x: torch.Tensor, nbit: int, *, container: torch.dtype = torch.int32, signed: bool = False,
              row_align: int = 1) -> torch.Tensor:
    """Quantize each row of a 2-D ``x`` ``[R, D]`` (see :func:`quantize`, one group
    per row, fp16 scale/shift) into the row-fused layout ``[R, E]`` of ``container``:
    ``[scale fp16, shift fp16, data...]``.

    The 4 header bytes are scale then shift, little endian: in an int32 row word 0
    holds the scale bits in its low 16 bits and the shift bits in its high 16 bits;
    int16 rows: elements 0 and 1; uint8/int8 rows: bytes 0-1 and 2-3. The data
    elements follow (padded packing along the row, ``ceil(D / PER)`` elements), then
    zero elements up to a multiple of ``row_align`` bytes per row (rounded up to
    whole elements).
    """
    _check_tensor(x, "x")
    if x.dim() != 2:
        raise ValueError(f"`x` must be 2-D [rows, dim], got shape {list(x.shape)}")
    W = container_bits(container)
    if isinstance(row_align, bool) or not isinstance(row_align, int) or row_align < 1:
        raise ValueError(f"`row_align` must be a positive int (bytes), got {row_align!r}")
    data, scale, shift = quantize(x, nbit, dim=-1, signed=signed, container=container,
                                  scale_dtype=torch.float16)
    header = _reinterpret(torch.cat([scale, shift], -1), container)  # [R, 4 bytes]
    rows = torch.cat([header, data], -1)
    per_row = math.lcm(row_align, W // 8) // (W // 8)  # elements
    return F.pad(rows, (0, -rows.shape[1] % per_row)) if rows.shape[1] % per_row else rows


def unpack_rows(rows: torch.Tensor, nbit: int, dim: int, *, container: Optional[torch.dtype] = None,
                signed: bool = False) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split row-fused ``rows`` ``[R, E]`` (see :func:`pack_rows`) into
    ``(codes [R, dim] uint8 (int8 if signed), scale [R] fp16, shift [R] fp16)``."""
    _check_tensor(rows, "rows")
    if rows.dtype not in CONTAINERS:
        raise TypeError(f"`rows` must be a container tensor ({_names(CONTAINERS)}), got {rows.dtype}")
    if rows.dim() != 2:
        raise ValueError(f"`rows` must be 2-D [rows, elements], got shape {list(rows.shape)}")
    container = rows.dtype if container is None else container
    W = container_bits(container)
    nbit = _check_nbit(nbit)
    h = _header_elems(CONTAINERS[rows.dtype])
    capacity = max(rows.shape[1] - h, 0) * (W // nbit)
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= capacity:
        raise ValueError(f"`dim` must be an int in [0, {capacity}] for rows of {rows.shape[1]} elements, "
                         f"got {dim!r}")
    head = _reinterpret(rows[:, :h], torch.float16)  # [R, 2]
    used = -(-dim // (W // nbit))
    codes = unpack(rows[:, h:h + used], nbit, dim=-1, container=container, n=dim, signed=signed)
    return codes, head[:, 0], head[:, 1]
