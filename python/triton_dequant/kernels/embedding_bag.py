"""n-bit embedding bag over a row-fused table (like FBGEMM's n-bit TBE inference forward).

Table ``rows``: ``[T, E]`` container elements per row, ``[scale fp16, shift fp16, data...]``
(see :func:`triton_dequant.ops.dequantize_rows`). The host function takes torch tensors
already checked by :func:`triton_dequant.ops.embedding_bag`.

Kernel design (a gather of random rows of tens to hundreds of bytes)
--------------------------------------------------------------------
* One program per (bag, column block). It loads a whole ``[BLOCK_L, BLOCK_W]`` tile:
  ``BLOCK_L`` lookups of the bag at once (indices as one vector, then one row segment
  per lookup), so each program has ``BLOCK_L`` independent row reads in flight behind
  a single offsets -> indices -> rows dependency chain. Bags longer than ``BLOCK_L``
  loop over chunks (masked); an empty bag writes zeros.
* Each row's fp16 scale/shift (one header load per lookup) is a ``[BLOCK_L, 1]``
  operand of ``tl.dequantize``: constant along the unpacked axis, so the affine step
  stays inside the asm as packed ``fma.rn.f16x2`` (exact fp16 rows, one rounding).
* Each chunk is widened to fp32, weighted and reduced over the lookups with ``tl.sum``
  (within a thread first: the layout gives every thread several lookups of the same
  columns); the running sum is a ``[BLOCK_W * PER]`` fp32 vector. Reducing per chunk
  rather than keeping a ``[BLOCK_L, BLOCK_W * PER]`` fp32 accumulator saves about a
  third of the registers (more programs, more loads in flight per SM), and a bag of
  ``<= BLOCK_L`` lookups does one reduction either way.
* Alignment: data starts 4 bytes into the row, so a tile that starts at the first
  data element gets 4-byte loads at best (int32 rows). If the row stride is a
  multiple of 16 bytes and it costs no extra tile columns, the tile starts at the row
  start instead (``HEAD_IN``): every vector is 16-byte aligned (``ld.global.v4``) and
  the header's own outputs land at negative output columns, masked at the store.
  Stride and load limit are passed as ``x_v * VEC`` so that Triton can prove the
  ``VEC``-element alignment of every row (it only specializes ints on % 16).
* Rows wider than ``BLOCK_W`` elements are split over several programs per bag
  (grid ``bags * n_blocks``, bag-major: the blocks of a bag run side by side and share
  the index/header sectors in cache); this bounds the registers per thread.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import formats

from . import _plan
from ._plan import Kernel, Plan, Target, ptr
from ._rows import HEADER_BITS, row_header as _row_header  # noqa: F401  (_row_header: bench/embedding_bag.py)

_BITS = formats.CONTAINER_BITS
_OUT = {torch.float16: tl.float16, torch.float32: tl.float32}
_I32_MAX = 2 ** 31 - 1

# at most this many outputs (row elements x PER) per program and lookup: 64 int32
# words of int4 codes; beyond, the row is split over programs (registers)
_MAX_OUTPUTS = 512


@triton.jit
def _embedding_bag_kernel(rows_ptr, idx_ptr, off_ptr, w_ptr, out_ptr,
                          n_off, n_idx, stride_v, limit_v, dim, n_blocks,
                          NBIT: tl.constexpr, PER: tl.constexpr, WIDTH: tl.constexpr,
                          VEC: tl.constexpr, HEAD_IN: tl.constexpr,
                          BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
                          HAS_W: tl.constexpr, MEAN: tl.constexpr, SIGNED: tl.constexpr,
                          OUT_DTYPE: tl.constexpr, POS64: tl.constexpr = False):
    """Bag ``pid // n_blocks``, row elements ``[blk * BLOCK_W, +BLOCK_W)`` counted from
    the row start (``HEAD_IN``) or from the first data element.

    ``stride_v * VEC``: row stride in elements; ``limit_v * VEC``: elements to load
    (from the same origin); ``VEC`` divides both, and the origin offset.

    Only builtins and @jit helpers of modules that see ``triton.language`` alone (the
    header reader of ``_rows.py``) are called: ``tl.reduce`` with
    ``tl.standard._sum_combine`` and ``tl.full``, not ``tl.sum`` / ``tl.zeros``, which are
    @jit functions of ``triton.language.standard``. Triton 3.6's interpreter patches
    ``triton.language.core`` for a nested @jit call from such a module and never
    restores it, which breaks every later compilation in the process (the CPU test run:
    test_errors.py after this kernel ran). ``_sum_combine`` is the combine the
    interpreter recognizes and reduces with numpy (compiled: exactly ``tl.sum``; a
    combine of our own would make the interpreter call it per element, 30x slower).
    The bag loop is a ``while``: the interpreter cannot take loaded scalars as
    ``range`` bounds.

    Positions in ``indices`` are int32 unless ``POS64`` (``n_idx + BLOCK_L`` past 2**31):
    offsets are clamped to ``[0, n_idx]`` in their own type first, so int64 offsets are
    never truncated."""
    HEADER: tl.constexpr = HEADER_BITS // WIDTH   # container elements of the 4-byte header
    OFF: tl.constexpr = 0 if HEAD_IN else HEADER  # tile origin within the row
    POS: tl.constexpr = tl.int64 if POS64 else tl.int32
    pid = tl.program_id(0)
    bag = pid // n_blocks
    blk = pid % n_blocks
    # bag b ends where bag b + 1 starts, the last one (no include_last_offset) at n_idx;
    # offsets outside [0, n_idx] (unchecked input) are clamped: never an out-of-bounds read
    start = tl.minimum(tl.maximum(tl.load(off_ptr + bag), 0), n_idx).to(POS)
    nxt = tl.load(off_ptr + tl.minimum(bag + 1, n_off - 1))
    end = tl.minimum(tl.where(bag + 1 < n_off, nxt, n_idx), n_idx).to(POS)

    stride = stride_v * VEC
    cols = blk * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = cols < limit_v * VEC
    lanes = tl.arange(0, BLOCK_L)
    acc = tl.full([BLOCK_W * PER], 0.0, tl.float32)
    i = start
    while i < end:
        pos = i + lanes
        m = pos < end
        idx = tl.load(idx_ptr + pos, mask=m, other=0).to(tl.int64)
        base = rows_ptr + idx * stride                                   # [L] row starts
        x = tl.load(base[:, None] + OFF + cols[None, :], mask=m[:, None] & cmask[None, :], other=0)
        s, h = _row_header(base, m, WIDTH)                               # masked rows: 0, 0
        # [L, BLOCK_W * PER] fp16, exact; masked rows are exactly 0 (scale = shift = 0)
        y = tl.dequantize(x, s[:, None], h[:, None], NBIT, tl.float16, signed=SIGNED)
        yf = y.to(tl.float32)
        if HAS_W:
            wt = tl.load(w_ptr + pos, mask=m, other=0).to(tl.float32)
            yf = yf * wt[:, None]
        acc += tl.reduce(yf, 0, tl.standard._sum_combine)  # tl.sum: see the note above
        i += BLOCK_L
    if MEAN:  # exact division (a plain `/` is div.full.f32, 2 ulp)
        cnt = tl.maximum(end - start, 1).to(tl.float32)
        acc = tl.math.div_rn(acc, tl.full([BLOCK_W * PER], 0.0, tl.float32) + cnt)
    o = (blk * BLOCK_W + OFF - HEADER) * PER + tl.arange(0, BLOCK_W * PER)
    tl.store(out_ptr + bag.to(tl.int64) * dim + o, acc.to(OUT_DTYPE), mask=(o >= 0) & (o < dim))


@functools.lru_cache(maxsize=1024)
def row_layout(container: torch.dtype, n_elems: int, stride: int, nbit: int, dim: int,
               block_w: Optional[int] = None, head_in: Optional[bool] = None) -> dict:
    """How the kernel reads rows of ``n_elems`` ``container`` elements ``stride``
    elements apart: tile origin (``head_in``), alignment ``vec`` (elements), row
    stride and load limit (elements from the tile origin), tile width ``block_w`` and
    column blocks per bag. (Cached: treat the result as read-only.)"""
    width = _BITS[container]
    per = width // nbit
    elt = width // 8
    header = 32 // width
    used = triton.cdiv(dim, per)  # data elements a lookup needs
    # byte alignment of every row start relative to the base pointer (Triton itself
    # checks that the base pointer is 16-byte aligned before it relies on it)
    row_align = math.gcd(stride * elt, n_elems * elt, 16)
    data = dict(head_in=False, vec=max(1, math.gcd(row_align, 4) // elt), origin=header, need=used)
    full = dict(head_in=True, vec=row_align // elt, origin=0, need=header + used)
    for lay in (data, full):
        lay["limit"] = triton.cdiv(lay["need"], lay["vec"]) * lay["vec"]
        lay["block_w"] = block_w or min(triton.next_power_of_2(lay["limit"]), max(1, _MAX_OUTPUTS // per))
        lay["n_blocks"] = triton.cdiv(lay["limit"], lay["block_w"])
    if head_in is None:  # full rows when they are 16-byte aligned and cost no extra columns
        head_in = row_align == 16 and full["n_blocks"] * full["block_w"] <= data["n_blocks"] * data["block_w"]
    lay = full if head_in else data
    assert lay["origin"] + lay["limit"] <= n_elems
    return dict(lay, stride=stride)


def _row_stride(rows: torch.Tensor) -> int:
    return rows.stride(0) if rows.shape[0] > 1 else rows.shape[1]


def layout(rows: torch.Tensor, nbit: int, dim: int, block_w: int | None = None,
           head_in: bool | None = None) -> dict:
    """:func:`row_layout` of a ``[T, E]`` table."""
    return dict(row_layout(rows.dtype, rows.shape[1], _row_stride(rows), nbit, dim, block_w, head_in))


def default_config(n_bags: int, n_indices: int, outputs: int, has_weights: bool) -> dict:
    """BLOCK_L: the mean bag length rounded up to a power of two, in [4, 32] (16 at most
    for weighted bags of more than 128 outputs per tile row: the weights double the
    registers there, 255 at D=512). 2 warps: the middle ground of the static SASS in
    ``test/lit/embedding_bag.py --sweep`` (1 warp needs the fewest instructions per bag
    but up to 127 registers; 4 warps the fewest registers, but the lookups of a column
    then span warps and the reduction goes through shared memory).
    bench/embedding_bag.py sweeps these on the GPU."""
    mean = n_indices / max(1, n_bags)
    block_l = min(32, max(4, 1 << (max(1, math.ceil(mean)) - 1).bit_length()))  # next power of two
    if has_weights and outputs > 128:
        block_l = min(block_l, 16)
    return dict(block_l=block_l, num_warps=2)


class BagCall(NamedTuple):
    """A call of :func:`embedding_bag`: a table of ``T`` rows of ``E`` ``container``
    elements, ``stride`` elements apart; ``n_indices`` lookups (``index_dtype``) in
    ``n_offsets`` offsets (``offset_dtype``) making ``n_bags`` bags; ``weight_dtype``:
    the per-sample weights' dtype or None; ``aligned``: 16-byte alignment of rows,
    indices, offsets, weights. The last four fields are tile overrides (None: the
    defaults)."""
    container: torch.dtype
    nbit: int
    signed: bool
    T: int
    E: int
    stride: int
    dim: int
    n_bags: int
    n_indices: int
    n_offsets: int
    index_dtype: torch.dtype
    offset_dtype: torch.dtype
    weight_dtype: Optional[torch.dtype]
    mean: bool
    dtype: torch.dtype
    aligned: tuple = (True, True, True, True)
    block_l: Optional[int] = None
    block_w: Optional[int] = None
    num_warps: Optional[int] = None
    head_in: Optional[bool] = None


@functools.lru_cache(maxsize=4096)
def plan_embedding_bag(call: BagCall, target: Target) -> Plan:
    """One ``_embedding_bag_kernel`` over ``n_bags * n_blocks`` programs (none for an
    empty output). The pointer for absent weights is the output (never read).

    The lookup count changes from call to call: the kernel is built once per
    specialisation class of ``n_indices`` / ``n_offsets`` (see :func:`_plan.int_class`)
    and bag-length bucket (``BLOCK_L``), and rebound to the call's values."""
    c = call
    if c.n_bags <= 0 or c.dim == 0:
        return Plan(())
    per = _BITS[c.container] // c.nbit
    lay = row_layout(c.container, c.E, c.stride, c.nbit, c.dim, c.block_w, c.head_in)
    block_l = c.block_l or default_config(c.n_bags, c.n_indices, lay["block_w"] * per,
                                          c.weight_dtype is not None)["block_l"]
    if c.n_bags * lay["n_blocks"] > _I32_MAX:
        raise ValueError(f"`offsets`: at most {_I32_MAX // lay['n_blocks']} bags for rows of {c.dim} codes "
                         f"(one program per bag and column block), got {c.n_bags}")
    # positions in `indices` go 64-bit where a chunk could pass 2**31 (a plan-time switch)
    pos64 = c.n_indices + block_l > _I32_MAX
    base = _bag_kernel(c._replace(n_indices=_plan.representative(c.n_indices),
                                  n_offsets=_plan.representative(c.n_offsets), block_l=block_l), target, pos64)
    return Plan((base.rebind(n_idx=c.n_indices, n_off=c.n_offsets),))


