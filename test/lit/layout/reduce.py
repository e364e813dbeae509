# GEMV-like consumer: a [BK/PER, 64] tile of packed words dequantized along
# axis 0, times the activations x[:, None], summed over axis 0 (tl.sum), in a
# K loop; the layout step on (sm_90, CPU compile).
#
# No layout conversion is left: the activations are loaded directly in the
# layout the product needs (a slice of the dequantized layout: 16-byte vectors
# of 8 consecutive k per thread) and the result is stored in the reduction's
# output layout. The shared memory that remains (`shared` below) is the
# cross-warp reduction of tl.sum itself (the tile's K rows are spread over warps).
#
# RUN: %python %s gemv --nbit 8,4,2 --block 256,1024,4096 --warps 4,8 --stages 1,3 | FileCheck %s --check-prefix=SWEEP
# RUN: %python %s gemv --nbit 4 --block 1024 --warps 4 --ir ttgir > %t
# RUN: FileCheck %s --check-prefix=TTGIR < %t && FileCheck %s --check-prefix=NOCVT < %t

# SWEEP: gemv nbit=8 block=256 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=8 ld.global=v2 st.global=b32
# SWEEP: gemv nbit=8 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=8 ld.global=v2 st.global=b32
# SWEEP: gemv nbit=8 block=256 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=4 ld.global=v2 st.global=b16
# SWEEP: gemv nbit=8 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=4 ld.global=v2 st.global=b16
# SWEEP: gemv nbit=8 block=1024 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=1024 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=4096 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=4096 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=8 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=256 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=8 ld.global=v4 st.global=b32
# SWEEP: gemv nbit=4 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=8 ld.global=v4 st.global=b32
# SWEEP: gemv nbit=4 block=256 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=4 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=4 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=4 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=4 block=1024 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=1024 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=4096 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=4096 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=4 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=2 block=256 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=8 ld.global=v4 st.global=b32
# SWEEP: gemv nbit=2 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=8 ld.global=v4 st.global=b32
# SWEEP: gemv nbit=2 block=256 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=4 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=2 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=4 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=2 block=1024 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=2 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=2 block=1024 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=2 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=12 ld.global=v4 st.global=v2
# SWEEP: gemv nbit=2 block=4096 warps=4 stages=1: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=2 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=2 block=4096 warps=8 stages=1: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=2 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=v4

# int4 in int32: w [16, 64] words -> q [128, 64] fp16, x [128]
# TTGIR: #[[D:linear[0-9]*]] = #ttg.linear<{register = {{\[\[1, 0\], \[2, 0\], \[4, 0\], \[0, 1\], \[0, 2\], \[64, 0\]\]}}
# TTGIR: scf.for
# TTGIR: tt.load {{.*}} : tensor<16x64x!tt.ptr<i32>, #{{blocked[0-9]*}}>
# TTGIR: tt.elementwise_inline_asm "// triton_dequant
# TTGIR: tt.reshape {{.*}} -> tensor<128x64xf16, #[[D]]>
# TTGIR: tt.load {{.*}} : tensor<128x!tt.ptr<f16>, #ttg.slice<{dim = 1, parent = #[[D]]}>>
# TTGIR: arith.mulf {{.*}} : tensor<128x64xf32, #[[D]]>
# TTGIR: "tt.reduce"
# TTGIR: -> tensor<64xf32, #ttg.slice<{dim = 0, parent = #[[D]]}>>
# TTGIR: scf.yield
# TTGIR: tt.store {{.*}} : tensor<64x!tt.ptr<f16>, #ttg.slice<{dim = 0, parent = #[[D]]}>>
# NOCVT-NOT: ttg.convert_layout
# NOCVT-NOT: ttg.local_alloc

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_cases import main  # noqa: E402

main()
