"""Conversions between foreign quantized layouts and ours (:mod:`.packing`).

Formats and bit orders supported (read from the sources cited; our own code):

* **FBGEMM fused n-bit rowwise** (``FloatToFusedNBitRowwiseQuantizedSBHalf``,
  ``bit_rate`` nbit in 1, 2, 4, 8): a ``uint8`` row is ``ceil(D / (8/nbit))``
  data bytes, code ``c`` in byte ``c // (8/nbit)`` at bit ``(c % (8/nbit)) * nbit``
  (LSB first; our padded ``uint8`` packing), then the fp16 scale and fp16 bias at
  the END of the row; ``x = scale * q + bias``.
  Source: pytorch/FBGEMM ``src/QuantUtils.cc``
  (``FloatOrHalfToFusedNBitRowwiseQuantizedSBHalfRef``,
  ``FusedNBitRowwiseQuantizedSBHalfToFloatOrHalfRef``).
* **FBGEMM fused 8-bit rowwise** (``FloatToFused8BitRowwiseQuantized``, "SBFloat"):
  ``D`` code bytes then fp32 scale and fp32 bias at the end of the row. Same source
  (``FloatOrHalfToFused8BitRowwiseQuantizedSBFloatRef``,
  ``Fused8BitRowwiseQuantizedSBFloatToFloatOrHalfRef``).
* **FBGEMM TBE inference rows** (``IntNBitTableBatchedEmbeddingBagsCodegen``,
  SparseType INT8/INT4/INT2): fp16 scale then fp16 shift (one ``half2``) FIRST,
  then the data bytes (same LSB-first order as above), each row zero-padded to a
  multiple of ``row_alignment`` bytes (16 on GPU). Source: pytorch/FBGEMM
  ``fbgemm_gpu/fbgemm_gpu/split_table_batched_embeddings_ops_inference.py``
  (``rounded_row_size_in_bytes``, ``unpadded_row_size_in_bytes``,
  ``split_embedding_weights_with_scale_bias``: "[0:2] is scale; [2:4] is bias;
  [4:] is real weights") and the nbit forward kernel template
  (``dequantize_int4``: element ``i`` = bits ``[4i, 4i+4)`` of the loaded word,
  ``hfma2(q, shift_scale.x, shift_scale.y)``).
* **GPTQ** (AutoGPTQ / GPTQ-for-LLaMa ``QuantLinear``, nbit 2, 3, 4, 8):
  ``qweight`` int32 ``[K*nbit/32, N]`` packed along K, for 2/4/8 code ``K = r*PER + j``
  at bits ``[j*nbit, (j+1)*nbit)`` of row ``r`` (our padded int32 along dim 0);
  for 3 bits, 32 codes fill 3 consecutive words as one LSB-first bit stream (our
  dense int32 along dim 0). ``qzeros`` int32 ``[G, N*nbit/32]`` is packed the same
  way along N, and the classic checkpoints store ``zero - 1`` (AutoGPTQ's
  ``zeros -= 1`` in ``pack``, ``+ 1`` when unpacking; the "v2" format stores
  ``zero``). ``scales`` ``[G, N]``; ``W = scale * (q - zero)``. ``g_idx`` ``[K]``
  int32: the group of each row of K, ``k // group_size`` unless the checkpoint was
  quantized in act order (``desc_act``), where ``g_idx[order[i]] = i // group_size``
  for the quantization order ``order`` (rows of one group scattered over K). Source:
  AutoGPTQ ``auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py`` (``QuantLinear.pack``
  and ``forward``; ``g_idx`` indexes ``scales``/``zeros`` per row of K).
* **AWQ GEMM** (AutoAWQ ``WQLinear_GEMM``, 4 bits): ``qweight`` int32 ``[K, N/8]``
  packed along N with interleaved nibbles: nibble ``i`` (bits ``[4i, 4i+4)``) of
  word ``c`` holds column ``8c + ORDER[i]``, ``ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``;
  ``qzeros`` int32 ``[G, N/8]`` the same, storing ``zero`` itself; ``scales``
  ``[G, N]``; ``W = (q - zero) * scale``. Source: AutoAWQ
  ``awq/modules/linear/gemm.py`` (``WQLinear_GEMM.from_linear``, ``order_map``) and
  ``awq/utils/packing_utils.py`` (``AWQ_REVERSE_ORDER``).

Our side: the row-fused layout of :func:`.packing.pack_rows` (fp16 scale and shift
header, then data) and, for linear weights, packed codes + ``scale``/``shift``
with ``W = scale * q + shift`` (what :func:`triton_dequant.ops.linear` consumes).
Byte views assume a little-endian machine, as do FBGEMM and the GPU.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from . import formats as fmt
from .formats import check_tensor as _check_tensor
from .packing import _reinterpret, pack, unpack, unpack_rows


def _check_nbit(nbit) -> int:
    return fmt.check_nbit(nbit, fmt.PACK_NBITS)

__all__ = ["from_fbgemm_rowwise", "to_fbgemm_rowwise", "from_fbgemm_tbe", "to_fbgemm_tbe",
           "from_gptq", "to_gptq", "gptq_act_order_perm", "from_awq", "to_awq", "AWQ_ORDER"]

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of an AWQ word holds column ORDER[i] of its 8
_AWQ_INVERSE = tuple(AWQ_ORDER.index(j) for j in range(8))  # (0, 4, 1, 5, 2, 6, 3, 7)


# --- helpers ------------------------------------------------------------------------------

def _check_rows(rows, name: str = "rows", dtype=None) -> torch.Tensor:
    _check_tensor(rows, name)
    if dtype is not None and rows.dtype != dtype:
        raise TypeError(f"`{name}` must be a {dtype} tensor, got {rows.dtype}")
    if rows.dim() != 2:
        raise ValueError(f"`{name}` must be 2-D [rows, bytes], got shape {list(rows.shape)}")
    return rows


def _fused_rows(codes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
                container: torch.dtype) -> torch.Tensor:
    """Our row-fused layout from codes [R, D] and fp16 scale/shift [R]."""
    fmt.check_container_dtype(container)
    header = _reinterpret(torch.stack([scale.to(torch.float16), shift.to(torch.float16)], -1), container)
    return torch.cat([header, pack(codes, nbit, dim=-1, container=container, check=False)], -1)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """[R, k] float tensor -> its [R, k * itemsize] bytes (little endian)."""
    return _reinterpret(t, torch.uint8)


# --- FBGEMM rowwise -----------------------------------------------------------------------

def _rowwise_qparams(nbit: int, qparams_dtype) -> torch.dtype:
    if qparams_dtype is None:
        return torch.float32 if nbit == 8 else torch.float16
    if qparams_dtype not in (torch.float16, torch.float32):
        raise TypeError(f"`qparams_dtype` must be torch.float16, torch.float32 or None, got {qparams_dtype}")
    if qparams_dtype == torch.float32 and nbit != 8:
        raise ValueError(f"`qparams_dtype` float32 (Fused8BitRowwiseQuantized) needs nbit=8, got nbit={nbit}")
    return qparams_dtype


def _fbgemm_nbit(nbit, allowed) -> int:
    nbit = _check_nbit(nbit)
    if nbit not in allowed:
        raise ValueError(f"`nbit` must be one of {', '.join(map(str, allowed))} for this FBGEMM format, got {nbit}")
    return nbit


def from_fbgemm_rowwise(rows: torch.Tensor, nbit: int, *, container: torch.dtype = torch.int32,
                        n_codes: Optional[int] = None, qparams_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """FBGEMM fused rowwise ``uint8`` rows ``[R, C]`` -> our row-fused layout (:func:`pack_rows`).

    ``qparams_dtype``: fp16 (``FusedNBitRowwiseQuantizedSBHalf``: C = ceil(D*nbit/8) + 4)
    or fp32 (``Fused8BitRowwiseQuantized``, nbit 8: C = D + 8); default fp32 for
    nbit=8, fp16 otherwise. ``n_codes`` (D) defaults to every code the row can hold.

    The fp32 scale and bias of the 8-bit variant are rounded to nearest fp16 (our
    header is fp16): codes are unchanged, each dequantized value moves by at most
    ``|q| * ulp(scale)/2 + ulp(bias)/2`` (and overflows if |scale| or |bias| > 65504).
    """
    nbit = _fbgemm_nbit(nbit, (1, 2, 4, 8))
    _check_rows(rows, "rows", torch.uint8)
    qd = _rowwise_qparams(nbit, qparams_dtype)
    tail = 2 * torch.finfo(qd).bits // 8
    per = 8 // nbit
    nbytes = rows.shape[1] - tail
    if nbytes < 0:
        raise ValueError(f"`rows` of {rows.shape[1]} bytes cannot hold the {tail}-byte scale/bias")
    if n_codes is None:
        n_codes = nbytes * per
    fmt.check_int(n_codes, "n_codes", 0, nbytes * per, what=" for these rows")
    qp = _reinterpret(rows[:, nbytes:], qd)  # [R, 2]: scale, bias
    codes = unpack(rows[:, :nbytes], nbit, dim=-1, n=n_codes)
    return _fused_rows(codes, qp[:, 0], qp[:, 1], nbit, container)


def to_fbgemm_rowwise(rows: torch.Tensor, nbit: int, n_codes: int, *,
                      qparams_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Our row-fused ``rows`` (any container) -> FBGEMM fused rowwise ``uint8`` rows
    (data, then scale and bias; fp32 for nbit=8 by default, exact from fp16)."""
    nbit = _fbgemm_nbit(nbit, (1, 2, 4, 8))
    qd = _rowwise_qparams(nbit, qparams_dtype)
    codes, scale, shift = unpack_rows(rows, nbit, n_codes)
    data = pack(codes, nbit, dim=-1, container=torch.uint8, check=False)
    tail = _bytes(torch.stack([scale, shift], -1).to(qd))
    return torch.cat([data, tail], -1)


