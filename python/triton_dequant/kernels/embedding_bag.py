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

import math

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import formats

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


def layout(rows: torch.Tensor, nbit: int, dim: int, block_w: int | None = None,
           head_in: bool | None = None) -> dict:
    """How the kernel reads ``rows``: tile origin (``head_in``), alignment ``vec``
    (elements), row stride and load limit (elements from the tile origin), tile
    width ``block_w`` and column blocks per bag."""
    width = _BITS[rows.dtype]
    per = width // nbit
    elt = rows.element_size()
    header = 32 // width
    stride = rows.stride(0) if rows.shape[0] > 1 else rows.shape[1]
    used = triton.cdiv(dim, per)  # data elements a lookup needs
    # byte alignment of every row start relative to the base pointer (Triton itself
    # checks that the base pointer is 16-byte aligned before it relies on it)
    row_align = math.gcd(stride * elt, rows.shape[1] * elt, 16)
    data = dict(head_in=False, vec=max(1, math.gcd(row_align, 4) // elt), origin=header, need=used)
    full = dict(head_in=True, vec=row_align // elt, origin=0, need=header + used)
    for lay in (data, full):
        lay["limit"] = triton.cdiv(lay["need"], lay["vec"]) * lay["vec"]
        lay["block_w"] = block_w or min(triton.next_power_of_2(lay["limit"]), max(1, _MAX_OUTPUTS // per))
        lay["n_blocks"] = triton.cdiv(lay["limit"], lay["block_w"])
    if head_in is None:  # full rows when they are 16-byte aligned and cost no extra columns
        head_in = row_align == 16 and full["n_blocks"] * full["block_w"] <= data["n_blocks"] * data["block_w"]
    lay = full if head_in else data
    assert lay["origin"] + lay["limit"] <= rows.shape[1]
    return dict(lay, stride=stride)


def default_config(n_bags: int, n_indices: int, outputs: int, has_weights: bool) -> dict:
    """BLOCK_L: the mean bag length rounded up to a power of two, in [4, 32] (16 at most
    for weighted bags of more than 128 outputs per tile row: the weights double the
    registers there, 255 at D=512). 2 warps: the middle ground of the static SASS in
    ``test/lit/embedding_bag.py --sweep`` (1 warp needs the fewest instructions per bag
    but up to 127 registers; 4 warps the fewest registers, but the lookups of a column
    then span warps and the reduction goes through shared memory).
    bench/embedding_bag.py sweeps these on the GPU."""
    mean = n_indices / max(1, n_bags)
    block_l = min(32, max(4, triton.next_power_of_2(max(1, math.ceil(mean)))))
    if has_weights and outputs > 128:
        block_l = min(block_l, 16)
    return dict(block_l=block_l, num_warps=2)


def embedding_bag(rows, indices, offsets, nbit, mode, per_sample_weights, dim, dtype, include_last_offset,
                  signed, *, block_l: int | None = None, block_w: int | None = None, num_warps: int | None = None,
                  head_in: bool | None = None) -> torch.Tensor:
    """``[bags, dim]`` of ``dtype`` (fp16/fp32). The keyword arguments are tile
    parameters for tuning (``None``: :func:`default_config` and :func:`layout`)."""
    if rows.shape[1] and rows.stride(1) != 1:
        rows = rows.contiguous()
    indices = indices.contiguous()
    offsets = offsets.contiguous()
    n_bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    out = torch.empty((max(n_bags, 0), dim), dtype=dtype, device=rows.device)
    if out.numel() == 0:
        return out
    width = _BITS[rows.dtype]
    lay = layout(rows, nbit, dim, block_w, head_in)
    w = per_sample_weights.contiguous() if per_sample_weights is not None else None
    cfg = default_config(n_bags, indices.numel(), lay["block_w"] * (width // nbit), w is not None)
    block_l = block_l or cfg["block_l"]
    grid = n_bags * lay["n_blocks"]
    if grid > _I32_MAX:
        raise ValueError(f"`offsets`: at most {_I32_MAX // lay['n_blocks']} bags for rows of {dim} codes "
                         f"(one program per bag and column block), got {n_bags}")
    _embedding_bag_kernel[(grid,)](
        rows, indices, offsets, w if w is not None else out, out,
        offsets.numel(), indices.numel(), lay["stride"] // lay["vec"], lay["limit"] // lay["vec"], dim,
        lay["n_blocks"],
        NBIT=nbit, PER=width // nbit, WIDTH=width, VEC=lay["vec"], HEAD_IN=lay["head_in"],
        BLOCK_L=block_l, BLOCK_W=lay["block_w"], HAS_W=w is not None, MEAN=mode == "mean",
        SIGNED=signed, OUT_DTYPE=_OUT[dtype], POS64=indices.numel() + block_l > _I32_MAX,
        num_warps=num_warps or cfg["num_warps"])
    return out
