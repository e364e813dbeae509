# tl.dequantize -> tl.store of 2-D tiles (64 columns of packed words), along the
# last axis and along axis 0, with the layout step on (sm_90, CPU compile): no
# layout conversion that moves data, no shared memory.
#
# Last axis: as in 1-D (store_1d.py), the packed words are loaded narrower so
# that the tile is born in the coalesced store layout (no gaps in warp stores).
#
# Axis 0: a thread holds (words per row) contiguous outputs in each of PER rows
# (4 fp16 = 8 bytes with 16-byte loads of int32 words, 8 fp16 with int16 words),
# lanes side by side along the row: storing from there has no gaps, so the
# store takes that layout. The join tree puts the unpacked codes first in a
# thread's registers, so the store's layout is the same one with the registers
# reordered (row-contiguous first): one `ttg.convert_layout` between two #linear
# layouts that differ only in register order (register=1 below), which moves no
# data (no shuffles, no shared memory).
#
# RUN: %python %s store2d_last,store2d_axis0 --nbit 8,4,2 --block 256,1024,4096,8192 --warps 4,8 | FileCheck %s --check-prefix=SWEEP
# RUN: %python %s store2d_axis0 --nbit 4 --block 1024 --warps 4 --ir ttgir,ptx > %t.axis0
# RUN: FileCheck %s --check-prefix=AXIS0 < %t.axis0 && FileCheck %s --check-prefix=NOSMEM < %t.axis0
# RUN: %python %s store2d_last --nbit 4 --block 1024 --warps 4 --ir ttgir,ptx > %t.last
# RUN: FileCheck %s --check-prefix=LAST < %t.last && FileCheck %s --check-prefix=NOSMEM < %t.last

# SWEEP: store2d_last nbit=8 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v2
# SWEEP: store2d_last nbit=8 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=8 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=v2 st.global=v4
# SWEEP: store2d_last nbit=4 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=4 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=v4
# SWEEP: store2d_last nbit=2 block=256 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=1024 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=1024 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=4096 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=4096 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=8192 warps=4 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_last nbit=2 block=8192 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=v4
# SWEEP: store2d_axis0 nbit=8 block=256 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v2 st.global=b32
# SWEEP: store2d_axis0 nbit=8 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=b16
# SWEEP: store2d_axis0 nbit=8 block=1024 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=8 block=1024 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=8 block=4096 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=8 block=4096 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=8 block=8192 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=8 block=8192 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=256 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v2 st.global=b32
# SWEEP: store2d_axis0 nbit=4 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b32 st.global=b16
# SWEEP: store2d_axis0 nbit=4 block=1024 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=1024 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=4096 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=4096 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=8192 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=4 block=8192 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v2
# SWEEP: store2d_axis0 nbit=2 block=256 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=b32 st.global=b32
# SWEEP: store2d_axis0 nbit=2 block=256 warps=8 stages=3: moving=0 register=0 local_alloc=0 shared=0 ld.global=b16 st.global=b16
# SWEEP: store2d_axis0 nbit=2 block=1024 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=2 block=1024 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v2 st.global=v2
# SWEEP: store2d_axis0 nbit=2 block=4096 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=2 block=4096 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=2 block=8192 warps=4 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v4
# SWEEP: store2d_axis0 nbit=2 block=8192 warps=8 stages=3: moving=0 register=1 local_alloc=0 shared=0 ld.global=v4 st.global=v4

# int4 in int32, [16, 64] words -> [128, 64] fp16 (axis 0), 4 warps
# AXIS0: #[[R:linear[0-9]*]] = #ttg.linear<{register = {{\[\[0, 1\], \[0, 2\], \[1, 0\], \[2, 0\], \[4, 0\], \[64, 0\]\]}}, [[LW:lane = .*]]}>
# AXIS0: #[[D:linear[0-9]*]] = #ttg.linear<{register = {{\[\[1, 0\], \[2, 0\], \[4, 0\], \[0, 1\], \[0, 2\], \[64, 0\]\]}}, [[LW]]}>
# AXIS0-NOT: ttg.convert_layout
# AXIS0: tt.reshape {{.*}} -> tensor<128x64xf16, #[[D]]>
# AXIS0: ttg.convert_layout {{.*}} : tensor<128x64xf16, #[[D]]> -> tensor<128x64xf16, #[[R]]>
# AXIS0: tt.store {{.*}} : tensor<128x64x!tt.ptr<f16>, #[[R]]>
# AXIS0-NOT: ttg.convert_layout
# AXIS0-NOT: ttg.local_alloc
# AXIS0: .target sm_90a
# AXIS0-COUNT-2: ld.global.v4.b32
# AXIS0-COUNT-16: st.global.v2.b32
# AXIS0-NOT: st.global

# int4 in int32, [16, 64] words -> [16, 512] fp16 (last axis), 4 warps
# LAST: #[[D:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [1, 8], threadsPerWarp = [1, 32], warpsPerCTA = [2, 2], order = [1, 0]}>
# LAST: #[[W:blocked[0-9]*]] = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [2, 2], order = [1, 0]}>
# LAST-NOT: ttg.convert_layout
# LAST: tt.load {{.*}} : tensor<16x64x!tt.ptr<i32>, #[[W]]>
# LAST: tt.reshape {{.*}} -> tensor<16x512xf16, #[[D]]>
# LAST: tt.store {{.*}} : tensor<16x512x!tt.ptr<f16>, #[[D]]>
# LAST-NOT: ttg.convert_layout
# LAST-NOT: ttg.local_alloc
# LAST: .target sm_90a
# LAST-COUNT-8: ld.global.b32
# LAST-COUNT-8: st.global.v4.b32
# LAST-NOT: st.global

# NOSMEM-NOT: {{(ld|st)\.shared}}
# NOSMEM-NOT: bar.sync

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from layout_cases import main  # noqa: E402

main()