# --- FBGEMM TBE -------------------------------------------------------------------------------

def _tbe_data_bytes(n_codes: int, nbit: int) -> int:
    return -(-n_codes * nbit // 8)


def from_fbgemm_tbe(rows: torch.Tensor, nbit: int, n_codes: int, *,
                    container: torch.dtype = torch.int32) -> torch.Tensor:
    """FBGEMM TBE inference rows ``uint8 [R, E]`` (scale, shift, data, padding) ->
    our row-fused layout of ``container`` (no padding beyond the last data element)."""
    nbit = _fbgemm_nbit(nbit, (2, 4, 8))
    _check_rows(rows, "rows", torch.uint8)
    fmt.check_int(n_codes, "n_codes", 0, (rows.shape[1] - 4) * 8 // nbit, what=f" for rows of {rows.shape[1]} bytes")
    nbytes = _tbe_data_bytes(n_codes, nbit)
    qp = _reinterpret(rows[:, :4], torch.float16)
    codes = unpack(rows[:, 4:4 + nbytes], nbit, dim=-1, n=n_codes)
    return _fused_rows(codes, qp[:, 0], qp[:, 1], nbit, container)


def to_fbgemm_tbe(rows: torch.Tensor, nbit: int, n_codes: int, *, row_alignment: int = 16) -> torch.Tensor:
    """Our row-fused ``rows`` -> FBGEMM TBE inference rows ``uint8 [R, E]``,
    ``E = round_up(4 + ceil(n_codes * nbit / 8), row_alignment)``, zero padded."""
    nbit = _fbgemm_nbit(nbit, (2, 4, 8))
    fmt.check_positive_int(row_alignment, "row_alignment", what=" (bytes)")
    codes, scale, shift = unpack_rows(rows, nbit, n_codes)
    data = pack(codes, nbit, dim=-1, container=torch.uint8, check=False)
    out = torch.cat([_bytes(torch.stack([scale, shift], -1)), data], -1)
    return F.pad(out, (0, -out.shape[1] % row_alignment))


# --- linear weights: zero points <-> shift ----------------------------------------------------------

def _shift_from_zero(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    # scale (fp16/bf16/fp32) times an integer < 2**9 is exact in float64; one rounding
    return (-(scale.to(torch.float64) * zero.to(torch.float64))).to(scale.dtype)


def _zero_from_shift(scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    _check_tensor(scale, "scale")
    _check_tensor(shift, "shift")
    if scale.shape != shift.shape:
        raise ValueError(f"`scale` and `shift` must have the same shape, got {list(scale.shape)} "
                         f"and {list(shift.shape)}")
    if bool((scale == 0).any()):
        raise ValueError("`scale` must be nonzero to recover integer zero points")
    z = torch.round(-shift.to(torch.float64) / scale.to(torch.float64))
    if not torch.equal(_shift_from_zero(scale, z), shift.to(scale.dtype)):
        raise ValueError("`shift` must be -scale*zero (rounded to scale's dtype) for integer zero "
                         "points, as from_gptq/from_awq produce")
    return z.to(torch.int64)


def _check_weight(t, name: str) -> torch.Tensor:
    _check_tensor(t, name)
    if t.dtype != torch.int32:
        raise TypeError(f"`{name}` must be an int32 tensor, got {t.dtype}")
    if t.dim() != 2:
        raise ValueError(f"`{name}` must be 2-D, got shape {list(t.shape)}")
    return t


def _gptq_nbit(nbit) -> int:
    nbit = _check_nbit(nbit)
    if nbit not in (2, 3, 4, 8):
        raise ValueError(f"`nbit` must be one of 2, 3, 4, 8 for GPTQ, got {nbit}")
    return nbit


def gptq_act_order_perm(g_idx: torch.Tensor, groups: int) -> Optional[torch.Tensor]:
    """The row order that makes an act-order GPTQ weight's groups contiguous.

    ``g_idx``: ``[K]`` integer tensor, ``g_idx[k]`` = the group (row of
    ``scales``/``qzeros``) of input row ``k``, each of the ``groups`` groups
    holding exactly ``K / groups`` rows (act-order / ``desc_act`` checkpoints
    store ``(i // group_size)`` permuted by the quantization order). Returns
    ``None`` when ``g_idx`` is already ``k // (K / groups)``, else the int32
    permutation ``perm`` (stable sort of ``g_idx``): row ``i`` of the reordered
    weight is row ``perm[i]`` of the checkpoint's, so that ``x @ W ==
    x[..., perm] @ W[perm]`` (what vLLM does for act-order, here done once at load).
    Reads ``g_idx`` on the host (one device sync; load time only)."""
    _check_tensor(g_idx, "g_idx")
    if g_idx.dtype.is_floating_point or g_idx.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise TypeError(f"`g_idx` must be an integer tensor, got {g_idx.dtype}")
    if g_idx.dim() != 1 or groups < 1 or g_idx.shape[0] % groups:
        raise ValueError(f"`g_idx` must be 1-D [K] with K a multiple of the {groups} groups, got shape "
                         f"{list(g_idx.shape)}")
    K = g_idx.shape[0]
    g = g_idx.to(torch.int64)
    if K and (int(g.min()) < 0 or int(g.max()) >= groups):
        raise ValueError(f"`g_idx` values must be group indices in [0, {groups}), got values in "
                         f"[{int(g.min())}, {int(g.max())}]")
    size = K // groups
    if not torch.equal(torch.bincount(g, minlength=groups), torch.full((groups,), size, device=g.device)):
        raise ValueError(f"`g_idx` must put exactly K / groups = {size} rows in every group "
                         "(per-group scales of equal groups)")
    if torch.equal(g, torch.arange(K, device=g.device) // size):
        return None
    return torch.sort(g, stable=True).indices.to(torch.int32)


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, nbit: int = 4,
              zeros_minus_one: bool = True, g_idx: Optional[torch.Tensor] = None, return_perm: bool = False):
    """GPTQ ``(qweight [K*nbit/32, N], qzeros [G, N*nbit/32], scales [G, N])`` ->
    ``(packed, scale, shift)`` with ``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]``,
    ``g = k // (K / G)``.

    ``packed`` is ``qweight`` itself: GPTQ's order is our int32 packing along K
    (dim 0; padded for 2/4/8 bits, dense for 3). ``scale = scales``;
    ``shift = -scale * zero`` rounded once to ``scales.dtype``, so our
    ``scale*q + shift`` rounds once more than GPTQ's ``(q - zero) * scale``.
    ``zeros_minus_one``: the classic AutoGPTQ checkpoints store ``zero - 1``
    (False for the "v2" format).

    ``g_idx`` (optional, ``[K]``): the group of each input row. The trivial
    ``k // (K / G)`` changes nothing. An act-order (``desc_act``) ``g_idx`` needs
    ``return_perm=True``: the rows of ``packed`` are then reordered by ``perm =``
    :func:`gptq_act_order_perm` so that groups are contiguous, and the result is
    ``(packed, scale, shift, perm)`` with ``x @ W == linear(x[..., perm], packed,
    scale, shift)`` (``perm`` is ``None`` for a trivial or absent ``g_idx``).
    """
    nbit = _gptq_nbit(nbit)
    _check_weight(qweight, "qweight")
    _check_weight(qzeros, "qzeros")
    _check_tensor(scales, "scales")
    if not scales.is_floating_point() or scales.dim() != 2:
        raise TypeError(f"`scales` must be a 2-D floating point tensor, got {scales.dtype} {list(scales.shape)}")
    dense = nbit == 3
    if dense and qweight.shape[0] % 3:
        raise ValueError(f"`qweight` must have a multiple of 3 rows for 3-bit GPTQ, got {qweight.shape[0]}")
    K = qweight.shape[0] * 32 // nbit
    G, N = scales.shape
    if qweight.shape[1] != N or qzeros.shape[0] != G or qzeros.shape[1] * 32 != N * nbit or G == 0 or K % G:
        raise ValueError(f"inconsistent GPTQ shapes: `qweight` {list(qweight.shape)}, `qzeros` "
                         f"{list(qzeros.shape)}, `scales` {list(scales.shape)} for nbit={nbit}")
    perm = None
    if g_idx is not None:
        if g_idx.shape != (K,):
            raise ValueError(f"`g_idx` must have shape [K] = [{K}] (from `qweight` {list(qweight.shape)}, "
                             f"nbit={nbit}), got {list(g_idx.shape)}")
        perm = gptq_act_order_perm(g_idx, G)
        if perm is not None and not return_perm:
            raise ValueError("`g_idx` is an act-order (desc_act) permutation, not k // group_size: pass "
                             "return_perm=True and gather the activations x[..., perm] (or use "
                             "QuantizedLinear.from_gptq, which does)")
    zero = unpack(qzeros, nbit, dim=-1, dense=dense, dtype=torch.int32) + int(zeros_minus_one)
    packed = qweight
    if perm is not None:
        codes = unpack(qweight, nbit, dim=0, dense=dense)
        packed = pack(codes[perm.to(qweight.device).long()], nbit, dim=0, container=torch.int32, dense=dense,
                      check=False)
    out = (packed, scales, _shift_from_zero(scales, zero))
    return out + (perm,) if return_perm else out


def to_gptq(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, nbit: int = 4,
            zeros_minus_one: bool = True) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`from_gptq`: ``packed`` int32 along K (dim 0; dense for 3
    bits), ``scale``/``shift`` ``[G, N]`` with ``shift = -scale * zero`` for integer
    zeros -> ``(qweight, qzeros, scales)``. Zeros must fit ``nbit`` bits as stored
    (``[1, 2**nbit]`` with ``zeros_minus_one``, else ``[0, 2**nbit)``)."""
    nbit = _gptq_nbit(nbit)
    _check_weight(packed, "packed")
    zero = _zero_from_shift(scale, shift) - int(zeros_minus_one)
    if bool(((zero < 0) | (zero >= 1 << nbit)).any()):
        lo = int(zeros_minus_one)
        raise ValueError(f"`shift`: zero points must be in [{lo}, {(1 << nbit) - 1 + lo}] to be stored "
                         f"in {nbit}-bit GPTQ qzeros (zeros_minus_one={zeros_minus_one})")
    qzeros = pack(zero, nbit, dim=-1, container=torch.int32, dense=nbit == 3, check=False)
    return packed, qzeros, scale


def _awq_nbit(nbit) -> int:
    nbit = _check_nbit(nbit)
    if nbit != 4:
        raise ValueError(f"`nbit` must be 4 for AWQ (its nibble order is defined for 4 bits), got {nbit}")
    return nbit


def _awq_to_natural(slots: torch.Tensor) -> torch.Tensor:
    """[..., N] codes in AWQ nibble-slot order -> natural column order."""
    idx = torch.tensor(_AWQ_INVERSE, device=slots.device)
    return slots.reshape(*slots.shape[:-1], -1, 8)[..., idx].reshape(slots.shape)


def _natural_to_awq(codes: torch.Tensor) -> torch.Tensor:
    idx = torch.tensor(AWQ_ORDER, device=codes.device)
    return codes.reshape(*codes.shape[:-1], -1, 8)[..., idx].reshape(codes.shape)


def _check_packed_dim(packed_dim) -> int:
    if packed_dim not in (0, 1) or isinstance(packed_dim, bool):
        raise ValueError(f"`packed_dim` must be 0 (pack along K) or 1 (along N), got {packed_dim!r}")
    return packed_dim


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, *, nbit: int = 4,
             packed_dim: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ GEMM ``(qweight [K, N/8], qzeros [G, N/8], scales [G, N])`` ->
    ``(packed, scale, shift)`` with ``W = scale * q + shift``.

    ``packed``: int32 in our order, along N (``packed_dim=1``: ``[K, N/8]``, the
    nibbles de-interleaved) or along K (``packed_dim=0``: ``[K/8, N]``).
    ``shift = -scale * zero`` rounded once to ``scales.dtype`` (one rounding more
    than AWQ's ``(q - zero) * scale``).
    """
    nbit = _awq_nbit(nbit)
    _check_weight(qweight, "qweight")
    _check_weight(qzeros, "qzeros")
    _check_tensor(scales, "scales")
    packed_dim = _check_packed_dim(packed_dim)
    if not scales.is_floating_point() or scales.dim() != 2:
        raise TypeError(f"`scales` must be a 2-D floating point tensor, got {scales.dtype} {list(scales.shape)}")
    K = qweight.shape[0]
    G, N = scales.shape
    if qweight.shape[1] * 8 != N or qzeros.shape != (G, N // 8) or G == 0 or K % G:
        raise ValueError(f"inconsistent AWQ shapes: `qweight` {list(qweight.shape)}, `qzeros` "
                         f"{list(qzeros.shape)}, `scales` {list(scales.shape)}")
    codes = _awq_to_natural(unpack(qweight, 4, dim=-1))  # [K, N]
    zero = _awq_to_natural(unpack(qzeros, 4, dim=-1, dtype=torch.int32))
    packed = pack(codes, 4, dim=packed_dim, container=torch.int32, check=False)
    return packed, scales, _shift_from_zero(scales, zero)


def to_awq(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, nbit: int = 4,
           packed_dim: int = 1) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`from_awq` -> ``(qweight, qzeros, scales)``; zeros must be
    integers in ``[0, 16)``."""
    nbit = _awq_nbit(nbit)
    _check_weight(packed, "packed")
    packed_dim = _check_packed_dim(packed_dim)
    zero = _zero_from_shift(scale, shift)
    if bool(((zero < 0) | (zero > 15)).any()):
        raise ValueError("`shift`: zero points must be in [0, 15] to be stored in AWQ qzeros")
    codes = unpack(packed, 4, dim=packed_dim)
    if codes.shape[1] % 8:
        raise ValueError(f"N must be a multiple of 8 for AWQ, got {codes.shape[1]}")
    qweight = pack(_natural_to_awq(codes), 4, dim=-1, container=torch.int32, check=False)
    qzeros = pack(_natural_to_awq(zero), 4, dim=-1, container=torch.int32, check=False)
    return qweight, qzeros, scale
