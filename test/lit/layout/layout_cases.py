"""Kernels around ``tl.dequantize`` and a CLI that compiles them on the CPU for
an NVIDIA target and prints what the layout step (``triton_dequant.layout``)
made of them. Imported by the lit tests in this folder (see their RUN lines).

    python layout_cases.py CASE[,CASE...] [--nbit 8,4,2] [--block 256,...] [--warps 4,8]
        [--stages 3] [--capability 90] [--layout on|off|env] [--policy narrow|stock|owned]
        [--ir summary,ttgir,ptx]

``--ir summary`` prints one line per configuration (every combination of the
comma-separated lists):

    store1d nbit=4 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v4 st.global=v4

``moving``: ``ttg.convert_layout`` ops that move data between threads (through
shared memory or shuffles); ``register``: conversions that only reorder a
thread's registers (free); ``local_alloc``: shared-memory buffers in TTGIR;
``shared``: ``ld/st.shared`` instructions in the PTX; ``ld.global`` /
``st.global``: the widest vector of the loads of the packed words / of the
stores of the dequantized tile (``v4`` = 16 bytes for 32-bit elements, ``b32``
a scalar 32-bit access, ...). ``block`` counts packed words per program (for
2-D tiles: 64 columns, the other dimension block // 64).
"""
from __future__ import annotations

import argparse
import itertools
import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)
# (no TRITON_ALWAYS_COMPILE: the layout state is part of the kernel cache key, so a
# cached kernel is one compiled in the same state)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import triton_dequant  # noqa: E402,F401  (registers tl.dequantize)
from triton_dequant import layout  # noqa: E402
from triton_dequant.testing import compile_for  # noqa: E402

CONTAINER = {8: 32, 4: 32, 2: 16, 1: 8}  # the seed formats: int8/int4 in int32, int2 in int16
COLS = 64


@triton.jit
def store1d(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = tl.dequantize(x, 0.5, -8.0, NBIT)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + o, y, mask=o < n * PER)


@triton.jit
def loop1d(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """Persistent loop: load, dequantize and store inside an scf.for."""
    for t in range(tl.program_id(0), tl.cdiv(n, BLOCK), tl.num_programs(0)):
        offs = t * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n)
        y = tl.dequantize(x, 0.5, -8.0, NBIT)
        o = t * BLOCK * PER + tl.arange(0, BLOCK * PER)
        tl.store(y_ptr + o, y, mask=o < n * PER)


@triton.jit
def per_output(x_ptr, s_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """A per-output scale tensor (loaded) meets the dequantized tile."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    s = tl.load(s_ptr + o, mask=o < n * PER)
    y = tl.dequantize(x, s, 0.0, NBIT)
    tl.store(y_ptr + o, y, mask=o < n * PER)


@triton.jit
def store2d_last(x_ptr, s_ptr, y_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr,
                 PER: tl.constexpr):
    """[BM, BN] words -> [BM, BN*PER], one scale per row."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)[:, None]
    rn = tl.arange(0, BN)[None, :]
    x = tl.load(x_ptr + rm * N + rn, mask=rm < M)
    s = tl.load(s_ptr + rm, mask=rm < M)
    y = tl.dequantize(x, s, 0.0, NBIT, axis=1)
    ro = tl.arange(0, BN * PER)[None, :]
    tl.store(y_ptr + rm * N * PER + ro, y, mask=rm < M)


@triton.jit
def store2d_axis0(x_ptr, s_ptr, y_ptr, K, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr,
                  PER: tl.constexpr):
    """[BK, BN] words -> [BK*PER, BN] (unpacked along axis 0), one scale per column."""
    rk = tl.program_id(0) * BK + tl.arange(0, BK)[:, None]
    rn = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    x = tl.load(x_ptr + rk * N + rn, mask=rn < N)
    s = tl.load(s_ptr + rn, mask=rn < N)
    y = tl.dequantize(x, s, 0.0, NBIT, axis=0)
    ro = tl.program_id(0) * BK * PER + tl.arange(0, BK * PER)[:, None]
    tl.store(y_ptr + ro * N + rn, y, mask=rn < N)


@triton.jit
def gemv(x_ptr, w_ptr, s_ptr, y_ptr, K, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr,
         PER: tl.constexpr):
    """y = x @ W: w tile [BK/PER, BN] words dequantized along axis 0, times x[:, None], tl.sum over axis 0."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rkw = k0 // PER + tl.arange(0, BK // PER)
        w = tl.load(w_ptr + rkw[:, None] * N + rn[None, :])
        q = tl.dequantize(w, 1.0, 0.0, NBIT, axis=0)
        x = tl.load(x_ptr + k0 + tl.arange(0, BK))
        acc += tl.sum(q.to(tl.float32) * x[:, None].to(tl.float32), axis=0)
    s = tl.load(s_ptr + rn)
    tl.store(y_ptr + rn, (acc * s).to(tl.float16))


@triton.jit
def gemm(a_ptr, w_ptr, s_ptr, c_ptr, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
         NBIT: tl.constexpr, PER: tl.constexpr):
    """C = A @ B, B [BK, BN] dequantized along axis 0 from [BK/PER, BN] words, per-column scale."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    s = tl.load(s_ptr + rn)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        a = tl.load(a_ptr + rm[:, None] * K + rk[None, :])
        rkw = k0 // PER + tl.arange(0, BK // PER)
        w = tl.load(w_ptr + rkw[:, None] * N + rn[None, :])
        b = tl.dequantize(w, s[None, :], 0.0, NBIT, axis=0)
        acc = tl.dot(a, b, acc)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc.to(tl.float16))


