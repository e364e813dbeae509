"""Host ops: torch tensors in, torch tensors out.

Each op is a ``torch.library`` custom op (``torch.ops.triton_dequant.*``) with a
fake (meta) implementation, so it works under ``torch.compile(fullgraph=True)``
and with fake tensors. CUDA tensors run the Triton kernels in
:mod:`triton_dequant.kernels`; CPU tensors run :mod:`triton_dequant._cpu` (exact
like :mod:`triton_dequant.reference`, sized for development). The Python wrappers
check every argument and raise ``TypeError`` (wrong type) / ``ValueError`` (wrong
value) naming it; out-of-range embedding ids raise ``IndexError``.

Sizes: ``dequantize``, ``dequantize_rows`` and ``embedding_bag`` handle tensors, rows and
lookup streams past 2**31 elements (int64 offsets where a product can pass 2**31, chosen
per launch; int64 ``offsets``/``indices`` are never truncated); the limit is the CUDA grid,
2**31 - 1 programs (2**42 outputs at the default tiles; ``embedding_bag``: bags x column
blocks). The CPU paths have no limit of their own.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import formats as fmt
from . import reference as ref

__all__ = ["dequantize", "dequantize_rows", "embedding_bag", "linear"]


# --- argument checks --------------------------------------------------------------------

def _as_tensor(name: str, v, device, dtype: torch.dtype) -> torch.Tensor:
    """A scale/shift: a fp16/bf16/fp32 tensor as given, or a Python number rounded once
    to the output ``dtype`` (a 0-d tensor of ``dtype`` holding that value)."""
    if isinstance(v, torch.Tensor):
        if v.dtype not in fmt.OUT_DTYPES:
            raise TypeError(f"`{name}` must be a Python number or a fp16/bf16/fp32 tensor, got a {v.dtype} tensor")
        if v.device != device:
            raise ValueError(f"`{name}` is on {v.device} but `packed` is on {device}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"`{name}` must be a Python number or a fp16/bf16/fp32 tensor, got {type(v).__name__}")
    return torch.tensor(ref.round_scalar(v, dtype), dtype=dtype, device=device)  # exact: representable


def _same_device(**tensors):
    devs = {n: t.device for n, t in tensors.items() if t is not None}
    first = next(iter(devs.values()))
    for n, d in devs.items():
        if d != first:
            raise ValueError(f"`{n}` is on {d}, expected {first} like the other inputs")


def _plain(*tensors) -> bool:
    """Eager call on real tensors (any device): the custom op's body may run directly."""
    if torch.compiler.is_compiling():
        return False
    return all(t is None or type(t) is torch.Tensor for t in tensors)


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
    from . import _cpu
    return _cpu.dequantize(packed, scale, shift, nbit, dtype, dim, signed)


@_dequantize_op.register_fake
def _(packed, scale, shift, nbit, dtype, dim, signed):
    shape = list(packed.shape)
    shape[dim] *= fmt.CONTAINER_BITS[packed.dtype] // nbit
    return packed.new_empty(shape, dtype=dtype)


def dequantize(packed: torch.Tensor, scale, shift, nbit: int, dtype: torch.dtype = torch.float16,
               dim: int = -1, signed: bool = False) -> torch.Tensor:
    """``scale * q + shift`` for every code of ``packed``, rounded once to ``dtype``.

    ``packed``: integer container tensor (at least 1-d), ``PER = bits // nbit`` codes
    per element, code ``j`` at bits ``[j*nbit, (j+1)*nbit)``. Returns ``packed.shape``
    with ``dim`` multiplied by ``PER`` (index ``i*PER + j``). ``scale``/``shift``:
    Python numbers (rounded once to ``dtype``) or fp16/bf16/fp32 tensors broadcastable
    to the output (rounded to ``dtype`` first, as ``tl.dequantize`` does); the result
    is the exact ``scale*q + shift`` rounded once. ``signed`` reads two's complement
    codes. The device builtin for kernels is ``tl.dequantize``."""
    width = fmt.check_container(packed, "packed")
    fmt.check_nbit(nbit, width=width)
    fmt.check_dtype(dtype, "dtype")
    if packed.dim() == 0:
        raise ValueError("`packed` must have at least one dimension")
    dim = fmt.check_dim(dim, packed.dim())
    fmt.check_bool(signed, "signed")
    out_shape = list(packed.shape)
    out_shape[dim] *= width // nbit
    s = _as_tensor("scale", scale, packed.device, dtype)
    h = _as_tensor("shift", shift, packed.device, dtype)
    for name, t in (("scale", s), ("shift", h)):
        if t.dim() > len(out_shape):
            raise ValueError(f"`{name}` has more dimensions ({t.dim()}) than the output ({len(out_shape)})")
        try:
            torch.broadcast_shapes(t.shape, out_shape)
        except RuntimeError:
            raise ValueError(f"`{name}` of shape {list(t.shape)} is not broadcastable to the output "
                             f"shape {out_shape}") from None
    if _direct(packed, s, h):
        from .kernels import dequant
        return dequant.dequantize(packed, s, h, nbit, dtype, dim, signed)
    return _dequantize_op(packed, s, h, nbit, dtype, dim, signed)


