# The linear kernels (triton_dequant.kernels.linear) compiled for sm_90 on the
# CPU: the dequant asm is there, no integer-to-float cvt, 16-byte weight loads in
# the GEMV, tensor-core MMAs in the dot path, no layout conversion and no local
# memory inside the GEMV loop, and an instruction budget per weight read from
# the SASS of the loop (cuobjdump from the triton wheel).
#
# RUN: %python %s --kernel gemv --nbit 4 > %t.g4 && FileCheck %s --check-prefix=GEMV < %t.g4 && FileCheck %s --check-prefix=NOCVT < %t.g4 && FileCheck %s --check-prefix=G4 < %t.g4
# RUN: %python %s --kernel gemv --nbit 2 --bk 8 > %t.g2 && FileCheck %s --check-prefix=GEMV < %t.g2 && FileCheck %s --check-prefix=NOCVT < %t.g2 && FileCheck %s --check-prefix=G2 < %t.g2
# RUN: %python %s --kernel gemv --nbit 8 --scale 1 > %t.g8 && FileCheck %s --check-prefix=GEMV < %t.g8 && FileCheck %s --check-prefix=NOCVT < %t.g8
# RUN: %python %s --kernel gemv --nbit 4 --scale 1 --bm 4 --bk 8 > %t.g4m4 && FileCheck %s --check-prefix=GEMV < %t.g4m4 && FileCheck %s --check-prefix=NOCVT < %t.g4m4
# RUN: %python %s --kernel mm --bm 16 --bk 128 --bn 128 --split 4 > %t.mm16 && FileCheck %s --check-prefix=MM16 < %t.mm16 && FileCheck %s --check-prefix=NOCVT < %t.mm16
# RUN: %python %s --kernel mm --bm 64 --bk 64 --bn 128 --split 1 --stages 3 > %t.mm64 && FileCheck %s --check-prefix=MM64 < %t.mm64 && FileCheck %s --check-prefix=NOCVT < %t.mm64
# Per-group scale/shift (one group row per step: --scale 2; one per container row: --scale 3)
# and per-channel inside the asm (--scale 1) must compile too (the interpreter
# does not check loop-carried types):
# RUN: %python %s --kernel gemv --nbit 4 --scale 2 | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel gemv --nbit 4 --scale 3 | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel mm --bm 16 --bk 128 --bn 128 --split 4 --scale 2 | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel mm --bm 16 --bk 128 --bn 128 --split 4 --scale 3 | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel gemv --nbit 4 --prefetch | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel gemv --nbit 4 --packed 1 --scale 3 --bk 16 | FileCheck %s --check-prefix=GROUP
# RUN: %python %s --kernel mm --bm 16 --bk 128 --bn 128 --split 4 --packed 1 --scale 2 | FileCheck %s --check-prefix=GROUP
# GROUP: ttir: i32 row-stride products=0
# GROUP: // triton_dequant nbit=4 width=32 dst=fp16

# NOCVT-NOT: cvt.{{[a-z]+}}.{{f16|bf16|f32}}{{(x2)?}}.{{s|u}}{{8|16|32|64}}

# GEMV: ttir: i32 row-stride products=0
# GEMV: .target sm_90a
# GEMV: ld.global.L1::evict_first.L2::cache_hint.v4.b32
# GEMV: // triton_dequant nbit={{[248]}} width=32 dst=fp16
# GEMV: ttgir: convert_layout total={{[0-9]+}} in_loop=0
# GEMV: ttgir: local_alloc(tensor) total=0 in_loop=0
# GEMV: sass: {{.*}} local=0
# GEMV: sass loop: {{.*}} LDG.E.128={{[1-9]}}
# GEMV: budget: ok

# int4 fp16, codes only (scale after the reduction), fp16x2 container dots:
# per 8 codes prmt/lop3/fma x4 (dequant) + 4 fma.f16x2 + 2 cvt + 2 add
# G4: fma.rn.f16x2
# G4: sass loop: weights=128 {{.*}} PRMT=64 LOP3=64 HFMA2+HMUL2={{1[2-5][0-9]}} 
# int2 in int32: 16 codes per container
# G2: sass loop: weights=128 {{.*}} LOP3=64

