"""Layout algebra: which conversions move data (Triton's own check), how a
warp's store instruction covers memory, and the layouts the rewrite moves to
(on TTGIR encoding texts).

Layouts are handled as bases (Triton's linear-layout view): a thread's
registers and a warp's lanes each enumerate offsets by XOR-ing basis vectors,
least significant first. Blocked layouts are expanded to their register and
lane bases here (without the repetition bases, which come last and do not
matter for the checks below); ``#ttg.linear`` layouts carry them; slices drop
a dimension of their parent.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

from .mlir import Aliases, int_list

SECTOR = 32  # bytes: the unit of a global memory transaction
VECTOR = 16  # bytes: the widest access of one thread (Coalesce caps stores at 128 bits)

Bases = List[List[int]]


def linear_parts(enc: str, aliases: Aliases) -> Optional[Tuple[Bases, str]]:
    """``#ttg.linear<{register = [...], lane = ...}>`` -> (register bases, the rest as text)."""
    m = re.match(r"^#ttg\.linear<\{register = (\[.*?\]\]|\[\]), (lane = .*)$", aliases.resolve(enc))
    if not m:
        return None
    return [int_list(b) for b in re.findall(r"\[[-\d, ]*\]", m.group(1)[1:-1])], m.group(2)


def blocked_parts(enc: str, aliases: Aliases) -> Optional[Dict[str, List[int]]]:
    full = aliases.resolve(enc)
    if not full.startswith("#ttg.blocked<"):
        return None
    out = {}
    for key in ("sizePerThread", "threadsPerWarp", "warpsPerCTA", "order"):
        m = re.search(key + r" = \[([\d, ]*)\]", full)
        if not m:
            return None
        out[key] = int_list(m.group(1))
    return out


def contiguous_dim(enc: str, rank: int, aliases: Aliases) -> int:
    """The fastest-varying dimension of a blocked layout; the last one otherwise."""
    full = aliases.resolve(enc)
    m = re.search(r"order = \[([\d, ]*)\]", full)
    if m and full.startswith("#ttg.blocked"):
        order = int_list(m.group(1))
        if order:
            return order[0]
    return rank - 1


def bases(enc: str, aliases: Aliases) -> Optional[Tuple[Bases, Bases]]:
    """(register bases, lane bases) of a blocked, linear or slice layout, in the
    order a thread's registers / a warp's lanes enumerate them."""
    full = aliases.resolve(enc)
    m = re.match(r"^#ttg\.slice<\{dim = (\d+), parent = (.*)\}>$", full)
    if m:
        k = int(m.group(1))
        parent = bases(m.group(2), aliases)
        if parent is None:
            return None

        def drop(bs):  # the parent's bases without dimension k (those only along k vanish)
            return [b[:k] + b[k + 1:] for b in bs if any(v for i, v in enumerate(b) if i != k)]
        return drop(parent[0]), drop(parent[1])
    bl = blocked_parts(enc, aliases)
    if bl is not None:
        rank = len(bl["order"])
        regs, lanes = [], []
        for d in bl["order"]:
            for bit in range(max(0, bl["sizePerThread"][d].bit_length() - 1)):
                regs.append([(1 << bit) if i == d else 0 for i in range(rank)])
            for bit in range(max(0, bl["threadsPerWarp"][d].bit_length() - 1)):
                lanes.append([(bl["sizePerThread"][d] << bit) if i == d else 0 for i in range(rank)])
        return regs, lanes
    parts = linear_parts(enc, aliases)
    if parts is None:
        return None
    regs, rest = parts
    m = re.search(r"lane = (\[.*?\]\]|\[\])", rest)
    lanes = [int_list(b) for b in re.findall(r"\[[-\d, ]*\]", m.group(1)[1:-1])] if m else []
    return regs, lanes


def _along(b: List[int], d: int, v: int) -> bool:
    """Basis ``b`` is the offset ``v`` along dimension ``d`` only."""
    return d < len(b) and b[d] == v and not any(x for k, x in enumerate(b) if k != d)