def build(case: str, nbit: int, block: int, warps: int, stages: int = 3, capability: int = 90):
    """Compile one configuration; ``block`` = packed words per program (per loop step)."""
    width = CONTAINER[nbit]
    per = width // nbit
    w = f"*i{width}"
    opts = dict(num_warps=warps, num_stages=stages, capability=capability, aligned=tuple(range(8)))
    if case in ("store1d", "loop1d"):
        fn = store1d if case == "store1d" else loop1d
        return compile_for(fn, {"x_ptr": w, "y_ptr": "*fp16", "n": "i32"},
                           {"BLOCK": block, "NBIT": nbit, "PER": per}, **opts)
    if case == "per_output":
        return compile_for(per_output, {"x_ptr": w, "s_ptr": "*fp16", "y_ptr": "*fp16", "n": "i32"},
                           {"BLOCK": block, "NBIT": nbit, "PER": per}, **opts)
    if case == "store2d_last":
        return compile_for(store2d_last, {"x_ptr": w, "s_ptr": "*fp16", "y_ptr": "*fp16", "M": "i32", "N": "i32"},
                           {"BM": block // COLS, "BN": COLS, "NBIT": nbit, "PER": per}, **opts)
    if case == "store2d_axis0":
        return compile_for(store2d_axis0, {"x_ptr": w, "s_ptr": "*fp16", "y_ptr": "*fp16", "K": "i32", "N": "i32"},
                           {"BK": block // COLS, "BN": COLS, "NBIT": nbit, "PER": per}, **opts)
    if case == "gemv":
        return compile_for(gemv, {"x_ptr": "*fp16", "w_ptr": w, "s_ptr": "*fp16", "y_ptr": "*fp16",
                                  "K": "i32", "N": "i32"},
                           {"BK": block // COLS * per, "BN": COLS, "NBIT": nbit, "PER": per}, **opts)
    if case == "gemm":
        return compile_for(gemm, {"a_ptr": "*fp16", "w_ptr": w, "s_ptr": "*fp16", "c_ptr": "*fp16",
                                  "M": "i32", "N": "i32", "K": "i32"},
                           {"BM": 64, "BN": COLS, "BK": block // COLS * per, "NBIT": nbit, "PER": per}, **opts)
    raise SystemExit(f"unknown case {case!r}")


_VEC = re.compile(r"\b(ld|st)\.global(?:\.[a-z]+)*?\.((?:v[248]\.)?[bfsu](?:8|16|32|64))\b")


def widest(ptx: str, kind: str, bits: int) -> str:
    """The widest ``kind`` ('ld'/'st') global access of ``bits``-bit elements, as
    'v4' / 'v2' / 'b32' / 'b16'... (vectors of 32-bit words count as 32-bit elements)."""
    best = (0, "-")
    for k, ty in _VEC.findall(ptx):
        if k != kind:
            continue
        vec = int(ty[1]) if ty.startswith("v") else 1
        width = int(re.sub(r"\D", "", ty.split(".")[-1]))
        total = vec * width
        if total > best[0]:
            best = (total, f"v{vec}" if vec > 1 else f"b{width}")
    return best[1]


def summary(kernel) -> str:
    ttgir, ptx = kernel.asm["ttgir"], kernel.asm["ptx"]
    c = layout.conversion_summary(ttgir)
    shared = len(re.findall(r"\b(?:ld|st)\.shared\b", ptx))
    return (f"moving={c['moving']} register={c['register']} local_alloc={c['local_alloc']} shared={shared} "
            f"ld.global={widest(ptx, 'ld', 32)} st.global={widest(ptx, 'st', 32)}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("--nbit", default="4")
    p.add_argument("--block", default="1024")
    p.add_argument("--warps", default="4")
    p.add_argument("--stages", default="3")
    p.add_argument("--capability", type=int, default=90)
    p.add_argument("--layout", choices=["on", "off", "env"], default="on",
                   help="on/off: layout.enable()/disable(); env: follow TRITON_DEQUANT_LAYOUT")
    p.add_argument("--policy", choices=["narrow", "stock", "owned"], default="narrow",
                   help="layout.set_store_policy() for stores whose tile would leave gaps")
    p.add_argument("--ir", default="summary", help="comma-separated: summary, ttgir, llir, ptx")
    a = p.parse_args(argv)
    if a.layout == "on":
        layout.enable()
    elif a.layout == "off":
        layout.disable()
    layout.set_store_policy(a.policy)
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    for case, nbit, block, warps, stages in itertools.product(
            a.case.split(","), ints(a.nbit), ints(a.block), ints(a.warps), ints(a.stages)):
        k = build(case, nbit, block, warps, stages, a.capability)
        for ir in a.ir.split(","):
            if ir == "summary":
                print(f"{case} nbit={nbit} block={block} warps={warps} stages={stages}: {summary(k)}", flush=True)
            else:
                print(k.asm[ir], flush=True)


if __name__ == "__main__":
    main()
