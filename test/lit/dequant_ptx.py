# The PTX contract of tl.dequantize: built from prmt/lop3 and packed FMAs, no
# integer-to-float cvt, and a fixed instruction budget per output element
# (register moves excluded: ptxas folds them).
#
# RUN: %python %s --nbit 4 --width 32 --dst fp16 > %t.i4 && FileCheck %s --check-prefix=I4 < %t.i4 && FileCheck %s --check-prefix=NOCVT < %t.i4
# RUN: %python %s --nbit 8 --width 32 --dst fp16 > %t.i8 && FileCheck %s --check-prefix=I8 < %t.i8 && FileCheck %s --check-prefix=NOCVT < %t.i8
# RUN: %python %s --nbit 2 --width 16 --dst fp16 > %t.i2 && FileCheck %s --check-prefix=I2 < %t.i2 && FileCheck %s --check-prefix=NOCVT < %t.i2
# RUN: %python %s --nbit 4 --width 32 --dst bf16 > %t.b4 && FileCheck %s --check-prefix=B4 < %t.b4 && FileCheck %s --check-prefix=NOCVT < %t.b4
# RUN: %python %s --nbit 4 --width 32 --dst fp32 > %t.f4 && FileCheck %s --check-prefix=F4 < %t.f4 && FileCheck %s --check-prefix=NOCVT < %t.f4
# RUN: %python %s --nbit 4 --width 32 --dst fp16 --capability 80 | FileCheck %s --check-prefix=SM80
#
# Instruction counts for every container x nbit x dst (sm_90, scale/shift as
# operands), read from the compiled PTX:
# RUN: %python %s --all | FileCheck %s --check-prefix=ALL

# NOCVT-NOT: cvt.{{[a-z]+}}.{{f16|bf16|f32}}{{(x2)?}}.{{s|u}}{{8|16|32|64}}

# int4 in int32 -> fp16: per pair of outputs prmt + lop3 + fma (exact code) + fma (scale, shift)
# I4: .target sm_90a
# I4: // triton_dequant nbit=4 width=32 dst=fp16 signed=0
# I4-COUNT-4: prmt.b32 {{.*}}, 0x{{[0-3]}}{{[0-3]}}{{[0-3]}}{{[0-3]}};
# I4-NOT: prmt.b32
# I4: }
# I4: dequant: outputs=8 prmt=4 lop3=4 shr=0 xor=0 fma=8 sub=0 cvt=0 total=16 per_output=2.000

# int8 in int32 -> fp16: prmt inserts the 0x64 exponent byte itself (no lop3)
# I8: // triton_dequant nbit=8 width=32 dst=fp16
# I8: mov.b32 {{.*}}, 0x64646464;
# I8: dequant: outputs=4 prmt=2 lop3=0 shr=0 xor=0 fma=4 sub=0 cvt=0 total=6 per_output=1.500

# int2 in int16 (the seed's int16 format) -> fp16
# I2: // triton_dequant nbit=2 width=16 dst=fp16
# I2: lop3.b32 {{.*}}, 0x6a;
# I2: dequant: outputs=8 prmt=4 lop3=4 shr=0 xor=0 fma=8 sub=0 cvt=0 total=16 per_output=2.000

# bf16: nibbles at bit 4..7 would reach the exponent of the 0x4300 magic, one shift per word
# B4: // triton_dequant nbit=4 width=32 dst=bf16
# B4: shr.u32
# B4: fma.rn.bf16x2
# B4: dequant: outputs=8 prmt=4 lop3=4 shr=1 xor=0 fma=8 sub=0 cvt=0 total=17 per_output=2.125

# fp32: magic 2**23 (0x4b000000), one value per register
# F4: // triton_dequant nbit=4 width=32 dst=fp32
# F4: mov.b32 {{.*}}, 0x4b000000;
# F4: fma.rn.f32
# F4: dequant: outputs=8 prmt=0 lop3=8 shr=1 xor=0 fma=16 sub=0 cvt=0 total=25 per_output=3.125

# SM80: .target sm_80
# SM80: // triton_dequant nbit=4 width=32 dst=fp16
# SM80: fma.rn.f16x2

