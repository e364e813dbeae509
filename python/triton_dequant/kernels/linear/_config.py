"""Launch rules of the weight-only matmul in one place: the :class:`Config` a call
runs with (:func:`default_config` for plain weights, :func:`prepacked_config` for
prepacked ones; small tables fed by the sweep in ``bench/linear.py``), what the
kernels accept (:func:`check_config`) and the scale mode a config implies
(:func:`scale_mode`).

**Routing** (plain weights, :func:`default_config`): M <= 4 the GEMV ("gemv");
``4 < M < DEQUANT_MIN_M`` the tensor-core kernel on the plain layout ("mm",
:mod:`._mma`: the dequantized tile goes through shared memory); from
``DEQUANT_MIN_M`` on, dequantize once into a ``[K, N]`` x.dtype buffer and call
cuBLAS (``torch.matmul``; "dequant"): at large M the matmul is compute bound and
cuBLAS's fp16 GEMM beats a dequantizing kernel whose weight tile takes a
shared-memory round trip, while the dequant pass costs one read of the packed
weight and one write of the fp16 one. Prepacking on the fly is never done per
call (it costs more than the matmul); layers that hold prepacked weights run
:mod:`._mma_prepacked` at every M ("prepacked", :func:`prepacked_config`).
``DEQUANT_MIN_M`` is a guess until the H200 benchmark measures the crossover
(``bench/linear.py`` times the three paths side by side)."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton

from ._common import SCALE_CHANNEL, SCALE_GROUP, SCALE_GROUP_ROWS, SCALE_POST

DOT16_PER = (2, 4, 8, 16)  # codes per container the GEMV takes when packed along K
DEQUANT_MIN_M = 256        # plain weights: dequantize + cuBLAS from this M on (see the module docstring)
KERNELS = ("gemv", "mm", "prepacked", "dequant")


def xshift(nbit: int, per: int, signed: bool) -> int:
    """k such that PER/2 fp16 products of a code and ``x * 2**-k`` cannot overflow
    fp16 for any fp16 ``x``: ``2**k >= PER/2 * max|code|``."""
    top = (1 << (nbit - 1)) if signed else (1 << nbit) - 1
    return max(1, (per // 2 * top - 1).bit_length())


@dataclass(frozen=True)
class Config:
    """Launch parameters. ``kernel``: "gemv", "mm", "prepacked" (weights in an
    :class:`~triton_dequant.layouts.MmaLayout`; ``bn``/``bk`` are the layout's) or
    "dequant" (dequantize + ``torch.matmul``; no other field used). ``bk``: GEMV:
    container rows per tile (``bk * PER`` values of K when packed along K, ``bk``
    rows of K otherwise); mm: values of K per tile. ``bm``: rows of x (tokens)
    per tile. ``split``: K slices (1 = no split-K).
    ``post``: per-channel scale/shift after the reduction (SCALE 0) instead of in
    the dequant asm. ``dot16``: GEMV fp16x2 container dot products (fp16 only).
    ``reduce``: 1 partials + last-CTA sum (deterministic), 2 fp32 atomics."""
    kernel: str = "gemv"
    bm: int = 1
    bk: int = 32
    bn: int = 128
    split: int = 1
    num_warps: int = 4
    num_stages: int = 1
    post: bool = True
    dot16: bool = True
    reduce: int = 1
    prefetch: bool = False

    def short(self) -> str:
        return (f"{self.kernel} bm={self.bm} bk={self.bk} bn={self.bn} split={self.split} w={self.num_warps} "
                f"st={self.num_stages} post={int(self.post)} dot16={int(self.dot16)} red={self.reduce}"
                + (" pf=1" if self.prefetch else ""))


def _pow2_floor(v: int) -> int:
    return 1 << (max(1, v).bit_length() - 1)


def gemv_supported(M: int, per: int, packed_dim: int) -> bool:
    return M <= 4 and (packed_dim == 1 or per in DOT16_PER)


def default_config(M: int, K: int, N: int, nbit: int, width: int, packed_dim: int, dtype: torch.dtype,
                   sms: int = 132) -> Config:
    """The launch table (H100; bench/linear.py sweeps the alternatives and prints
    the winners so that this table can be updated).

    GEMV (M <= 4): 4 warps; 16-byte container loads (4 int32 per lane: 128
    columns); 4 container rows per thread and step (bk = 16; 8 for 16 codes per
    container or 4 rows of x: the per-row x tile [bk, PER/2] must have fewer
    elements than the CTA has threads, else Triton routes it through shared
    memory every step). K split so that the grid has ~4 CTAs per SM: all resident
    at once (<= 80 registers), several loads in flight per SM, one launch.
    mm (4 < M < DEQUANT_MIN_M): BM 16..128 x 128 x 128 tiles, split-K while the
    grid is below two CTAs per SM. dequant: M >= DEQUANT_MIN_M."""
    per = width // nbit
    if M >= DEQUANT_MIN_M:
        return Config("dequant")
    if gemv_supported(M, per, packed_dim):
        bm = triton.next_power_of_2(M)
        if packed_dim == 0:
            bn = min(32 * (128 // width), max(16, triton.next_power_of_2(N)))
            bk = 8 if per >= 16 or bm >= 4 else 16
            rows = K // per
        else:
            bn = max(per, min(32 * per, triton.next_power_of_2(N)))
            bk = 16
            rows = K
        k_tiles = triton.cdiv(rows, bk)
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
        # int2 at K >= 8192 ran 8% faster with twice the split (H100 sweep)
        ctas = 8 * sms if (per >= 16 and K >= 8192) else 4 * sms
        split = max(1, min(_pow2_floor(ctas // tiles), max(1, k_tiles // 2), 32))
        dot16 = dtype == torch.float16 and packed_dim == 0
        # fp16 products of raw 8-bit codes would need x * 2**-9: scale inside the asm instead
        post = not (dot16 and xshift(nbit, per, True) > 6)
        # 8-bit weights (4 codes per load, ALU-light): the register double buffer
        # hides load latency (8192^2: 34.8 us vs 43.7 us, bench/results/h100.json)
        return Config("gemv", bm=bm, bk=bk, bn=bn, split=split, num_warps=4, num_stages=1, post=post,
                      dot16=dot16, reduce=1, prefetch=(per <= 4 and packed_dim == 0))
    bm = 16 if M <= 16 else 32 if M <= 32 else 64 if M <= 64 else 128
    bn = min(128, max(16, per if packed_dim == 1 else 16, triton.next_power_of_2(N)))
    bk = min(128, max(16, per if packed_dim == 0 else 16, triton.next_power_of_2(K)))
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    k_tiles = triton.cdiv(K, bk)
    split = max(1, min(_pow2_floor(2 * sms // tiles), k_tiles, 16)) if tiles < 2 * sms else 1
    return Config("mm", bm=bm, bk=bk, bn=bn, split=split, num_warps=8 if bm >= 128 else 4,
                  num_stages=3 if M > 16 else 2, post=True, dot16=False, reduce=1)


def mm_stages(cfg: Config, width: int, per: int, row_scales: bool) -> int:
    """The pipeline depth of the default ``mm`` config that fits the SM's shared memory
    (sm_90: 232448 B; the compile step refuses more, see ``kernels/_plan.py``). Each stage
    holds the x tile, the container tile and, with one scale row per K row
    (``row_scales``: SCALE_GROUP_ROWS), [BK, BN] scale and shift tiles. Measured with
    ``python -m triton_dequant.inspect linear --M 128 --K 4096 --N 4096 --nbit 8
    --container uint8 --group-size 32 --arch 90``: 8-bit codes in 8-bit containers took
    294912 B at 3 stages (bm 128; 245760 at bm 64), and with row scales 245760 B at 2
    stages; 4-bit codes in bytes with row scales 278528 B at 3 stages (bm 128) and, on
    sm_80 (166912 B), 180224 B at bm 64."""
    stages = cfg.num_stages
    if per == 1 and cfg.bm >= 64:
        stages = min(stages, 2)
    if row_scales and cfg.bm >= 64:
        stages = min(stages, 2)
    if row_scales and width == 8 and cfg.bm >= 128:
        stages = 1
    return stages


def prepacked_config(M: int, K: int, N: int, layout, dtype: torch.dtype, sms: int = 132) -> Config:
    """The launch table of :mod:`._mma_prepacked` (the tile ``BN x BK`` is the layout's).

    ``bm`` (tokens per tile, the MMA's N): the next power of two >= M in 16..128
    (sm80: at most 32; with ``BN = 128`` and 4 warps Triton's MMAv2 splits warps
    along the tokens from ``bm = 64`` on, which would duplicate the weight operand
    and route it through shared memory). Above 128 tokens more m-tiles (their
    CTAs run side by side: the weights are read from L2). 8 warps for ``bm = 128``
    where the layout's bytes allow it (accumulator registers), else ``bm = 64``. Split-K while the
    grid is below two CTAs per SM (M = 16 at 8192^2: 64 tiles -> 4 slices).
    3 stages of cp.async (2 for ``bm = 16``)."""
    cap = 32 if layout.arch == "sm80" else 128
    bm = min(cap, max(16, triton.next_power_of_2(M)))
    warps = layout.num_warps
    if bm >= 128:
        if 8 in layout.compatible_warps():
            warps = 8
        elif warps == 4:
            bm = 64  # a 128 x 128 fp32 accumulator on 4 warps spills
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, layout.bn)
    k_tiles = triton.cdiv(K, layout.bk)
    split = max(1, min(_pow2_floor(2 * sms // tiles), k_tiles, 16)) if tiles < 2 * sms else 1
    if bm >= 128 and split == 1:
        # bm 128 on 8 warps without split-K gave NaN on the H200 (M=128, K=8192, N=28672,
        # bench/results/h200_bench.log; with split 2 at 8192^2 it was right, and so was
        # bm 64 on 4 warps at N=28672): until that is understood, bm 64 there
        bm, warps = 64, layout.num_warps
        tiles = triton.cdiv(M, bm) * triton.cdiv(N, layout.bn)
    return Config("prepacked", bm=bm, bk=layout.bk, bn=layout.bn, split=split, num_warps=warps,
                  num_stages=2 if bm <= 16 else 3, post=True, dot16=False, reduce=1)


def check_config(cfg: Config, per: int, packed_dim: int, dtype, nbit: int, signed: bool, groups: int,
                 layout=None) -> Config:
    """Clamp a config to what the kernels support for this problem (``layout``: the
    weights' :class:`~triton_dequant.layouts.MmaLayout`, None for plain weights)."""
    if cfg.kernel not in KERNELS:
        raise ValueError(f"config.kernel must be one of {', '.join(map(repr, KERNELS))}, got {cfg.kernel!r}")
    if (cfg.kernel == "prepacked") != (layout is not None):
        raise ValueError(f"config.kernel {cfg.kernel!r} does not match the weights' layout "
                         f"({'plain' if layout is None else layout.name}): prepacked weights take 'prepacked'")
    if cfg.kernel == "dequant":
        return cfg
    if cfg.kernel == "prepacked":
        if cfg.bm < 16 or cfg.bm & (cfg.bm - 1):
            raise ValueError(f"config.bm must be a power of two >= 16 for prepacked weights, got {cfg.bm}")
        if cfg.split < 1:
            raise ValueError(f"config.split must be >= 1, got {cfg.split}")
        return replace(cfg, bn=layout.bn, bk=layout.bk, dot16=False, post=cfg.post and groups == 1)
    if cfg.kernel == "gemv" and (cfg.bm > 4 or (packed_dim == 0 and per not in DOT16_PER)):
        raise ValueError(f"the GEMV kernel takes bm <= 4 and, packed along K, 2, 4, 8 or 16 codes per "
                         f"container (got bm={cfg.bm}, {per})")
    if cfg.split < 1:
        raise ValueError(f"config.split must be >= 1, got {cfg.split}")
    for name in ("bm", "bk", "bn"):
        v = getattr(cfg, name)
        if v < 1 or v & (v - 1):
            raise ValueError(f"config.{name} must be a power of two, got {v}")
    if packed_dim == 1 and cfg.bn % per:
        raise ValueError(f"config.bn ({cfg.bn}) must be a multiple of the codes per container ({per})")
    if cfg.kernel == "mm":
        if cfg.bm < 16 or cfg.bn < 16 or cfg.bk < 16:
            raise ValueError("mm config needs bm, bn, bk >= 16")
        if packed_dim == 0 and cfg.bk % per:
            raise ValueError(f"config.bk ({cfg.bk}) must be a multiple of the codes per container ({per})")
    dot16 = cfg.dot16 and cfg.kernel == "gemv" and dtype == torch.float16 and packed_dim == 0 and per in DOT16_PER
    post = cfg.post and groups == 1
    if dot16 and post and xshift(nbit, per, signed) > 6:  # 8-bit codes: x * 2**-9 would lose too much
        post = False
    return replace(cfg, dot16=dot16, post=post)


def scale_mode(post: bool, groups: int, group_size: int, k_span: int) -> int:
    """The ``SCALE`` mode (see :mod:`._common`) for a config whose K tile spans ``k_span`` values."""
    if groups == 1:
        return (SCALE_POST if post else SCALE_CHANNEL).value
    return (SCALE_GROUP if group_size % k_span == 0 else SCALE_GROUP_ROWS).value
