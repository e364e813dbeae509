# tl.dot consumer (GEMM): B [BK, 64] dequantized along axis 0 from [BK/PER, 64]
# words (per-column scale), A fp16, K loop; layout step on.
#
# The dequantized tile goes to the dot operand through exactly one shared-memory
# store (ttg.local_alloc into the NVMMA shared layout that wgmma reads on sm_90;
# local_alloc + local_load into the dot-operand layout of mma.sync on sm_80): no
# ttg.convert_layout on the way. The one conversion left (moving=1) is Triton's
# epilogue (accumulator -> coalesced store). The step finds nothing to change
# here; the packed words are loaded through cp.async when pipelined (stages=3).
#
# RUN: %python %s gemm --nbit 8,4,2 --block 256,1024 --warps 4,8 --stages 1,3 | FileCheck %s --check-prefix=SWEEP
# RUN: %python %s gemm --nbit 4 --block 1024 --warps 4 --stages 3 --ir ttgir > %t.90
# RUN: FileCheck %s --check-prefix=SM90 < %t.90 && FileCheck %s --check-prefix=ONECVT < %t.90
# RUN: %python %s gemm --nbit 4 --block 1024 --warps 4 --stages 3 --capability 80 --ir ttgir > %t.80
# RUN: FileCheck %s --check-prefix=SM80 < %t.80 && FileCheck %s --check-prefix=ONECVT < %t.80

# SWEEP: gemm nbit=8 block=256 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=7 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=8 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=7 ld.global=b32 st.global=v4
# SWEEP: gemm nbit=8 block=256 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=7 ld.global=v2 st.global=v4
# SWEEP: gemm nbit=8 block=256 warps=8 stages=3: moving=1 register=0 local_alloc=3 shared=6 ld.global=b16 st.global=v4
# SWEEP: gemm nbit=8 block=1024 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=16 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=8 block=1024 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=14 ld.global=v2 st.global=v4
# SWEEP: gemm nbit=8 block=1024 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=8 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=8 block=1024 warps=8 stages=3: moving=1 register=0 local_alloc=3 shared=7 ld.global=v2 st.global=v4
# SWEEP: gemm nbit=4 block=256 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=8 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=4 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=7 ld.global=b32 st.global=v4
# SWEEP: gemm nbit=4 block=256 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=11 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=4 block=256 warps=8 stages=3: moving=1 register=0 local_alloc=3 shared=10 ld.global=b16 st.global=v4
# SWEEP: gemm nbit=4 block=1024 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=4 block=1024 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=14 ld.global=v2 st.global=v4
# SWEEP: gemm nbit=4 block=1024 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=10 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=4 block=1024 warps=8 stages=3: moving=1 register=0 local_alloc=3 shared=7 ld.global=v2 st.global=v4
# SWEEP: gemm nbit=2 block=256 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=8 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=2 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=6 ld.global=b32 st.global=v4
# SWEEP: gemm nbit=2 block=256 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=11 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=2 block=256 warps=8 stages=3: moving=1 register=0 local_alloc=2 shared=10 ld.global=b16 st.global=v4
# SWEEP: gemm nbit=2 block=1024 warps=4 stages=1: moving=1 register=0 local_alloc=2 shared=20 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=2 block=1024 warps=4 stages=3: moving=1 register=0 local_alloc=3 shared=13 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=2 block=1024 warps=8 stages=1: moving=1 register=0 local_alloc=2 shared=10 ld.global=v4 st.global=v4
# SWEEP: gemm nbit=2 block=1024 warps=8 stages=3: moving=1 register=0 local_alloc=3 shared=7 ld.global=v2 st.global=v4

# SM90: #[[D:linear[0-9]*]] = #ttg.linear<
# SM90: scf.for
# SM90: ttg.local_load {{.*}} -> tensor<16x64xi32, #{{blocked[0-9]*}}>
# SM90: tt.elementwise_inline_asm "// triton_dequant
# SM90: tt.reshape {{.*}} -> tensor<128x64xf16, #[[D]]>
# SM90-NEXT: %[[B:.*]] = ttg.local_alloc %{{.*}} : (tensor<128x64xf16, #[[D]]>) -> !ttg.memdesc<128x64xf16
# SM90: ttng.warp_group_dot %{{.*}}, %[[B]],
# SM90: scf.yield
# SM90: ttg.convert_layout %{{.*}} : tensor<64x64xf16, #mma> -> tensor<64x64xf16, #{{blocked[0-9]*}}>

# SM80: #[[D:linear[0-9]*]] = #ttg.linear<
# SM80: .target = "cuda:80"
# SM80: tt.elementwise_inline_asm "// triton_dequant
# SM80: tt.reshape {{.*}} -> tensor<128x64xf16, #[[D]]>
# SM80-NEXT: %[[S:.*]] = ttg.local_alloc %{{.*}} : (tensor<128x64xf16, #[[D]]>)
# SM80-NEXT: %[[B:.*]] = ttg.local_load %[[S]] : {{.*}} -> tensor<128x64xf16, #ttg.dot_op<{opIdx = 1, parent = #mma
# SM80-NEXT: tt.dot %{{.*}}, %[[B]],
# SM80: ttg.convert_layout %{{.*}} : tensor<64x64xf16, #mma> -> tensor<64x64xf16, #{{blocked[0-9]*}}>

# ONECVT-COUNT-1: ttg.convert_layout
# ONECVT-NOT: ttg.convert_layout

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_cases import main  # noqa: E402

main()
