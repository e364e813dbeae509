# The n-bit embedding bag kernel (kernels/embedding_bag.py) compiled for sm_90 on the CPU,
# with the tile parameters the launcher picks for the bench tables (int4 codes in int32
# rows, 64K bags of 32 lookups): the dequant asm is there, no integer-to-float cvt, the
# loads are as wide as the row alignment allows, and nothing spills.
#
# D=128, rows of 1 + 16 words (68 bytes, the bench table): the tile starts at the first
# data word (4 bytes into the row), so 4-byte loads.
# RUN: %python %s --dim 128 --elems 17 > %t.d128 && FileCheck %s --check-prefixes=CHECK,D128 < %t.d128 && FileCheck %s --check-prefix=NOCVT < %t.d128
# D=512, rows of 1 + 64 words (260 bytes), one column block of 64 words per bag.
# RUN: %python %s --dim 512 --elems 65 > %t.d512 && FileCheck %s --check-prefixes=CHECK,D512 < %t.d512 && FileCheck %s --check-prefix=NOCVT < %t.d512
# Weighted sum (per_sample_weights), fp32 output.
# RUN: %python %s --dim 512 --elems 65 --weights --out fp32 | FileCheck %s --check-prefixes=CHECK,W512
# Rows padded to a multiple of 16 bytes and the tile forced to start at the row start
# (header in the tile): 16-byte loads.
# RUN: %python %s --dim 128 --elems 20 --head-in 1 --block-w 32 | FileCheck %s --check-prefixes=CHECK,V4
# D=120 in 1 + 15 words (64 bytes): the launcher itself picks the full-row tile.
# RUN: %python %s --dim 120 --elems 16 | FileCheck %s --check-prefixes=CHECK,V4AUTO
#
# Every container x nbit compiles (mean / weighted sum, signed or not, fp16 / fp32 out,
# both tile origins); the only int-to-float cvt is mean's bag length (one per program).
# RUN: %python %s --all | FileCheck %s --check-prefix=ALL
#
# Static SASS figures of a few tile configurations (the bench sweeps the best on the GPU):
# RUN: %python %s --sweep | FileCheck %s --check-prefix=SWEEP

# NOCVT-NOT: cvt.{{[a-z]+}}.{{f16|bf16|f32}}{{(x2)?}}.{{s|u}}{{8|16|32|64}}

# (FileCheck matches the lines of all prefixes in file order: the common CHECK lines
# come first and last.)
# CHECK: // triton_dequant nbit=4 width=32 dst=fp16 signed=0

# D128: config: D=128 E=17 head_in=0 vec=1 BLOCK_L=32 BLOCK_W=16 n_blocks=1 warps=2
# D128: ptx: dequant_blocks={{[1-9][0-9]*}} int_to_float=0
# D128: loads: ld.global.b32={{[0-9]+}} ld.global.v2=0 ld.global.v4=0
# D128: ttgir: convert_layout={{[0-9]+}} local_alloc=0

# D512: config: D=512 E=65 head_in=0 vec=1 BLOCK_L=32 BLOCK_W=64 n_blocks=1 warps=2
# D512: ptx: dequant_blocks={{[1-9][0-9]*}} int_to_float=0
# D512: loads: ld.global.b32={{[0-9]+}} ld.global.v2=0 ld.global.v4=0
# D512: ttgir: convert_layout={{[0-9]+}} local_alloc=0

# W512: config: D=512 E=65 head_in=0 vec=1 BLOCK_L=16 BLOCK_W=64 n_blocks=1 warps=2 weights=1 out=fp32
# W512: ptx: dequant_blocks={{[1-9][0-9]*}} int_to_float=0
# W512: ttgir: convert_layout={{[0-9]+}} local_alloc=0

# V4: config: D=128 E=20 head_in=1 vec=4 BLOCK_L=32 BLOCK_W=32 n_blocks=1 warps=2
# V4: ptx: dequant_blocks={{[1-9][0-9]*}} int_to_float=0
# V4: loads: ld.global.b32={{[0-9]+}} ld.global.v2=0 ld.global.v4={{[1-9][0-9]*}}

# V4AUTO: config: D=120 E=16 head_in=1 vec=4 BLOCK_L=32 BLOCK_W=16 n_blocks=1 warps=2
# V4AUTO: ptx: dequant_blocks={{[1-9][0-9]*}} int_to_float=0
# V4AUTO: loads: ld.global.b32={{[0-9]+}} ld.global.v2=0 ld.global.v4={{[1-9][0-9]*}}

# CHECK: sass: regs={{[0-9]+}} spills=0