# ALL: nbit=1 width=8 dst=fp16 signed=0
# ALL-NEXT: outputs=8 {{.*}} total=16 per_output=2.000
# ALL: nbit=1 width=8 dst=bf16 signed=0
# ALL-NEXT: outputs=8 {{.*}} total=17 per_output=2.125
# ALL: nbit=1 width=8 dst=fp32 signed=0
# ALL-NEXT: outputs=8 {{.*}} total=24 per_output=3.000
# ALL: nbit=2 width=8 dst=fp16 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=8 per_output=2.000
# ALL: nbit=2 width=8 dst=bf16 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=9 per_output=2.250
# ALL: nbit=2 width=8 dst=fp32 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=12 per_output=3.000
# ALL: nbit=4 width=8 dst=fp16 signed=0
# ALL-NEXT: outputs=2 {{.*}} total=4 per_output=2.000
# ALL: nbit=4 width=8 dst=bf16 signed=0
# ALL-NEXT: outputs=2 {{.*}} total=5 per_output=2.500
# ALL: nbit=4 width=8 dst=fp32 signed=0
# ALL-NEXT: outputs=2 {{.*}} total=6 per_output=3.000
# ALL: nbit=8 width=8 dst=fp16 signed=0
# ALL-NEXT: outputs=1 {{.*}} total=3 per_output=3.000
# ALL: nbit=8 width=8 dst=bf16 signed=0
# ALL-NEXT: outputs=1 {{.*}} total=6 per_output=6.000
# ALL: nbit=8 width=8 dst=fp32 signed=0
# ALL-NEXT: outputs=1 {{.*}} total=3 per_output=3.000
# ALL: nbit=1 width=16 dst=fp16 signed=0
# ALL-NEXT: outputs=16 {{.*}} total=32 per_output=2.000
# ALL: nbit=2 width=16 dst=fp16 signed=0
# ALL-NEXT: outputs=8 {{.*}} total=16 per_output=2.000
# ALL: nbit=4 width=16 dst=fp16 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=8 per_output=2.000
# ALL: nbit=8 width=16 dst=fp16 signed=0
# ALL-NEXT: outputs=2 {{.*}} total=3 per_output=1.500
# ALL: nbit=1 width=32 dst=fp16 signed=0
# ALL-NEXT: outputs=32 {{.*}} total=64 per_output=2.000
# ALL: nbit=2 width=32 dst=fp16 signed=0
# ALL-NEXT: outputs=16 {{.*}} total=32 per_output=2.000
# ALL: nbit=8 width=32 dst=bf16 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=12 per_output=3.000
# ALL: nbit=8 width=32 dst=fp32 signed=0
# ALL-NEXT: outputs=4 {{.*}} total=12 per_output=3.000

import itertools

import triton
import triton.language as tl

from lit_utils import compile_for, emit, parser

TL = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
PTR = {8: "*u8", 16: "*i16", 32: "*i32"}


@triton.jit
def kernel(x_ptr, s_ptr, y_ptr, BLOCK: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr, DST: tl.constexpr):
    pid = tl.program_id(0)
    x = tl.load(x_ptr + pid * BLOCK + tl.arange(0, BLOCK))
    y = tl.dequantize(x, tl.load(s_ptr), tl.load(s_ptr + 1), NBIT, DST)
    tl.store(y_ptr + pid * BLOCK * PER + tl.arange(0, BLOCK * PER), y)


def build(nbit, width, dst, capability=90, num_warps=4, block=256):
    return compile_for(kernel, {"x_ptr": PTR[width], "s_ptr": "*" + dst, "y_ptr": "*" + dst},
                       {"BLOCK": block, "PER": width // nbit, "NBIT": nbit, "DST": TL[dst]},
                       capability=capability, num_warps=num_warps)


if __name__ == "__main__":
    p = parser(nbit=4, width=32, dst="fp16")
    p.add_argument("--all", action="store_true")
    a = p.parse_args()
    if a.all:
        for width, nbit, dst in itertools.product((8, 16, 32), (1, 2, 4, 8), TL):
            if width % nbit == 0:
                emit(build(nbit, width, dst), "summary", width // nbit)
    else:
        k = build(a.nbit, a.width, a.dst, a.capability, a.num_warps)
        print(k.asm["ptx"])
        emit(k, "summary", a.width // a.nbit)
