# The tensor-core kernel on prepacked weights (kernels.linear._mma_prepacked)
# compiled on the CPU at the launch table's configs (prepacked_config, K = N =
# 8192) for sm_90 and sm_80: tensor-core instructions in the main loop (HGMMA /
# HMMA), the weights arrive by cp.async (LDGSTS) and never go to shared memory
# from registers (no STS / STSM in the loop), no layout conversion through shared
# memory in TTGIR, no local memory (spills), and the registers and SASS
# instructions per weight of the loop printed (and bounded).
#
# int4 fp16 per channel (codes into the MMA, scale after the loop; inside the asm on
# sm_80) and g128 (the bench's case) at M = 16, 64, 128 on both archs, bf16, signed,
# int8, int2 (g32: half words), bias. Other configs: --arch/--m/--nbit/--group/...
# RUN: %python %s --arch 90 --m 16 > %t.a && FileCheck %s --check-prefixes=CHECK,H < %t.a
# RUN: %python %s --arch 90 --m 64 --group 128 --dtype bf16 > %t.b && FileCheck %s --check-prefixes=CHECK,H < %t.b
# RUN: %python %s --arch 90 --m 128 --group 128 > %t.c && FileCheck %s --check-prefixes=CHECK,H < %t.c
# RUN: %python %s --arch 80 --m 16 --group 128 --dtype bf16 --signed > %t.d && FileCheck %s --check-prefixes=CHECK,A < %t.d
# RUN: %python %s --arch 80 --m 64 --inside > %t.e && FileCheck %s --check-prefixes=CHECK,A < %t.e
# RUN: %python %s --arch 80 --m 128 --nbit 8 --group 64 > %t.f && FileCheck %s --check-prefixes=CHECK,A < %t.f
# RUN: %python %s --arch 90 --m 16 --nbit 2 --group 32 > %t.g && FileCheck %s --check-prefixes=CHECK,H,SUB2 < %t.g
# RUN: %python %s --arch 90 --m 16 --nbit 8 --group 32 --bias > %t.h && FileCheck %s --check-prefixes=CHECK,H < %t.h

# CHECK: layout: mma_sm{{[89]}}0_{{[248]}}b_n128k{{64|128}}w4
# CHECK: ttir: i32 row-stride products=0
# CHECK: // triton_dequant nbit={{[248]}} width={{16|32}} dst={{fp16|bf16}}
# SUB2: // triton_dequant nbit=2 width=16
# H: wgmma.mma_async.sync.aligned
# A: mma.sync.aligned.m16n8k16.row.col.f32
# CHECK: ttgir: dot_op kWidth={{[24]}} convert_layout_via_smem=0
# CHECK: sass: registers={{[0-9]+}} local=0
# H: sass loop: {{.*}} HGMMA={{[1-9][0-9]*}} HMMA=0 STS=0 STSM=0 LDGSTS={{[1-9][0-9]*}}
# A: sass loop: {{.*}} HGMMA=0 HMMA={{[1-9][0-9]*}} STS=0 STSM=0 LDGSTS={{[1-9][0-9]*}}
# CHECK: budget: ok

import argparse
import os
import re
import subprocess
import tempfile
from collections import Counter

import torch
import triton

from linear import BIN, int32_stride_products, main_loop, op, sass_of
from triton_dequant import layouts
from triton_dequant.inspect import plan_linear
from triton_dequant.kernels import _plan
from triton_dequant.kernels import linear as kl

# SASS instructions per weight per thread in the main loop (dequant 1.5, scale
# fma 0.5, per-word scale loads, the MMA's operand moves, address and pipeline
# bookkeeping): the launch table's configs must stay below this. 8-warp tiles
# (bm = 128) give each thread half the weights of a step for the same per-step
# bookkeeping.
BUDGET = {4: 6.0, 8: 7.0}


def registers(cubin: bytes) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([os.path.join(BIN, "cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1))


def build(a):
    """The launch table's config for the call, planned and compiled exactly as the
    CUDA path plans and compiles it (triton_dequant.inspect.plan_linear -> kernels._plan)."""
    arch = "sm90" if a.arch >= 90 else "sm80"
    dt = {"fp16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    lay = layouts.default_layout(arch, a.nbit)
    K = N = 8192
    cfg = kl.prepacked_config(a.m, K, N, lay, dt)
    if a.inside:
        cfg = kl.Config(**{**cfg.__dict__, "post": False})
    plan, target = plan_linear(M=a.m, K=K, N=N, nbit=a.nbit, group_size=a.group or 0, dtype=a.dtype,
                               signed=a.signed, layout=lay, bias=a.bias, arch=a.arch, config=cfg)
    kern = plan.kernels[0]
    k = _plan.compile_kernel(kern, target)
    return k, lay, cfg, kern.constexprs


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--m", type=int, default=16)
    p.add_argument("--nbit", type=int, default=4)
    p.add_argument("--group", type=int, default=None)
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    p.add_argument("--signed", action="store_true")
    p.add_argument("--inside", action="store_true", help="per-channel scale inside the dequant asm")
    p.add_argument("--bias", action="store_true")
    a = p.parse_args()
    k, lay, cfg, kw = build(a)
    print(f"layout: {lay.name}")
    print(f"config: M={a.m} {cfg.short()} SCALE={kw['SCALE']} SUB={kw['SUB']}")
    print(f"ttir: i32 row-stride products={len(int32_stride_products(k.asm['ttir']))}")
    print(k.asm["ptx"])
    ttgir = k.asm["ttgir"]
    kw_ = sorted(set(re.findall(r"#ttg\.dot_op<\{opIdx = 0, parent = #\w+, kWidth = (\d+)\}>", ttgir)))
    # a conversion through shared memory shows up as a local_alloc of a register tensor
    via_smem = len(re.findall(r"ttg\.local_alloc %", ttgir))
    print(f"ttgir: dot_op kWidth={','.join(kw_)} convert_layout_via_smem={via_smem}")
    sass = sass_of(k.asm["cubin"])
    local = int(bool(re.search(r"\b(LDL|STL)\b", sass)))
    print(f"sass: registers={registers(k.asm['cubin'])} local={local}")
    body = main_loop(sass)
    c = Counter(op(t).split(".")[0] for t in body)
    weights = lay.bn * lay.bk // (32 * cfg.num_warps)
    full = Counter(op(t) for t in body)
    print(f"sass loop: weights={weights} instructions={len(body)} per_weight={len(body) / weights:.2f} "
          f"HGMMA={c['HGMMA']} HMMA={c['HMMA']} STS={c['STS']} STSM={c['STSM']} LDGSTS={c['LDGSTS']} "
          f"LDS={c['LDS']} LDSM={c['LDSM']} LDG={c['LDG']} PRMT={c['PRMT']} LOP3={c['LOP3']} HFMA2={c['HFMA2']} "
          f"MOV={full['IMAD.MOV.U32'] + full['MOV']} BAR={c['BAR']}")
    limit = BUDGET[cfg.num_warps]
    print("budget: " + ("ok" if len(body) / weights <= limit else f"over ({len(body) / weights:.2f} > {limit})"))
