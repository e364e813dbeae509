"""Host ops: torch tensors in, torch tensors out.

Each op is a ``torch.library`` custom op (``torch.ops.triton_dequant.*``) with a
fake (meta) implementation, so it works under ``torch.compile(fullgraph=True)``
and with fake tensors. CUDA tensors run the Triton kernels in
:mod:`triton_dequant.kernels`; CPU tensors run the exact references in
:mod:`triton_dequant.reference`. The Python wrappers check arguments and raise
``TypeError`` / ``ValueError`` / ``IndexError`` naming the argument.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import reference as ref

__all__ = ["dequantize", "dequantize_rows", "embedding_bag", "linear"]

_CONTAINER_BITS = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.uint16: 16,
                   torch.int32: 32, torch.uint32: 32}
_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEADER = {8: 4, 16: 2, 32: 1}  # container elements holding the fp16 scale + shift


# --- argument checks --------------------------------------------------------------------

def _check_container(name: str, t: torch.Tensor) -> int:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _CONTAINER_BITS:
        raise TypeError(f"`{name}` must be an integer container tensor (int8/uint8, int16/uint16, "
                        f"int32/uint32), got {t.dtype}")
    return _CONTAINER_BITS[t.dtype]


def _check_nbit(nbit, width: int) -> int:
    if isinstance(nbit, bool) or not isinstance(nbit, int) or nbit not in (1, 2, 4, 8):
        raise ValueError(f"`nbit` must be one of 1, 2, 4, 8, got {nbit!r}")
    if width % nbit:
        raise ValueError(f"`nbit` ({nbit}) must divide the container width ({width} bits)")
    return nbit


def _check_dtype(name: str, dtype, allowed=_OUT_DTYPES):
    if dtype not in allowed:
        raise TypeError(f"`{name}` must be one of {', '.join(str(d) for d in allowed)}, got {dtype}")


def _as_tensor(name: str, v, device) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point() or v.dtype not in _OUT_DTYPES:
            raise TypeError(f"`{name}` must be a float or a fp16/bf16/fp32 tensor, got {v.dtype}")
        if v.device != device:
            raise ValueError(f"`{name}` is on {v.device} but the packed tensor is on {device}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"`{name}` must be a float or a tensor, got {type(v).__name__}")
    return torch.tensor(float(v), dtype=torch.float32, device=device)


def _same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            raise ValueError(f"`{n}` is on {d}, expected {first} like the other inputs")


def _dim(name: str, dim: int, ndim: int) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or not -ndim <= dim < ndim:
        raise ValueError(f"`{name}` must be an int in [{-ndim}, {ndim}), got {dim!r}")
    return dim % ndim


def _direct(*tensors) -> bool:
    """Eager call on real CUDA tensors: launch the kernel directly and skip the
    dispatcher's per-call cost (tens of microseconds, as much as a decode GEMV).
    Tracing (torch.compile) and tensor subclasses (fake, functional) go through
    the registered custom op."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or (type(t) is torch.Tensor and t.is_cuda) for t in tensors)


# --- dequantize --------------------------------------------------------------------------

@torch.library.custom_op("triton_dequant::dequantize", mutates_args=())
def _dequantize_op(packed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
                   dtype: torch.dtype, dim: int, signed: bool) -> torch.Tensor:
    if packed.device.type == "cuda":
        from .kernels import dequant
        return dequant.dequantize(packed, scale, shift, nbit, dtype, dim, signed)
    return ref.dequantize(packed, scale, shift, nbit, dtype, axis=dim, signed=signed)


@_dequantize_op.register_fake
def _(packed, scale, shift, nbit, dtype, dim, signed):
    shape = list(packed.shape)
    shape[dim] *= _CONTAINER_BITS[packed.dtype] // nbit
    return packed.new_empty(shape, dtype=dtype)