# M = 16: mma.sync m16n8k16 (wgmma needs 64 rows); the dequantized tile
# (#linear, from the dequant's join tree) goes registers -> shared memory
# (local_alloc) -> mma operand (local_load) every step, and so does the x tile
# (unpipelined). With wgmma (BM = 64) the tile is the smem B operand.
# MM16: ttir: i32 row-stride products=0
# MM16: // triton_dequant nbit=4 width=32 dst=fp16
# MM16: mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
# MM16: ttgir: convert_layout total={{[0-9]+}} in_loop=0
# MM16: ttgir: local_alloc(tensor) total=2 in_loop=2
# MM16: loop: %q{{.*}} = ttg.local_alloc %q{{.*}} : (tensor<128x128xf16, #linear>)
# MM16: sass loop: {{.*}} HMMA=32
# MM16: budget: ok
# MM64: ttir: i32 row-stride products=0
# MM64: // triton_dequant nbit=4 width=32 dst=fp16
# MM64: wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16
# MM64: ttgir: local_alloc(tensor) total=1 in_loop=1
# MM64-NEXT: loop: %q{{.*}} = ttg.local_alloc %q{{.*}} : (tensor<64x128xf16, #linear>)
# MM64: sass loop: {{.*}} HGMMA=4

import argparse
import re
from collections import Counter

import triton

from lit_utils import compile_for
from triton_dequant.kernels import linear as kl
from triton_dequant.testing import NVIDIA_BIN as BIN, main_loop, op, sass_of  # noqa: F401  (linear_mma.py)

# instructions per weight per thread in the main loop (the H100 issue budget:
# ~17 us for int4 at 8192^2 means <= ~6 per weight even at perfect overlap)
BUDGET = {("gemv", 8): 4.0, ("gemv", 4): 3.6, ("gemv", 2): 3.0, ("mm", 4): 5.0}


def build(a):
    per = 32 // a.nbit
    sig = {"x_ptr": "*fp16", "w_ptr": "*i32", "s_ptr": "*fp16", "h_ptr": "*fp16", "b_ptr": "*fp16", "y_ptr": "*fp16",
           "ws_ptr": "*fp32", "cnt_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32",
           "stride_ym": "i32", "group_size": "i32", "iters": "i32", "n_tiles": "i32"}
    c = dict(NBIT=a.nbit, PER=per, PACKED=a.packed, SIGNED=False, BM=a.bm, BN=a.bn, SPLIT=a.split,
             SCALE=a.scale, REDUCE=1, EVEN_K=True, EVEN_N=True,
             UNPACK=kl._common.unpack, STAGES=a.stages, ITERS=0, HAS_BIAS=False)
    if a.kernel == "gemv":
        fn = kl.gemv_kernel
        xshift = kl.xshift(a.nbit, per, False) if a.scale == 0 else 0
        c.update(BKR=a.bk, MODE=kl.DOT_F16X2.value, XSHIFT=xshift, PREFETCH=a.prefetch)
        weights = a.bk * a.bn * per // (32 * a.num_warps)
    else:
        fn = kl.mm_kernel
        c.update(BK=a.bk, ASM=True)
        weights = a.bk * a.bn // (32 * a.num_warps)
    # pointers, N, K and the x/y row strides 16-divisible, as for 8192 x 8192 torch tensors
    k = compile_for(fn, sig, c, num_warps=a.num_warps, num_stages=1, aligned=(0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12))
    return k, weights


def ttgir_conversions(ttgir: str, op: str = "ttg.convert_layout"):
    """(total, in the first scf.for, [lines]) of ``op``."""
    lines = ttgir.splitlines()
    conv = [i for i, l in enumerate(lines) if op in l]
    loop = next((i for i, l in enumerate(lines) if "scf.for" in l), None)
    inside = set()
    if loop is not None:
        ind = len(lines[loop]) - len(lines[loop].lstrip())
        for j in range(loop + 1, len(lines)):
            l = lines[j]
            if l.strip().startswith("}") and len(l) - len(l.lstrip()) == ind:
                break
            inside.add(j)
    where = [("loop" if i in inside else "outside") + ": " + re.sub(r"\s+loc\(.*", "", lines[i].strip())
             for i in conv]
    return len(conv), sum(i in inside for i in conv), where