# ALL: width=32 nbit=8 mean signed=1 out=fp16 head_in=1: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=32 nbit=4 wsum signed=1 out=fp32 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0
# ALL: width=32 nbit=2 mean signed=0 out=fp16 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=32 nbit=1 wsum signed=0 out=fp32 head_in=1: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0
# ALL: width=16 nbit=8 mean signed=1 out=fp16 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=16 nbit=4 wsum signed=1 out=fp32 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0
# ALL: width=16 nbit=2 mean signed=0 out=fp16 head_in=1: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=16 nbit=1 wsum signed=0 out=fp32 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0
# ALL: width=8 nbit=8 mean signed=1 out=fp16 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=8 nbit=4 wsum signed=1 out=fp32 head_in=1: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0
# ALL: width=8 nbit=2 mean signed=0 out=fp16 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=1 spills=0
# ALL: width=8 nbit=1 wsum signed=0 out=fp32 head_in=0: dequant_blocks={{[1-9][0-9]*}} int_to_float=0 spills=0

# SWEEP: D=128 L=32 BW=16 warps=1 regs={{[0-9]+}} stack=0
# SWEEP: D=128 L=32 BW=16 warps=2 regs={{[0-9]+}} stack=0
# SWEEP: D=128 L=32 BW=16 warps=4 regs={{[0-9]+}} stack=0
# SWEEP: D=128 L=16 BW=16 warps=1 regs={{[0-9]+}} stack=0
# SWEEP: D=512 L=32 BW=64 warps=2 regs={{[0-9]+}} stack=0
# SWEEP: D=512 L=32 BW=64 warps=4 regs={{[0-9]+}} stack=0
# SWEEP: D=512 L=16 BW=64 warps=2 regs={{[0-9]+}} stack=0
# SWEEP: D=512 L=32 BW=32 warps=2 regs={{[0-9]+}} stack=0
# SWEEP: D=512 L=16 BW=32 warps=1 regs={{[0-9]+}} stack=0

import argparse
import re
import subprocess

import torch
import triton
import triton.language as tl

from lit_utils import compile_for

from triton_dequant.kernels import embedding_bag as keb
from triton_dequant.testing import dequant_asm_blocks, int_to_float_conversions

CUOBJDUMP = f"{triton.__path__[0]}/backends/nvidia/bin/cuobjdump"
ARGS = ["rows_ptr", "idx_ptr", "off_ptr", "w_ptr", "out_ptr", "n_off", "n_idx", "stride_v", "limit_v", "dim",
        "n_blocks"]
BAGS, LOOKUPS = 65536, 32


def build(dim, elems, block_l=None, block_w=None, warps=None, head_in=None, weights=False, out="fp16",
          capability=90):
    rows = torch.empty(4, elems, dtype=torch.int32)
    lay = keb.layout(rows, 4, dim, block_w, head_in)
    cfg = keb.default_config(BAGS, BAGS * LOOKUPS, lay["block_w"] * 8, weights)
    block_l, warps = block_l or cfg["block_l"], warps or cfg["num_warps"]
    sig = dict(zip(ARGS, ["*i32", "*i32", "*i32", "*fp32", "*" + out] + ["i32"] * 6))
    values = dict(n_off=BAGS, n_idx=BAGS * LOOKUPS, stride_v=lay["stride"] // lay["vec"],
                  limit_v=lay["limit"] // lay["vec"], dim=dim, n_blocks=lay["n_blocks"])
    # as Triton specializes launch arguments: ints equal to 1 become constants, ints
    # divisible by 16 (and the tensors) are marked 16-divisible
    constexprs = {k: 1 for k, v in values.items() if v == 1}
    aligned = tuple(range(5)) + tuple(ARGS.index(k) for k, v in values.items() if v % 16 == 0)
    constexprs.update(NBIT=4, PER=8, WIDTH=32, VEC=lay["vec"], HEAD_IN=lay["head_in"], BLOCK_L=block_l,
                      BLOCK_W=lay["block_w"], HAS_W=weights, MEAN=False, SIGNED=False,
                      OUT_DTYPE={"fp16": tl.float16, "fp32": tl.float32}[out])
    k = compile_for(keb._embedding_bag_kernel, sig, constexprs, capability=capability, num_warps=warps,
                    num_stages=1, aligned=aligned)
    desc = (f"D={dim} E={elems} head_in={int(lay['head_in'])} vec={lay['vec']} BLOCK_L={block_l} "
            f"BLOCK_W={lay['block_w']} n_blocks={lay['n_blocks']} warps={warps}")
    return k, desc, lay, block_l, warps


def sass_stats(kernel):
    """Registers, spills and instruction counts of the cubin (cuobjdump runs without a GPU)."""
    import os
    import tempfile
    fd, path = tempfile.mkstemp(suffix=".cubin")
    with os.fdopen(fd, "wb") as f:
        f.write(kernel.asm["cubin"])
    try:
        res = subprocess.run([CUOBJDUMP, "-res-usage", path], capture_output=True, text=True, check=True).stdout
        sass = subprocess.run([CUOBJDUMP, "-sass", path], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(path)
    get = lambda key: int(re.search(key + r":(\d+)", res).group(1))
    ops = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_]+)", sass)
    return dict(regs=get("REG"), stack=get("STACK"), local=get("LOCAL"), instr=len(ops),
                ldg=ops.count("LDG"), shfl=ops.count("SHFL"), bar=ops.count("BAR"))