def dequantize(packed: torch.Tensor, scale, shift, nbit: int, dtype: torch.dtype = torch.float16,
               dim: int = -1, signed: bool = False) -> torch.Tensor:
    """``scale * q + shift`` for every code of ``packed`` (rounded once to ``dtype``).

    ``packed``: integer container tensor, ``PER = bits // nbit`` codes per element,
    code ``j`` at bits ``[j*nbit, (j+1)*nbit)``. Returns ``packed.shape`` with
    ``dim`` multiplied by ``PER`` (index ``i*PER + j``). ``scale``/``shift``:
    numbers or fp16/bf16/fp32 tensors broadcastable to the output."""
    width = _check_container("packed", packed)
    _check_nbit(nbit, width)
    _check_dtype("dtype", dtype)
    if packed.dim() == 0:
        raise ValueError("`packed` must have at least one dimension")
    dim = _dim("dim", dim, packed.dim())
    out_shape = list(packed.shape)
    out_shape[dim] *= width // nbit
    s = _as_tensor("scale", scale, packed.device)
    h = _as_tensor("shift", shift, packed.device)
    for name, t in (("scale", s), ("shift", h)):
        try:
            torch.broadcast_shapes(t.shape, out_shape)
        except RuntimeError:
            raise ValueError(f"`{name}` of shape {list(t.shape)} is not broadcastable to the output "
                             f"shape {out_shape}") from None
        if t.dim() > len(out_shape):
            raise ValueError(f"`{name}` has more dimensions ({t.dim()}) than the output ({len(out_shape)})")
    if _direct(packed, s, h):
        from .kernels import dequant
        return dequant.dequantize(packed, s, h, nbit, dtype, dim, signed)
    return _dequantize_op(packed, s, h, nbit, dtype, dim, signed)


# --- dequantize_rows ------------------------------------------------------------------------

@torch.library.custom_op("triton_dequant::dequantize_rows", mutates_args=())
def _dequantize_rows_op(rows: torch.Tensor, nbit: int, dtype: torch.dtype, dim: int,
                        signed: bool) -> torch.Tensor:
    if rows.device.type == "cuda":
        from .kernels import dequant
        return dequant.dequantize_rows(rows, nbit, dtype, dim, signed)
    return ref.dequantize_rows(rows, nbit, dtype, dim=dim, signed=signed)


@_dequantize_rows_op.register_fake
def _(rows, nbit, dtype, dim, signed):
    return rows.new_empty((rows.shape[0], dim), dtype=dtype)


def _rows_dim(rows: torch.Tensor, nbit: int, dim: Optional[int]) -> int:
    width = _check_container("rows", rows)
    _check_nbit(nbit, width)
    if rows.dim() != 2:
        raise ValueError(f"`rows` must be 2-D [rows, elements], got shape {list(rows.shape)}")
    capacity = (rows.shape[1] - _HEADER[width]) * (width // nbit)
    if capacity < 0:
        raise ValueError(f"`rows` rows of {rows.shape[1]} elements cannot hold the fp16 scale/shift header")
    if dim is None:
        return capacity
    if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim <= capacity:
        raise ValueError(f"`dim` must be an int in [0, {capacity}] for these rows, got {dim!r}")
    return dim


def dequantize_rows(rows: torch.Tensor, nbit: int, dtype: torch.dtype = torch.float16,
                    dim: Optional[int] = None, signed: bool = False) -> torch.Tensor:
    """Dequantize the row-fused format ``[scale fp16, shift fp16, data...]``.

    ``rows``: ``[R, E]`` container tensor; int32 element 0 holds scale (low 16 bits)
    and shift (high 16 bits), int16 elements 0-1, uint8 bytes 0-3; data follows.
    Returns ``[R, dim]`` of ``dtype`` (``dim`` defaults to every code of the row)."""
    dim = _rows_dim(rows, nbit, dim)
    _check_dtype("dtype", dtype)
    if _direct(rows):
        from .kernels import dequant
        return dequant.dequantize_rows(rows, nbit, dtype, dim, signed)
    return _dequantize_rows_op(rows, nbit, dtype, dim, signed)


# --- embedding_bag ----------------------------------------------------------------------------

@torch.library.custom_op("triton_dequant::embedding_bag", mutates_args=())
def _embedding_bag_op(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, nbit: int,
                      mode: str, per_sample_weights: Optional[torch.Tensor], dim: int, dtype: torch.dtype,
                      include_last_offset: bool, signed: bool, check_indices: bool) -> torch.Tensor:
    if check_indices and indices.numel():
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= rows.shape[0]:
            raise IndexError(f"`indices` must be in [0, {rows.shape[0]}), got values in [{lo}, {hi}]")
    if rows.device.type == "cuda":
        from .kernels import embedding_bag as eb
        return eb.embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype,
                                include_last_offset, signed)
    return ref.embedding_bag(rows, indices, offsets, nbit, mode=mode, per_sample_weights=per_sample_weights,
                             dim=dim, dtype=dtype, include_last_offset=include_last_offset, signed=signed)