def int32_stride_products(ttir: str, args=("%stride_xm", "%stride_ym")):
    """``arith.muli`` lines on i32 values derived from the row-stride arguments:
    ``m * stride`` can pass 2**31 (issue 10), so every such product must be i64."""
    tainted = set(args)
    bad = []
    for line in ttir.splitlines():
        m = re.match(r"\s*(%[\w#.]+)(?::\d+)? = (\S+) (.*)", line)
        if not m:
            continue
        res, opname, rest = m.groups()
        body = rest.split(" loc(")[0]
        if not set(re.findall(r"%[\w#.]+", body)) & tainted:
            continue
        if opname == "arith.extsi" or body.rstrip().endswith("i64>") or body.rstrip().endswith("i64"):
            continue  # widened: from here on the products are 64-bit
        tainted.add(res)
        if opname == "arith.muli":
            bad.append(line.strip())
    assert all(a in ttir for a in args), "row-stride arguments not found in the TTIR"
    return bad


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", default="gemv", choices=["gemv", "mm"])
    p.add_argument("--nbit", type=int, default=4)
    p.add_argument("--bm", type=int, default=1)
    p.add_argument("--bk", type=int, default=16)
    p.add_argument("--bn", type=int, default=128)
    p.add_argument("--split", type=int, default=8)
    p.add_argument("--scale", type=int, default=0)
    p.add_argument("--stages", type=int, default=1)
    p.add_argument("--num-warps", type=int, default=4)
    p.add_argument("--prefetch", action="store_true")
    p.add_argument("--packed", type=int, default=0, help="0: codes packed along K, 1: along N")
    a = p.parse_args()
    k, weights = build(a)
    print(f"ttir: i32 row-stride products={len(int32_stride_products(k.asm['ttir']))}")
    print(k.asm["ptx"])
    total, in_loop, where = ttgir_conversions(k.asm["ttgir"])
    print(f"ttgir: convert_layout total={total} in_loop={in_loop}")
    for w in where:
        print("  " + w)
    # register tile -> shared memory -> mma operand (the dot path's remaining conversion)
    total, in_loop, where = ttgir_conversions(k.asm["ttgir"], "ttg.local_alloc %")
    print(f"ttgir: local_alloc(tensor) total={total} in_loop={in_loop}")
    for w in where:
        print("  " + w)
    sass = sass_of(k.asm["cubin"])
    local = int(bool(re.search(r"\b(LDL|STL)\b", sass)))
    n_ins = len(re.findall(r"/\*[0-9a-f]{4,}\*/\s+\S", sass))
    print(f"sass: instructions={n_ins} local={local}")
    body = main_loop(sass)
    c = Counter(op(t).split(".")[0] for t in body)
    full = Counter(op(t) for t in body)
    print(f"sass loop: weights={weights} instructions={len(body)} per_weight={len(body) / weights:.2f} "
          f"PRMT={c['PRMT']} LOP3={c['LOP3']} HFMA2+HMUL2={c['HFMA2'] + c['HMUL2']} HMMA={c['HMMA']} "
          f"HGMMA={c['HGMMA']} LDG.E.128={sum(v for k_, v in full.items() if k_.startswith('LDG.E') and '128' in k_)} "
          f"LDGSTS={c['LDGSTS']} LDS={c['LDS']} BAR={c['BAR']}")
    limit = BUDGET.get((a.kernel, a.nbit), 6.0) * (1.0 if a.scale == 0 and a.bm == 1 else a.bm + 0.5)
    print("budget: " + ("ok" if len(body) / weights <= limit else f"over ({len(body) / weights:.2f} > {limit})"))
