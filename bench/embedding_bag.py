"""n-bit embedding bag (FBGEMM-style n-bit TBE inference forward, one table).

Case: int4 codes, int32 row-fused rows (1 header word + D/8 data words: 68 bytes for
D=128, 260 bytes for D=512), T = 2**20 rows, 64K bags of 32 uniformly random lookups
(int32 indices, offsets = bag starts), mode "sum", fp16 output [65536, D].

Implementations, each checked before it is timed:
* ours: ``kernels.embedding_bag.embedding_bag`` launched directly (the op's dispatch and
  index check are host work), a small sweep of tile configs; the best is recorded
  as ``ours`` and every config's time goes into its ``note``.
* naive-triton: the same tiling (the best config's), shift/mask + int->fp16 cvt + fp16
  fma instead of ``tl.dequantize``.
* torch-eager: ``F.embedding_bag(mode="sum")`` on the table dequantized to fp16 once
  beforehand; only the lookup + pooling is timed, the table dequantization is not.
* copy: a device copy moving the bytes the op must move: every looked-up row in
  whole 32-byte sectors (96 / 288 bytes) plus the fp16 output (indices not counted).

Values: scales k/256 and shifts m/256 (small integers k, m), so that every dequantized
value and every partial sum is exact in fp16 / fp32: all correct implementations then
agree bit for bit with the float64 reference, and the checks are exact. (Rounding with
arbitrary fp16 scales is covered by test/python/test_embedding_bag.py.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from triton_dequant import ops, reference as ref
from triton_dequant.kernels import embedding_bag as keb

from common import time_all

NBIT, PER = 4, 8
LOOKUPS = 32
# estimate of this module's GPU run (s): Triton compiles 2 D x (4 configs + naive) + the op's own = 11 x
# ~1 s; timing 2 x (4 sweep + 3 impls) x 2 rounds x ~0.15 s = 4 s; tables, references ~5 s
ESTIMATE_S = 20
# (BLOCK_L, BLOCK_W, num_warps) per D; the first is the launcher's default. Static SASS
# of each: test/lit/embedding_bag.py --sweep.
CONFIGS = {128: [(32, 16, 2), (32, 16, 4), (32, 16, 1), (16, 16, 1)],
           512: [(32, 64, 2), (16, 64, 2), (32, 64, 4), (16, 32, 1)]}


@triton.jit
def naive_bag(rows_ptr, idx_ptr, off_ptr, out_ptr, n_off, n_idx, stride, limit, dim, n_blocks,
              PER: tl.constexpr, NBIT: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr):
    """The tiling of kernels.embedding_bag for int32 rows, tile at the first data word
    (what the launcher picks for these tables), mode sum; dequantization by shift/mask,
    integer-to-fp16 conversion and an fp16 multiply-add. (tl.reduce and tl.full, not
    tl.sum and tl.zeros: see kernels/embedding_bag.py on the interpreter.)"""
    pid = tl.program_id(0)
    bag = pid // n_blocks
    blk = pid % n_blocks
    start = tl.load(off_ptr + bag)
    nxt = tl.load(off_ptr + tl.minimum(bag + 1, n_off - 1))
    end = tl.where(bag + 1 < n_off, nxt, n_idx)
    cols = blk * BLOCK_W + tl.arange(0, BLOCK_W)
    cmask = cols < limit
    lanes = tl.arange(0, BLOCK_L)
    shifts = tl.arange(0, PER) * NBIT
    acc = tl.full([BLOCK_W * PER], 0.0, tl.float32)
    i = start
    while i < end:
        pos = i + lanes
        m = pos < end
        idx = tl.load(idx_ptr + pos, mask=m, other=0).to(tl.int64)
        base = rows_ptr + idx * stride
        x = tl.load(base[:, None] + 1 + cols[None, :], mask=m[:, None] & cmask[None, :], other=0).to(tl.uint32)
        s, h = keb._row_header(base, m, 32)  # the kernel's own header read (int32 rows)
        q = (x[:, :, None] >> shifts[None, None, :]) & ((1 << NBIT) - 1)
        y = q.to(tl.float16) * s[:, None, None] + h[:, None, None]
        acc += tl.reduce(tl.reshape(y, [BLOCK_L, BLOCK_W * PER]).to(tl.float32), 0, tl.standard._sum_combine)
        i += BLOCK_L
    o = blk * BLOCK_W * PER + tl.arange(0, BLOCK_W * PER)
    tl.store(out_ptr + bag.to(tl.int64) * dim + o, acc.to(tl.float16), mask=o < dim)


def make_table(T: int, D: int, device, gen) -> torch.Tensor:
    words = 1 + D // PER
    rows = torch.randint(-2 ** 31, 2 ** 31 - 1, (T, words), dtype=torch.int32, device=device, generator=gen)
    k = torch.randint(1, 16, (T,), device=device, generator=gen) * (1 - 2 * torch.randint(0, 2, (T,), device=device,
                                                                                             generator=gen))
    m = torch.randint(-512, 513, (T,), device=device, generator=gen)
    sh = torch.stack([k, m], 1).to(torch.float16) / 256  # exact: |k|, |m| < 2048
    rows[:, 0] = sh.view(torch.int32).view(-1)
    return rows


def reference_subset(rows, indices, offsets, D, n_bags):
    """float64 reference (rounded to fp16) of the first ``n_bags`` bags, on the rows they use."""
    end = int(offsets[n_bags]) if n_bags < offsets.numel() else indices.numel()
    idx = indices[:end].long()
    uniq, inv = torch.unique(idx, return_inverse=True)
    sub = rows[uniq].cpu()
    return ref.embedding_bag(sub, inv.cpu(), offsets[:n_bags].cpu(), NBIT, mode="sum", n_codes=D, dtype=torch.float16)


def _check(name, got, want):
    bad = (got.view(torch.int16) != want.view(torch.int16)).sum().item()
    if bad:
        raise AssertionError(f"{name}: {bad} of {want.numel()} outputs differ")


def sector_bytes(D: int) -> int:
    row = (1 + D // PER) * 4
    return -(-row // 32) * 32  # a row at 4-byte alignment spans ceil(row / 32) sectors for these sizes


def run(time_us, record, device="cuda", T: int = 1 << 20, bags: int = 65536, dims=(128, 512), n_check: int = 256):
    gen = torch.Generator(device=device).manual_seed(0)
    for D in dims:
        rows = make_table(T, D, device, gen)
        indices = torch.randint(0, T, (bags * LOOKUPS,), dtype=torch.int32, device=device, generator=gen)
        offsets = torch.arange(0, bags * LOOKUPS, LOOKUPS, dtype=torch.int32, device=device)
        shape = f"T={T},D={D},B={bags},L={LOOKUPS}"
        nbytes = bags * LOOKUPS * sector_bytes(D) + bags * D * 2

        def ours_fn(cfg):
            bl, bw, w = cfg
            return lambda: keb.embedding_bag(rows, indices, offsets, NBIT, "sum", None, D, torch.float16, False, False,
                                             block_l=bl, block_w=bw, num_warps=w)

        # correctness: default config vs the float64 reference, then every config, the op
        # and the baselines against it
        y = ours_fn(CONFIGS[D][0])()
        n = min(n_check, bags)
        _check("ours vs float64 reference", y[:n].cpu(), reference_subset(rows, indices, offsets, D, n))
        for cfg in CONFIGS[D][1:]:
            _check(f"ours {cfg}", ours_fn(cfg)(), y)
        _check("ops.embedding_bag", ops.embedding_bag(rows, indices, offsets, NBIT, n_codes=D, dtype=torch.float16), y)

        # sweep ours, then everything interleaved with the best config
        sweep = time_all(time_us, {cfg: ours_fn(cfg) for cfg in CONFIGS[D]})
        best = min(sweep, key=lambda c: sweep[c][0])
        bl, bw, w = best
        lay = keb.layout(rows, NBIT, D, bw)
        y_naive = torch.empty_like(y)
        naive = lambda: naive_bag[(bags * lay["n_blocks"],)](
            rows, indices, offsets, y_naive, offsets.numel(), indices.numel(), rows.stride(0), D // PER, D,
            lay["n_blocks"],
            PER=PER, NBIT=NBIT, BLOCK_L=bl, BLOCK_W=bw, num_warps=w)
        naive()
        _check("naive-triton", y_naive, y)
        table = ops.dequantize_rows(rows, NBIT, torch.float16, n_codes=D)  # not timed
        eager = lambda: F.embedding_bag(indices, table, offsets, mode="sum")
        _check("torch-eager", eager(), y)
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        times = time_all(time_us, {"ours": ours_fn(best), "naive-triton": naive, "torch-eager": eager,
                                   "copy": lambda: dst.copy_(src)})
        cfg_txt = lambda c: f"BLOCK_L={c[0]},BLOCK_W={c[1]},warps={c[2]}"
        notes = {
            "ours": f"{cfg_txt(best)} (n_blocks={lay['n_blocks']}, head_in={int(lay['head_in'])}); sweep: "
                    + "; ".join(f"{cfg_txt(c)}: {sweep[c][0]:.1f} us" for c in CONFIGS[D])
                    + "; kernel launched directly, int32 indices, fp16 out",
            "naive-triton": f"same tiling as ours ({cfg_txt(best)}), shift/mask + cvt + fp16 fma",
            "torch-eager": "F.embedding_bag(mode='sum') on the table pre-dequantized to fp16 [T, D] "
                           "(dequantization not timed; reads 2*D bytes per row)",
            "copy": f"device copy of {nbytes} bytes: bags*32 rows in 32-byte sectors ({sector_bytes(D)} B) "
                    f"+ fp16 output",
        }
        for impl, (us, runs) in times.items():
            record(bench="embedding_bag", nbit=NBIT, shape=shape, impl=impl, us=us, bytes=nbytes, runs=runs,
                   note=notes[impl])
        del rows, indices, offsets, table, y, y_naive, src, dst


DRY_RUN = {"T": 4096, "bags": 8, "n_check": 8}