@_embedding_bag_op.register_fake
def _(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype, include_last_offset, signed,
      check_indices):
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return rows.new_empty((bags, dim), dtype=dtype)


def embedding_bag(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, nbit: int,
                  mode: str = "sum", per_sample_weights: Optional[torch.Tensor] = None,
                  dim: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  include_last_offset: bool = False, signed: bool = False,
                  check_indices: bool = True) -> torch.Tensor:
    """Pooled lookups in a row-fused n-bit table (like FBGEMM's n-bit TBE forward).

    ``rows``: ``[T, E]`` row-fused table (see :func:`dequantize_rows`); ``indices``:
    1-D int32/int64 row ids; ``offsets``: bag starts (``torch.nn.functional.embedding_bag``
    convention, ``include_last_offset`` likewise); ``mode``: ``"sum"`` or ``"mean"``;
    ``per_sample_weights``: optional, one per index (``"sum"`` only). Rows are
    dequantized to fp16, accumulated in fp32. Returns ``[bags, dim]`` of ``dtype``
    (fp16 or fp32). ``check_indices`` (one device sync) raises ``IndexError`` for
    out-of-range ids."""
    dim = _rows_dim(rows, nbit, dim)
    for name, t in (("indices", indices), ("offsets", offsets)):
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(f"`{name}` must be a 1-D int32/int64 tensor")
    if mode not in ("sum", "mean"):
        raise ValueError(f"`mode` must be 'sum' or 'mean', got {mode!r}")
    _check_dtype("dtype", dtype, (torch.float16, torch.float32))
    if per_sample_weights is not None:
        if mode != "sum":
            raise ValueError("`per_sample_weights` is only supported with mode='sum'")
        if per_sample_weights.shape != indices.shape or not per_sample_weights.is_floating_point():
            raise ValueError(f"`per_sample_weights` must be a float tensor shaped like `indices` "
                             f"{list(indices.shape)}, got {per_sample_weights.dtype} {list(per_sample_weights.shape)}")
    if include_last_offset and offsets.numel() == 0:
        raise ValueError("`offsets` must not be empty with include_last_offset=True")
    _same_device(rows=rows, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    return _embedding_bag_op(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype,
                             include_last_offset, signed, check_indices)


# --- linear --------------------------------------------------------------------------------------

@torch.library.custom_op("triton_dequant::linear", mutates_args=())
def _linear_op(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
               group_size: int, packed_dim: int, signed: bool, layout: str = "",
               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if x.device.type == "cuda":
        from .kernels import linear as lin
        return lin.linear(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, layout=layout or None,
                          bias=bias)
    from . import _cpu
    if layout:  # prepacked codes read back as one code per 8-bit container
        from . import layouts
        qweight = layouts.plain_codes(qweight, layout, x.shape[-1], scale.shape[-1], signed)
        nbit, packed_dim = 8, 0
    return _cpu.linear(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, bias=bias)


@_linear_op.register_fake
def _(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, layout="", bias=None):
    if layout:
        return x.new_empty((*x.shape[:-1], scale.shape[-1]))
    per = _CONTAINER_BITS[qweight.dtype] // nbit
    n = qweight.shape[1] * (per if packed_dim == 1 else 1)
    return x.new_empty((*x.shape[:-1], n))


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
           group_size: Optional[int] = None, packed_dim: int = 0, signed: bool = False, *,
           layout=None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weight-only low-bit matmul ``x @ W + bias``, ``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]``.

    ``x``: ``[..., K]``, fp16/bf16 (CUDA and CPU) or fp32 (CPU only). ``qweight``: codes
    of the logical ``[K, N]`` weight packed along K (``packed_dim=0``: ``[K / PER, N]``)
    or along N (``packed_dim=1``: ``[K, N / PER]``), or, with ``layout`` (a
    :class:`triton_dequant.layouts.MmaLayout` or its name), prepacked by
    :func:`triton_dequant.layouts.prepack` (int32 ``[N_tiles, K_tiles, words]``; K
    is then taken from ``x`` and N from ``scale``). ``scale``/``shift``: ``[N]`` per
    output channel, or ``[K / group_size, N]`` per group of ``group_size`` rows of K.
    ``bias``: optional ``[N]``, added to the fp32 sums. Returns ``[..., N]`` of ``x.dtype``.

    Rounding: scale/shift are rounded to ``x.dtype``, then W is the exact
    ``scale * q + shift`` rounded once to ``x.dtype`` (fp32 for fp32 ``x``); the
    products are accumulated in fp32 and the result rounded once to ``x.dtype``.
    On CUDA the Triton kernels do that (the per-channel default applies scale and
    shift to the fp32 sums instead). On the CPU W is dequantized exactly
    (:func:`triton_dequant.reference.linear_weight` bit for bit) in blocks of K rows,
    each multiplied by torch's matmul (BLAS) into an fp32 accumulator; fp16/bf16 ``x``
    are computed in fp32 (x and W widen exactly) and the result rounded once."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _OUT_DTYPES:
        raise TypeError(f"`x` must be a fp16, bf16 or (on the CPU) fp32 tensor, "
                        f"got {getattr(x, 'dtype', type(x).__name__)}")
    lay = None
    if layout is not None:
        from . import layouts
        try:
            lay = layouts.as_layout(layout)
        except (TypeError, ValueError) as e:
            raise type(e)(f"`layout`: {e}") from None
        if nbit != lay.nbit:
            raise ValueError(f"`nbit` ({nbit!r}) must be the layout's ({lay.nbit}, {lay.name})")
        if packed_dim != 0:
            raise ValueError("`packed_dim` does not apply to prepacked weights (leave it 0)")
        if x.dim() == 0:
            raise ValueError("`x` must have at least one dimension")
        if not isinstance(scale, torch.Tensor) or scale.dim() not in (1, 2):
            raise ValueError("`scale` must be a [N] or [K / group_size, N] tensor")
        K, N = x.shape[-1], scale.shape[-1]
        lay.check_data(qweight, K, N)
        per = lay.per
    else:
        width = _check_container("qweight", qweight)
        _check_nbit(nbit, width)
        if qweight.dim() != 2:
            raise ValueError(f"`qweight` must be 2-D, got shape {list(qweight.shape)}")
        if packed_dim not in (0, 1):
            raise ValueError(f"`packed_dim` must be 0 (packed along K) or 1 (along N), got {packed_dim!r}")
        per = width // nbit
        K = qweight.shape[0] * (per if packed_dim == 0 else 1)
        N = qweight.shape[1] * (per if packed_dim == 1 else 1)
        if x.dim() == 0 or x.shape[-1] != K:
            raise ValueError(f"`x` must have last dimension K={K} (from `qweight` {list(qweight.shape)} with "
                             f"nbit={nbit}, packed_dim={packed_dim}), got shape {list(x.shape)}")
    if x.dtype == torch.float32 and x.device.type != "cpu":
        raise TypeError(f"`x` must be fp16 or bf16 on {x.device.type} (fp32 `x` is supported on the CPU only)")
    for name, t in (("scale", scale), ("shift", shift)):
        if not isinstance(t, torch.Tensor) or t.dtype not in _OUT_DTYPES:
            raise TypeError(f"`{name}` must be a fp16/bf16/fp32 tensor")
        if t.shape[-1] != N or t.dim() > 2:
            raise ValueError(f"`{name}` must be [N] or [K / group_size, N] with N={N}, got {list(t.shape)}")
    groups = scale.shape[0] if scale.dim() == 2 else 1
    if shift.shape != scale.shape:
        raise ValueError(f"`shift` must have the shape of `scale` {list(scale.shape)}, got {list(shift.shape)}")
    if group_size is None:
        group_size = K // groups if K % groups == 0 else 0
    if group_size <= 0 or group_size * groups != K:
        raise ValueError(f"`group_size` {group_size} x {groups} groups must equal K={K}")
    if lay is None and groups > 1 and group_size % per and packed_dim == 0:
        raise ValueError(f"`group_size` ({group_size}) must be a multiple of the codes per element ({per})")
    if lay is not None and groups > 1:
        lay.check_group_size(group_size)
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.dtype not in _OUT_DTYPES
                             or tuple(bias.shape) != (N,)):
        raise ValueError(f"`bias` must be a [N] fp16/bf16/fp32 tensor with N={N}, got "
                         f"{getattr(bias, 'dtype', type(bias).__name__)} {list(getattr(bias, 'shape', []))}")
    _same_device(x=x, qweight=qweight, scale=scale, shift=shift, bias=bias)
    if _direct(x, qweight, scale, shift, bias):
        from .kernels import linear as lin
        return lin.linear(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, layout=lay, bias=bias)
    return _linear_op(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, lay.name if lay else "", bias)