# --- dequantize_rows ------------------------------------------------------------------------

@torch.library.custom_op("triton_dequant::dequantize_rows", mutates_args=())
def _dequantize_rows_op(rows: torch.Tensor, nbit: int, dtype: torch.dtype, n_codes: int,
                        signed: bool) -> torch.Tensor:
    if rows.device.type == "cuda":
        from .kernels import dequant
        return dequant.dequantize_rows(rows, nbit, dtype, n_codes, signed)
    from . import _cpu
    return _cpu.dequantize_rows(rows, nbit, dtype, n_codes, signed)


@_dequantize_rows_op.register_fake
def _(rows, nbit, dtype, n_codes, signed):
    return rows.new_empty((rows.shape[0], n_codes), dtype=dtype)


def _rows_n_codes(rows: torch.Tensor, nbit: int, n_codes: Optional[int]) -> int:
    width = fmt.check_container(rows, "rows")
    fmt.check_nbit(nbit, width=width)
    if rows.dim() != 2:
        raise ValueError(f"`rows` must be 2-D [rows, elements], got shape {list(rows.shape)}")
    capacity = (rows.shape[1] - fmt.header_elems(width)) * (width // nbit)
    if capacity < 0:
        raise ValueError(f"`rows` rows of {rows.shape[1]} elements cannot hold the "
                         f"{fmt.ROW_HEADER_BYTES}-byte fp16 scale/shift header")
    if n_codes is None:
        return capacity
    return fmt.check_int(n_codes, "n_codes", 0, capacity, what=" (the codes a row holds after its header)")


def dequantize_rows(rows: torch.Tensor, nbit: int, dtype: torch.dtype = torch.float16,
                    n_codes: Optional[int] = None, signed: bool = False) -> torch.Tensor:
    """Dequantize the row-fused format ``[scale fp16, shift fp16, data...]``
    (:mod:`triton_dequant.formats`).

    ``rows``: ``[R, E]`` container tensor; int32 element 0 holds scale (low 16 bits)
    and shift (high 16 bits), int16 elements 0-1, 8-bit bytes 0-3; data follows.
    Returns ``[R, n_codes]`` of ``dtype`` (``n_codes`` defaults to every code of the row)."""
    n_codes = _rows_n_codes(rows, nbit, n_codes)
    fmt.check_dtype(dtype, "dtype")
    fmt.check_bool(signed, "signed")
    if _direct(rows):
        from .kernels import dequant
        return dequant.dequantize_rows(rows, nbit, dtype, n_codes, signed)
    return _dequantize_rows_op(rows, nbit, dtype, n_codes, signed)


# --- embedding_bag ----------------------------------------------------------------------------

def check_offsets(offsets: torch.Tensor, n_indices: int, include_last_offset: bool) -> None:
    """torch's ``F.embedding_bag`` rules (one device sync): ``offsets[0] == 0``,
    non-decreasing, ``offsets[-1] <= len(indices)`` (``== len(indices)`` with
    ``include_last_offset``: torch's definition of that flag; its own sum, mean and
    weighted results disagree otherwise)."""
    if offsets.numel() == 0:
        return
    bad_order = (offsets[1:] < offsets[:-1]).any() if offsets.numel() > 1 else offsets.new_zeros((), dtype=torch.bool)
    first, last, bad_order = torch.stack([offsets[0].long(), offsets[-1].long(), bad_order.long()]).tolist()
    if first != 0:
        raise ValueError(f"`offsets[0]` must be 0 (bag 0 starts at the first index, as in F.embedding_bag), "
                         f"got {first}")
    if bad_order:
        raise ValueError("`offsets` must be non-decreasing")
    if include_last_offset and last != n_indices:
        raise ValueError(f"`offsets[-1]` must be len(indices) = {n_indices} with include_last_offset=True, got {last}")
    if last > n_indices:
        raise ValueError(f"`offsets` must be <= len(indices) = {n_indices}, got offsets[-1] = {last}")


def _embedding_bag_impl(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype,
                        include_last_offset, signed, check_indices):
    cpu = rows.device.type == "cpu"
    if check_indices or cpu:  # the CPU path always checks: it costs no device sync there
        check_offsets(offsets, indices.numel(), include_last_offset)
        if indices.numel():
            lo, hi = torch.aminmax(indices)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= rows.shape[0]:
                raise IndexError(f"`indices` must be in [0, {rows.shape[0]}), got values in [{lo}, {hi}]")
    if not cpu:
        from .kernels import embedding_bag as eb
        return eb.embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype,
                                include_last_offset, signed)
    from . import _cpu
    return _cpu.embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype,
                              include_last_offset, signed)