@functools.lru_cache(maxsize=1024)
def _bag_kernel(c: BagCall, target: Target, pos64: bool = False) -> Kernel:
    width = _BITS[c.container]
    per = width // c.nbit
    lay = row_layout(c.container, c.E, c.stride, c.nbit, c.dim, c.block_w, c.head_in)
    has_w = c.weight_dtype is not None
    cfg = default_config(c.n_bags, c.n_indices, lay["block_w"] * per, has_w)
    ra, ia, oa, wa = c.aligned
    return Kernel(_embedding_bag_kernel, (c.n_bags * lay["n_blocks"],), c.num_warps or cfg["num_warps"], 3,
                  rows_ptr=ptr(c.container, ra), idx_ptr=ptr(c.index_dtype, ia), off_ptr=ptr(c.offset_dtype, oa),
                  w_ptr=ptr(c.weight_dtype, wa) if has_w else ptr(c.dtype), out_ptr=ptr(c.dtype),
                  n_off=c.n_offsets, n_idx=c.n_indices, stride_v=lay["stride"] // lay["vec"],
                  limit_v=lay["limit"] // lay["vec"], dim=c.dim, n_blocks=lay["n_blocks"],
                  NBIT=c.nbit, PER=per, WIDTH=width, VEC=lay["vec"], HEAD_IN=lay["head_in"],
                  BLOCK_L=c.block_l, BLOCK_W=lay["block_w"], HAS_W=has_w, MEAN=bool(c.mean),
                  SIGNED=bool(c.signed), OUT_DTYPE=_OUT[c.dtype], POS64=pos64)


