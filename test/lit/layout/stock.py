# The problem the layout step solves, shown with the step switched off
# (TRITON_DEQUANT_LAYOUT=0; and layout.disable()): stock Triton 3.6 keeps a
# ttg.convert_layout between the dequantized tile (PER outputs per packed word
# in one thread) and the coalesced layout that Coalesce gives the consumer
# (at most 16 bytes per thread for a store), and the PTX goes through shared
# memory (st.shared + ldmatrix, bar.sync around each round).
#
# RUN: env TRITON_DEQUANT_LAYOUT=0 %python %s store1d,store2d_axis0,gemv --layout env --nbit 4 --block 256,1024,4096 --warps 4 | FileCheck %s --check-prefix=SWEEP
# RUN: env TRITON_DEQUANT_LAYOUT=0 %python %s store1d --layout env --nbit 4 --block 1024 --warps 4 --ir ttgir,ptx | FileCheck %s --check-prefix=STOCK
# RUN: %python %s store1d --layout off --nbit 4 --block 1024 --warps 4 --ir ttgir,ptx | FileCheck %s --check-prefix=STOCK

# SWEEP: store1d nbit=4 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=4 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=4 block=1024 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=8 ld.global=v4 st.global=v4
# SWEEP: store1d nbit=4 block=4096 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=32 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=4 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=2 ld.global=v2 st.global=v4
# SWEEP: store2d_axis0 nbit=4 block=1024 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=16 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=4 block=4096 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=64 ld.global=v4 st.global=v4
# SWEEP: gemv nbit=4 block=256 warps=4 stages=3: moving=1 register=0 local_alloc=0 shared=11 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=4 block=1024 warps=4 stages=3: moving=2 register=0 local_alloc=0 shared=20 ld.global=v4 st.global=b16
# SWEEP: gemv nbit=4 block=4096 warps=4 stages=3: moving=2 register=0 local_alloc=0 shared=26 ld.global=v4 st.global=b16

# STOCK: #[[D:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [32], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# STOCK: #[[C:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [8], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# STOCK: tt.reshape {{.*}} -> tensor<8192xf16, #[[D]]>
# STOCK: %[[V:.*]] = ttg.convert_layout %{{.*}} : tensor<8192xf16, #[[D]]> -> tensor<8192xf16, #[[C]]>
# STOCK-NEXT: tt.store %{{.*}}, %[[V]], %{{.*}} : tensor<8192x!tt.ptr<f16>, #[[C]]>
# STOCK: .target sm_90a
# STOCK: st.shared.v4.b32
# STOCK-NEXT: bar.sync
# STOCK: ldmatrix.sync.aligned.m8n8.x4.shared.b16
# STOCK: st.global.v4.b32

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_cases import main  # noqa: E402

main()
