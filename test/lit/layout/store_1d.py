# tl.dequantize -> tl.store of a 1-D tile, with the layout step on (sm_90, CPU
# compile). Every block size and warp count: no layout conversion, no shared
# memory, coalesced 16-byte stores.
#
# After a 16-byte load of packed words a thread holds PER * 16 bytes of
# outputs; storing them from there leaves gaps in every warp store instruction
# (16 of every PER * 32 bytes), which the H100 pays dearly for (bench/layout.py:
# up to 5.7x slower than stock). So, by default (store policy "narrow"), the
# step loads the packed words PER times narrower (one word, or two for int8 in
# int32, per thread and step) so that the tile is born in Triton's coalesced
# store layout. --policy owned shows the gapped alternative.
#
# RUN: %python %s store1d --nbit 8,4,2 --block 256,512,1024,2048,4096,8192 --warps 4,8 | FileCheck %s --check-prefix=SWEEP
# The store inside an scf.for (persistent loop), software pipelining on and off;
# a per-output scale tensor (a load that meets the dequantized tile):
# RUN: %python %s loop1d,per_output --nbit 4,2 --block 1024,4096 --warps 4,8 --stages 1,3 | FileCheck %s --check-prefix=LOOP
# The IR itself:
# RUN: %python %s store1d --nbit 4 --block 1024 --warps 4 --ir ttgir,ptx > %t
# RUN: FileCheck %s --check-prefix=TTGIR < %t && FileCheck %s --check-prefix=NOCVT < %t
# RUN: FileCheck %s --check-prefix=PTX < %t && FileCheck %s --check-prefix=NOSMEM < %t
# RUN: %python %s store1d --nbit 4 --block 1024 --warps 4 --policy owned --ir ttgir,ptx > %t.owned
# RUN: FileCheck %s --check-prefix=OWNED < %t.owned && FileCheck %s --check-prefix=NOCVT < %t.owned

# SWEEP: store1d nbit=8 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v2
# SWEEP: store1d nbit=8 block=512 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=512 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=2048 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=2048 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=8 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store1d nbit=4 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=512 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=512 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=2048 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=2048 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=4 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store1d nbit=2 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=512 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=512 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=2048 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=2048 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store1d nbit=2 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4

# LOOP-COUNT-8: loop1d nbit=4 block={{1024|4096}} warps={{[48]}} stages={{[13]}}: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# LOOP-COUNT-8: loop1d nbit=2 block={{1024|4096}} warps={{[48]}} stages={{[13]}}: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# LOOP-COUNT-16: per_output nbit={{[42]}} block={{1024|4096}} warps={{[48]}} stages={{[13]}}: moving=0 register=0 local_alloc=0 shared=0 ld.global=v4 st.global=v4
# LOOP-NOT: moving

# int4 in int32, 1024 words, 4 warps: the packed words are loaded one per
# thread and step (8 x 4 bytes), each gives the thread 8 fp16 (16 bytes), the
# tile is in the coalesced store layout (8 fp16 per thread, lanes side by side).
# TTGIR: #[[W:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [1], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# TTGIR: #[[D:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [8], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# TTGIR: tt.load {{.*}} : tensor<1024x!tt.ptr<i32>, #[[W]]>
# TTGIR: tt.elementwise_inline_asm "// triton_dequant
# TTGIR: tt.reshape {{.*}} -> tensor<8192xf16, #[[D]]>
# TTGIR: tt.store {{.*}} : tensor<8192x!tt.ptr<f16>, #[[D]]>
# NOCVT-NOT: ttg.convert_layout
# NOCVT-NOT: ttg.local_alloc

# PTX-COUNT-8: ld.global.b32
# PTX: // triton_dequant
# PTX-COUNT-8: st.global.v4.b32
# PTX-NOT: st.global
# NOSMEM-NOT: {{(ld|st)\.shared}}
# NOSMEM-NOT: bar.sync

# --policy owned: 16-byte loads (2 x 4 words), the 2 x 32 fp16 stored from
# where they are (8 x 16 bytes, gaps in each warp instruction)
# OWNED: #[[W:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [4], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# OWNED: #[[D:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [32], threadsPerWarp = [32], warpsPerCTA = [4], order = [0]}>
# OWNED: tt.load {{.*}} : tensor<1024x!tt.ptr<i32>, #[[W]]>
# OWNED: tt.store {{.*}} : tensor<8192x!tt.ptr<f16>, #[[D]]>
# OWNED-COUNT-2: ld.global.v4.b32
# OWNED-COUNT-8: st.global.v4.b32

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_cases import main  # noqa: E402

main()