@torch.library.custom_op("triton_dequant::embedding_bag", mutates_args=())
def _embedding_bag_op(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, nbit: int,
                      mode: str, per_sample_weights: Optional[torch.Tensor], n_codes: int, dtype: torch.dtype,
                      include_last_offset: bool, signed: bool, check_indices: bool) -> torch.Tensor:
    return _embedding_bag_impl(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype,
                               include_last_offset, signed, check_indices)


@_embedding_bag_op.register_fake
def _(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype, include_last_offset, signed,
      check_indices):
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    return rows.new_empty((bags, n_codes), dtype=dtype)


def embedding_bag(rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, nbit: int,
                  mode: str = "sum", per_sample_weights: Optional[torch.Tensor] = None,
                  n_codes: Optional[int] = None, dtype: torch.dtype = torch.float32,
                  include_last_offset: bool = False, signed: bool = False,
                  check_indices: bool = True) -> torch.Tensor:
    """Pooled lookups in a row-fused n-bit table (like FBGEMM's n-bit TBE forward).

    ``rows``: ``[T, E]`` row-fused table (see :func:`dequantize_rows`); ``indices``:
    1-D int32/int64 row ids; ``offsets``: 1-D int32/int64 bag starts, as in
    ``torch.nn.functional.embedding_bag``: ``offsets[0] == 0``, non-decreasing, at most
    ``len(indices)``; bag ``b`` is ``indices[offsets[b]:offsets[b+1]]``, the last one
    ends at ``len(indices)``; with ``include_last_offset`` there is one bag less and
    ``offsets[-1]`` must be ``len(indices)``. Any length works (64-bit offsets stay
    64-bit). ``mode``: ``"sum"`` or ``"mean"`` (an empty bag gives zeros);
    ``per_sample_weights``: optional float tensor, one per index (``"sum"`` only).
    Rows are dequantized to fp16 exactly, then weighted and summed (fp32 on CUDA,
    float64 on the CPU) and rounded once to ``dtype`` (fp16 or fp32). Returns
    ``[bags, n_codes]``. ``check_indices``: validate ``indices`` (``IndexError``) and
    ``offsets`` (``ValueError``) first; on CUDA that costs one device sync (pass False
    in CUDA graphs; invalid input then gives unspecified values, never an
    out-of-bounds access). The CPU path always validates."""
    n_codes = _rows_n_codes(rows, nbit, n_codes)
    for name, t in (("indices", indices), ("offsets", offsets)):
        fmt.check_tensor(t, name)
        if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
            raise TypeError(f"`{name}` must be a 1-D int32/int64 tensor, got a {t.dim()}-d {t.dtype} tensor")
    if mode not in ("sum", "mean"):
        raise ValueError(f"`mode` must be 'sum' or 'mean', got {mode!r}")
    fmt.check_dtype(dtype, "dtype", (torch.float16, torch.float32))
    fmt.check_bool(include_last_offset, "include_last_offset")
    fmt.check_bool(signed, "signed")
    fmt.check_bool(check_indices, "check_indices")
    if per_sample_weights is not None:
        fmt.check_tensor(per_sample_weights, "per_sample_weights")
        if mode != "sum":
            raise ValueError("`per_sample_weights` is only supported with mode='sum'")
        if per_sample_weights.shape != indices.shape or not per_sample_weights.is_floating_point():
            raise ValueError(f"`per_sample_weights` must be a float tensor shaped like `indices` "
                             f"{list(indices.shape)}, got {per_sample_weights.dtype} {list(per_sample_weights.shape)}")
    if include_last_offset and offsets.numel() == 0:
        raise ValueError("`offsets` must not be empty with include_last_offset=True")
    _same_device(rows=rows, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    op = _embedding_bag_impl if _plain(rows, indices, offsets, per_sample_weights) else _embedding_bag_op
    return op(rows, indices, offsets, nbit, mode, per_sample_weights, n_codes, dtype, include_last_offset, signed,
              check_indices)


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
    per = fmt.CONTAINER_BITS[qweight.dtype] // nbit
    n = qweight.shape[1] * (per if packed_dim == 1 else 1)
    return x.new_empty((*x.shape[:-1], n))


def _linear_group_size(scale: torch.Tensor, K: int, N: int, per: int, packed_dim: int, group_size) -> int:
    """The checked group size (K itself for per-channel scales)."""
    if group_size is not None:
        fmt.check_positive_int(group_size, "group_size")
    if K == 0:  # an empty sum: zeros, whatever the (empty or per-channel) grouping
        if scale.dim() == 2 and scale.shape[0] > 1:
            raise ValueError(f"`scale` must have K / group_size rows for K=0, got {scale.shape[0]}")
        return group_size or 1
    if scale.dim() == 1 or scale.shape[0] == 1:
        if group_size is not None and group_size != K:
            raise ValueError(f"`group_size` must be None or K={K} for per-channel `scale` {list(scale.shape)}, "
                             f"got {group_size}")
        return K
    groups = scale.shape[0]
    if groups == 0 or K % groups:
        raise ValueError(f"`scale` must have K / group_size rows for K={K}, got {groups}")
    if group_size is None:
        group_size = K // groups
    if group_size * groups != K:
        raise ValueError(f"`group_size` ({group_size}) x {groups} groups (`scale` rows) must equal K={K}")
    if packed_dim == 0 and group_size % per:
        raise ValueError(f"`group_size` ({group_size}) must be a multiple of the codes per element ({per}) "
                         f"when packed along K")
    return group_size


def linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, nbit: int,
           group_size: Optional[int] = None, packed_dim: int = 0, signed: bool = False, *,
           layout=None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Weight-only low-bit matmul ``x @ W + bias``, ``W[k, n] = scale[g, n] * q[k, n] + shift[g, n]``.

    ``x``: ``[..., K]``, fp16/bf16 (CUDA and CPU) or fp32 (CPU only). ``qweight``: codes
    of the logical ``[K, N]`` weight packed along K (``packed_dim=0``: ``[K / PER, N]``)
    or along N (``packed_dim=1``: ``[K, N / PER]``), or, with ``layout`` (a
    :class:`triton_dequant.layouts.MmaLayout` or its name), prepacked by
    :func:`triton_dequant.layouts.prepack` (int32 ``[N_tiles, K_tiles, words]``; K
    is then taken from ``x`` and N from ``scale``). ``scale``/``shift``: fp16/bf16/fp32,
    ``[N]`` per output channel, or ``[K / group_size, N]`` per group of ``group_size``
    rows of K (``group_size`` defaults to K / rows). ``bias``: optional ``[N]``, added
    to the fp32 sums. Returns ``[..., N]`` of ``x.dtype`` (``bias``, or zeros, for
    K = 0; empty for N = 0 or no rows).

    Rounding: scale/shift are rounded to ``x.dtype``, then W is the exact
    ``scale * q + shift`` rounded once to ``x.dtype`` (fp32 for fp32 ``x``); the
    products are accumulated in fp32 and the result rounded once to ``x.dtype``.
    On CUDA the Triton kernels do that (the per-channel default applies scale and
    shift to the fp32 sums instead). On the CPU W is dequantized exactly
    (:func:`triton_dequant.reference.linear_weight` bit for bit) in blocks of K rows,
    each multiplied by torch's matmul (BLAS) into an fp32 accumulator; fp16/bf16 ``x``
    are computed in fp32 (x and W widen exactly) and the result rounded once."""
    fmt.check_tensor(x, "x")
    if x.dtype not in fmt.OUT_DTYPES:
        raise TypeError(f"`x` must be a fp16, bf16 or (on the CPU) fp32 tensor, got {x.dtype}")
    if x.dtype == torch.float32 and x.device.type != "cpu":
        raise TypeError(f"`x` must be fp16 or bf16 on {x.device.type} (fp32 `x` is supported on the CPU only)")
    fmt.check_bool(signed, "signed")
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
        fmt.check_tensor(scale, "scale")
        if scale.dim() not in (1, 2):
            raise ValueError(f"`scale` must be a [N] or [K / group_size, N] tensor, got shape {list(scale.shape)}")
        K, N = x.shape[-1], scale.shape[-1]
        lay.check_data(qweight, K, N)
        per = lay.per
    else:
        width = fmt.check_container(qweight, "qweight")
        fmt.check_nbit(nbit, width=width)
        if qweight.dim() != 2:
            raise ValueError(f"`qweight` must be 2-D, got shape {list(qweight.shape)}")
        if not fmt.is_int(packed_dim) or packed_dim not in (0, 1):
            raise ValueError(f"`packed_dim` must be 0 (packed along K) or 1 (along N), got {packed_dim!r}")
        per = width // nbit
        K = qweight.shape[0] * (per if packed_dim == 0 else 1)
        N = qweight.shape[1] * (per if packed_dim == 1 else 1)
        if x.dim() == 0 or x.shape[-1] != K:
            raise ValueError(f"`x` must have last dimension K={K} (from `qweight` {list(qweight.shape)} with "
                             f"nbit={nbit}, packed_dim={packed_dim}), got shape {list(x.shape)}")
    for name, t in (("scale", scale), ("shift", shift)):
        fmt.check_tensor(t, name)
        if t.dtype not in fmt.OUT_DTYPES:
            raise TypeError(f"`{name}` must be a fp16/bf16/fp32 tensor, got {t.dtype}")
        if t.dim() not in (1, 2) or t.shape[-1] != N:
            raise ValueError(f"`{name}` must be [N] or [K / group_size, N] with N={N}, got shape {list(t.shape)}")
    if shift.shape != scale.shape:
        raise ValueError(f"`shift` must have the shape of `scale` {list(scale.shape)}, got {list(shift.shape)}")
    group_size = _linear_group_size(scale, K, N, per, packed_dim, group_size)
    if lay is not None and scale.dim() == 2 and scale.shape[0] > 1:
        lay.check_group_size(group_size)
    if bias is not None:
        fmt.check_tensor(bias, "bias")
        if bias.dtype not in fmt.OUT_DTYPES or tuple(bias.shape) != (N,):
            raise ValueError(f"`bias` must be a [N] fp16/bf16/fp32 tensor with N={N}, got {bias.dtype} "
                             f"{list(bias.shape)}")
    _same_device(x=x, qweight=qweight, scale=scale, shift=shift, bias=bias)
    if K == 0 or N == 0 or x.numel() == 0:
        y = x.new_zeros((*x.shape[:-1], N))
        return y if bias is None else y.add_(bias.to(x.dtype))
    if _direct(x, qweight, scale, shift, bias):
        from .kernels import linear as lin
        return lin.linear(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, layout=lay, bias=bias)
    return _linear_op(x, qweight, scale, shift, nbit, group_size, packed_dim, signed, lay.name if lay else "", bias)