def _aligned(t: Optional[torch.Tensor]) -> bool:
    return t is None or t.data_ptr() % 16 == 0


def _prepare(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype, include_last_offset, signed,
             block_l=None, block_w=None, num_warps=None, head_in=None):
    """(call, rows, indices, offsets, weights): the tensors as the kernel reads them."""
    if rows.shape[1] and rows.stride(1) != 1:
        rows = rows.contiguous()
    indices = indices.contiguous()
    offsets = offsets.contiguous()
    w = per_sample_weights.contiguous() if per_sample_weights is not None else None
    n_bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    call = BagCall(rows.dtype, nbit, bool(signed), rows.shape[0], rows.shape[1], _row_stride(rows), dim,
                   max(n_bags, 0), indices.numel(), offsets.numel(), indices.dtype, offsets.dtype,
                   None if w is None else w.dtype, mode == "mean", dtype,
                   (_aligned(rows), _aligned(indices), _aligned(offsets), _aligned(w)),
                   block_l, block_w, num_warps, head_in)
    return call, rows, indices, offsets, w


def embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype, include_last_offset,
                  signed, *, block_l: int | None = None, block_w: int | None = None, num_warps: int | None = None,
                  head_in: bool | None = None) -> torch.Tensor:
    """``[bags, dim]`` of ``dtype`` (fp16/fp32). The keyword arguments are tile
    parameters for tuning (``None``: :func:`default_config` and :func:`layout`)."""
    call, rows, indices, offsets, w = _prepare(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype,
                                               include_last_offset, signed, block_l, block_w, num_warps, head_in)
    out = torch.empty((call.n_bags, dim), dtype=dtype, device=rows.device)
    if out.numel() == 0:
        return out
    target = _plan.target_of(rows.device)
    plan = plan_embedding_bag(call, target)
    _plan.launch(plan.kernels[0], (rows, indices, offsets, w if w is not None else out, out), rows.device, target)
    return out