def run_and_lanes(enc: str, d: int, aliases: Aliases) -> Optional[Tuple[int, int]]:
    """Along dimension ``d`` of a layout: (elements a thread holds contiguously
    in its first registers, lanes that continue that run side by side)."""
    bs = bases(enc, aliases)
    if bs is None:
        return None
    regs, lanes = bs
    run = 1
    for b in regs:  # registers in order: the vectorisable run
        if not _along(b, d, run):
            break
        run *= 2
    nl = 1
    for b in lanes:
        if not _along(b, d, run * nl):
            break
        nl *= 2
    return run, nl


def gap_free(enc: str, shape: List[int], d: int, elem_bytes: int, aliases: Aliases) -> bool:
    """Does a warp's store instruction in layout ``enc`` write whole sectors?
    (Coalesce caps stores at 16 bytes per thread for this reason: a thread that
    owns a longer contiguous run writes it as 16-byte pieces, and each
    instruction then touches 16 of every run*bytes: partial sectors, which the
    H100 measurably pays for; see bench/layout.py.)"""
    rl = run_and_lanes(enc, d, aliases)
    if rl is None:
        return False
    run, lanes = rl
    if run * elem_bytes > VECTOR:
        return False
    return run * elem_bytes * lanes >= SECTOR or run * lanes >= shape[d]


def narrow_layout(store_enc: str, axis: int, per: int, aliases: Aliases) -> Optional[str]:
    """The layout of the packed words whose dequantized tile lands exactly in
    the (blocked, coalesced) store layout: PER times fewer words per thread
    along the unpacked axis, which must be the store's contiguous one."""
    bl = blocked_parts(store_enc, aliases)
    if bl is None or bl["order"][0] != axis or bl["sizePerThread"][axis] % per:
        return None
    spt = list(bl["sizePerThread"])
    spt[axis] //= per
    return re.sub(r"sizePerThread = \[[\d, ]*\]", "sizePerThread = [" + ", ".join(map(str, spt)) + "]",
                  aliases.resolve(store_enc), count=1)


def store_order(enc: str, store_enc: str, rank: int, aliases: Aliases) -> str:
    """The layout a store of a value in ``enc`` should use: ``enc`` itself, or for a
    linear layout whose first register bases do not run along the memory-contiguous
    dimension (dequantize along a non-minor axis), the same layout with the register
    bases reordered so that they do. Only the order of a thread's registers changes
    (same lanes, warps), so the conversion costs no data movement, and the store can
    use vectors."""
    parts = linear_parts(enc, aliases)
    if parts is None:
        return enc
    regs, rest_text = parts
    if not regs or any(len(b) != rank for b in regs):
        return enc
    d = contiguous_dim(store_enc, rank, aliases)
    along = sorted((b for b in regs if b[d] and _along(b, d, b[d])), key=lambda b: b[d])
    new = along + [b for b in regs if b not in along]
    if new == regs:
        return enc
    text = ", ".join("[" + ", ".join(str(v) for v in b) + "]" for b in new)
    return f"#ttg.linear<{{register = [{text}], {rest_text}"


def moving_conversions(module) -> int:
    """``ttg.convert_layout`` ops in a TTGIR module (Triton's ``ir.module``) that move
    data between threads. Triton's own check (``GluonOpBuilder.is_convert_layout_trivial``,
    which the Gluon frontend uses for ``convert_layout(..., assert_trivial=True)``): a
    conversion is free when its minimal conversion layout involves only the register
    dimension, i.e. it lowers to a permutation of each thread's registers; any other
    goes through shuffles or shared memory."""
    from triton._C.libtriton import gluon_ir
    builder = gluon_ir.GluonOpBuilder(module.context)
    moving = [0]

    def visit(op):
        if op.get_name() == "ttg.convert_layout":
            try:
                free = builder.is_convert_layout_trivial(op.get_result(0).get_type(), op.get_operand(0))
            except Exception:  # (a layout Triton cannot express linearly: count it as moving)
                free = False
            moving[0] += not free

    module.walk(visit)
    return moving[0]
