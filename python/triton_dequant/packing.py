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
    if not torch.compiler.is_compiling() and _byte_stream(nbit, W, dense):
        out = _pack_bytes(x, nbit, W, dense, masked)  # eager: word arithmetic on contiguous bytes
    elif dense and 8 % nbit == 0:  # the bits of padded packing; only the padding differs
        out = _pack_padded(_slices(x, -(-x.shape[-1] // W) * W), nbit, W, masked)
    elif dense:
        out = _pack_dense_words(x, nbit, W, masked)
    else:  # compiled: one fused kernel
        out = _pack_padded(x, nbit, W, masked)
    if out.dtype != container:
        out = out.view(container)
    return out.movedim(-1, d).contiguous()


# --- byte streams: codes in uint8 lanes of wide words, folded together by shifts --------------
#
# Little endian, padded packing into bytes (and any container when nbit divides 8) is
# the LSB-first bit stream of the bytes, and so is dense packing. Packing views the
# codes (one per byte) as words of ``g`` bytes and folds neighbouring groups together
# in log2(g) shift-and-or steps, all on contiguous words (vectorized, no strided
# access); unpacking looks each byte up in a 256-entry table of its codes.

_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _byte_stream(nbit: int, W: int, dense: bool) -> bool:
    """Whether the byte route applies: the packed bytes do not depend on ``W``."""
    return W == 8 or 8 % nbit == 0 or dense


def _i64(v: int) -> int:
    """A 64-bit pattern as the int64 value torch takes."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _dense_group(nbit: int):
    """Dense 3/5/6/7 bits: the fewest codes filling whole bytes (8 // gcd(nbit, 8)) and
    their bytes."""
    g = 8 // math.gcd(nbit, 8)
    return g, nbit * g // 8


def _fold_masks(nbit: int, s: int, g: int = 8):
    """Step ``s`` of the dense fold in words of ``g`` bytes: groups of ``2**s`` codes
    (``nbit * 2**s`` bits at the start of every ``2**s``-byte lane) pair up;
    (keep-low, move-high, shift)."""
    bits, lane = nbit << s, 8 << s
    lo = sum(((1 << bits) - 1) << (2 * lane * k) for k in range(8 * g // (2 * lane)))
    hi = lo << lane
    if g < 8:  # as the (signed) word dtype of g bytes sees the pattern
        lo, hi = (v - (1 << 8 * g) if v >= 1 << (8 * g - 1) else v for v in (lo, hi))
    return _i64(lo), _i64(hi), (8 - nbit) << s


# codes per chunk of the eager byte routes: the words of a chunk stay in the cache
# through all the fold steps (2x faster than whole-tensor passes on the bench machine)
_CHUNK = 1 << 20


def _pack_bytes(x: torch.Tensor, nbit: int, W: int, dense: bool, masked: bool) -> torch.Tensor:
    """Codes ``[..., n]`` -> the packed bytes (``_byte_stream`` layouts), padded to whole
    container elements; eager, in cache-sized chunks of the code stream."""
    if 8 % nbit == 0:  # 8 // nbit codes per byte; dense == padded but for the padding
        group, per_elem = 8 // nbit, W if dense else W // nbit
    elif not dense:    # padded bytes (W == 8) with 8 % nbit spare bits: 2 or 1 codes per byte
        group, per_elem = 8 // nbit, 8 // nbit
    else:              # dense 3/5/6/7 bits: g codes -> nbit * g / 8 bytes, W codes -> nbit elements
        group, per_elem = _dense_group(nbit)[0], W
    n_pad = -(-x.shape[-1] // per_elem) * per_elem
    if x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if n_pad != x.shape[-1] or not x.is_contiguous():
        x = _slices(x.to(torch.uint8), n_pad).contiguous()
    flat = x.reshape(-1)
    stream = 8 % nbit == 0 or dense  # nbit bits per code; else `group` codes per byte

    def nbytes(codes: int) -> int:
        return codes * nbit // 8 if stream else codes // group

    out = torch.empty(nbytes(flat.numel()), dtype=torch.uint8, device=x.device)
    step = _CHUNK // (8 * group) * (8 * group)
    for i in range(0, flat.numel(), step):
        c = flat[i:i + step].to(torch.uint8)
        if masked:
            c = c & ((1 << nbit) - 1)
        o = out[nbytes(i):nbytes(i + c.numel())]
        if group == 1:  # one code per byte: the codes themselves
            o.copy_(c)
            continue
        w = c.view(_WORDS[group])  # one word per group of codes, a code per byte
        steps = group.bit_length() - 1
        if 8 % nbit == 0 or not dense:  # nbit <= 4: a shifted group never reaches its neighbour's bits
            w = w | (w >> (8 - nbit))
            for s_ in range(1, steps):
                w |= w >> ((8 - nbit) << s_)
            o.copy_(w)  # each word's low byte holds its group
        else:  # pairs of groups, masked: g codes -> their nbit * g low bits
            for s_ in range(steps):
                lo, hi, sh = _fold_masks(nbit, s_, group)
                w = (w & lo) | ((w & hi) >> sh)
            nb = nbit * group // 8
            o.view(-1, nb).copy_(w.view(torch.uint8).view(-1, group)[:, :nb])
    return out.reshape(*x.shape[:-1], -1)


def _unfold_keep(nbit: int, s: int, group: int) -> int:
    """Step ``s`` of the padded unfold: in every lane of ``2**s`` bytes keep the low
    ``nbit * 2**s`` bits (words of ``group`` bytes)."""
    lane = 8 << s
    return _i64(sum(((1 << (nbit << s)) - 1) << (lane * k) for k in range(group * 8 // lane)))


_TABLES: dict = {}


def _byte_table(nbit: int, signed: bool, device) -> torch.Tensor:
    """The codes of every byte value: ``[256]`` words of ``8 // nbit`` code bytes (int8
    if signed: sign-extended)."""
    key = (nbit, signed, str(device))
    t = _TABLES.get(key)
    if t is None:
        per = 8 // nbit
        b = torch.arange(256, dtype=torch.int64)
        codes = torch.stack([(b >> (j * nbit)) & ((1 << nbit) - 1) for j in range(per)], -1)
        if signed:
            codes = codes - ((codes >> (nbit - 1)) << nbit)
        t = codes.to(torch.int8 if signed else torch.uint8).reshape(-1).view(_WORDS[per]).to(device)
        _TABLES[key] = t
    return t


def _unpack_bytes(x: torch.Tensor, nbit: int, dense: bool, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """Packed bytes (``_byte_stream`` layouts) -> codes. Padded (and dense with nbit
    dividing 8): one lookup per byte in a 256-entry table of its codes; dense 3/5/6/7
    bits: the fold of :func:`_pack_bytes` run backwards on words, in cache-sized chunks."""
    b = x.contiguous().view(torch.uint8)  # [..., bytes]
    if 8 % nbit == 0 or not dense:
        per = 8 // nbit
        if per == 1:
            q = b & ((1 << nbit) - 1) if nbit < 8 else b
            q = ((q.view(torch.int8) << (8 - nbit)) >> (8 - nbit)) if signed else q
        else:
            q = _byte_table(nbit, signed, b.device).index_select(0, b.reshape(-1).to(torch.int32))
            q = q.view(torch.int8 if signed else torch.uint8).reshape(*b.shape[:-1], -1)
        return q if q.dtype == dtype else q.to(dtype)
    g, nb = _dense_group(nbit)  # g codes in nb bytes
    flat = b.reshape(-1)
    out = torch.empty(flat.numel() // nb * g, dtype=dtype, device=x.device)
    step = _CHUNK // g * nb  # bytes per chunk (whole groups)
    for i in range(0, flat.numel(), step):
        c = flat[i:i + step]
        w = F.pad(c.view(-1, nb), (0, g - nb)).view(_WORDS[g])[:, 0]
        for s_ in reversed(range(g.bit_length() - 1)):
            lo, hi, sh = _fold_masks(nbit, s_, g)
            w = (w & lo) | ((w << sh) & hi)
        q = w.view(torch.uint8)
        if signed:  # sign-extend each byte's code
            q = (q.view(torch.int8) << (8 - nbit)) >> (8 - nbit)
        out[i // nb * g:(i + c.numel()) // nb * g].copy_(q)
    return out.reshape(*b.shape[:-1], -1)


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


def _pack_dense_words(x: torch.Tensor, nbit: int, W: int, masked: bool) -> torch.Tensor:
    """Dense packing, nbit in 3, 5, 6, 7: each group of 8 codes ORed into one int64 word
    (``8 * nbit`` bits), whose low ``nbit`` bytes are the group's bytes."""
    mask = (1 << nbit) - 1
    x = _slices(x, -(-x.shape[-1] // W) * W)
    w = None
    for j in range(8):
        t = _as_work(x[..., j::8], torch.int64, mask, masked) << (j * nbit)
        w = t if w is None else w | t
    return w.view(torch.uint8).reshape(*w.shape, 8)[..., :nbit].reshape(*w.shape[:-1], -1)


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
    if not torch.compiler.is_compiling() and _byte_stream(nbit, W, dense):
        q = _unpack_bytes(x, nbit, dense, signed, dtype)  # eager: word arithmetic on contiguous bytes
    elif dense and 8 % nbit:
        q = _unpack_dense(x, nbit, W, signed, dtype)
    else:  # padded (dense with nbit dividing 8: the same bits); compiled: one fused kernel
        q = _unpack_padded(x, nbit, W, signed, dtype)
    if n is not None and n != capacity:
        q = q[..., :n]
    return q.movedim(-1, d)


def _unpack_padded(x: torch.Tensor, nbit: int, W: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """``[..., m]`` elements -> ``[..., m * PER]`` codes: every field at once, a broadcast
    shift by a ``[PER]`` table (compiled: one vectorized kernel; strided stores are not)."""
    per = W // nbit
    sh = torch.arange(per, dtype=x.dtype, device=x.device) * nbit
    if signed:  # each field to the top, then an arithmetic shift sign-extends it
        q = (x.unsqueeze(-1) << (W - nbit - sh)) >> (W - nbit)
    else:
        q = (x.unsqueeze(-1) >> sh) & ((1 << nbit) - 1)
    return q.to(dtype).reshape(*x.shape[:-1], x.shape[-1] * per)


def _unpack_dense(x: torch.Tensor, nbit: int, W: int, signed: bool, dtype: torch.dtype) -> torch.Tensor:
    """Dense 3/5/6/7 bits: each group of nbit bytes (8 codes) as one int64 word, then its
    8 fields at once."""
    b = x.contiguous().view(torch.uint8)
    g = b.shape[-1] // nbit
    w = F.pad(b.reshape(*b.shape[:-1], g, nbit), (0, 8 - nbit)).view(torch.int64)  # [..., g, 1]
    sh = torch.arange(8, dtype=torch.int64, device=x.device) * nbit
    if signed:
        q = (w << (64 - nbit - sh)) >> (64 - nbit)
    else:
        q = (w >> sh) & ((1 << nbit) - 1)
    return q.to(dtype).reshape(*b.shape[:-1], g * 8)


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