def summary(k, desc, extra=""):
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    blocks = dequant_asm_blocks(ptx)
    print(blocks[0].splitlines()[0] if blocks else "no dequant asm")
    print(f"config: {desc}{extra}")
    print(f"ptx: dequant_blocks={len(blocks)} int_to_float={len(int_to_float_conversions(ptx))}")
    lds = re.findall(r"ld\.global(?:\.[a-z0-9]+)*", ptx)
    print("loads: " + " ".join(f"{name}={n}" for name, n in (
        ("ld.global.b32", sum(x.endswith(".b32") and ".v" not in x for x in lds)),
        ("ld.global.v2", sum(".v2." in x for x in lds)), ("ld.global.v4", sum(".v4." in x for x in lds)))))
    sts = sorted(set(re.findall(r"st\.global(?:\.[a-z0-9]+)*", ptx)))
    print(f"stores: {' '.join(sts)}")
    print(f"ttgir: convert_layout={ttgir.count('ttg.convert_layout')} local_alloc={ttgir.count('ttg.local_alloc')}")
    s = sass_stats(k)
    print(f"sass: regs={s['regs']} spills={s['stack'] + s['local']} instr={s['instr']} LDG={s['ldg']} "
          f"SHFL={s['shfl']} BAR={s['bar']}")


def all_variants():
    ptr = {32: "*i32", 16: "*i16", 8: "*u8"}
    pairs = [(w, n) for w in (32, 16, 8) for n in (8, 4, 2, 1)]
    for k, (width, nbit) in enumerate(pairs):
        mean, signed, out, head_in = k % 2 == 0, k % 4 < 2, ("fp16", "fp32")[k % 2], k % 3 == 0
        sig = dict(zip(ARGS, [ptr[width], "*i64", "*i64", "*fp16", "*" + out] + ["i32"] * 6))
        cx = dict(NBIT=nbit, PER=width // nbit, WIDTH=width, VEC=1, HEAD_IN=head_in, BLOCK_L=16,
                  BLOCK_W=max(1, 64 // (width // nbit)), HAS_W=not mean, MEAN=mean, SIGNED=signed,
                  OUT_DTYPE={"fp16": tl.float16, "fp32": tl.float32}[out])
        kern = compile_for(keb._embedding_bag_kernel, sig, cx, num_warps=2, num_stages=1)
        ptx = kern.asm["ptx"]
        s = sass_stats(kern)
        print(f"width={width} nbit={nbit} {'mean' if mean else 'wsum'} signed={int(signed)} out={out} "
              f"head_in={int(head_in)}: dequant_blocks={len(dequant_asm_blocks(ptx))} "
              f"int_to_float={len(int_to_float_conversions(ptx))} spills={s['stack'] + s['local']}")


def sweep():
    """Static SASS per configuration; 'warp-instr/bag' = instructions x warps x column
    blocks x chunks of the bag (straight-line estimate: loops counted once)."""
    for dim, elems, configs in ((128, 17, [(32, 16, 1), (32, 16, 2), (32, 16, 4), (16, 16, 1)]),
                                (512, 65, [(32, 64, 2), (32, 64, 4), (16, 64, 2), (32, 32, 2), (16, 32, 1)])):
        for L, bw, w in configs:
            k, _, lay, _, _ = build(dim, elems, L, bw, w)
            s = sass_stats(k)
            per_bag = s["instr"] * w * lay["n_blocks"] * (LOOKUPS // L)
            print(f"D={dim} L={L} BW={bw} warps={w} regs={s['regs']} stack={s['stack']} instr={s['instr']} "
                  f"SHFL={s['shfl']} BAR={s['bar']} warp-instr/bag~{per_bag}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--elems", type=int, default=17)
    p.add_argument("--block-l", type=int)
    p.add_argument("--block-w", type=int)
    p.add_argument("--warps", type=int)
    p.add_argument("--head-in", type=int, choices=[0, 1])
    p.add_argument("--weights", action="store_true")
    p.add_argument("--out", default="fp16", choices=["fp16", "fp32"])
    p.add_argument("--ir", choices=["ttgir", "ptx"], help="print that IR too")
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--all", action="store_true")
    a = p.parse_args()
    if a.sweep:
        sweep()
    elif a.all:
        all_variants()
    else:
        head_in = None if a.head_in is None else bool(a.head_in)
        k, desc, *_ = build(a.dim, a.elems, a.block_l, a.block_w, a.warps, head_in, a.weights, a.out)
        extra = (" weights=1" if a.weights else "") + (f" out={a.out}" if a.weights or a.out != "fp16" else "")
        if a.ir:
            print(k.asm[a.ir])
        summary(k, desc, extra)
