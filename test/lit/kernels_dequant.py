# The shipped standalone kernels (triton_dequant.kernels.dequant) at their
# default tiles, compiled for sm_90: one 16-byte output vector per thread, so no
# layout conversion and 16-byte stores (row-fused rows too: tiles cover the
# data, so outputs stay aligned).
#
# RUN: %python %s last 4 > %t.l && FileCheck %s --check-prefix=LAST < %t.l && FileCheck %s --check-prefix=NOSMEM < %t.l
# RUN: %python %s rows 4 > %t.r4 && FileCheck %s --check-prefix=ROWS < %t.r4 && FileCheck %s --check-prefix=NOSMEM < %t.r4
# RUN: %python %s rows 2 | FileCheck %s --check-prefix=ROWS2

# NOSMEM-NOT: st.shared
# LAST: convert_layout=0 local_alloc=0
# LAST: // triton_dequant nbit=4 width=32 dst=fp16
# LAST: st.global.v4.b32
# ROWS: convert_layout=0 local_alloc=0
# ROWS: // triton_dequant nbit=4 width=32 dst=fp16
# ROWS: st.global.v4.b32
# int2 in int32: one container already makes 16 outputs (32 bytes), more than
# Coalesce lets a thread store, so stock Triton converts through shared memory
# (the opt-in layout step removes it; measured no faster, see README)
# ROWS2: convert_layout=1 local_alloc=0
# ROWS2: // triton_dequant nbit=2 width=32 dst=fp16
# ROWS2: st.shared
# ROWS2: st.global.v4.b32

import sys

import torch
import triton.language as tl

from lit_utils import compile_for
from triton_dequant.kernels import dequant as kd

kind, nbit = sys.argv[1], int(sys.argv[2])
per = 32 // nbit
warps = 8
block = kd._default_tile(per, torch.float16, warps)
common = dict(PER=per, NBIT=nbit, DST=tl.float16, SIGNED=False)
if kind == "last":
    k = compile_for(kd._dequant_last, {"x_ptr": "*i32", "s_ptr": "*fp16", "h_ptr": "*fp16", "y_ptr": "*fp16",
                                       "n": "i32", "tiles": "i32", "s_row": "i32", "h_row": "i32", "s_col": "i32",
                                       "h_col": "i32"},
                    dict(BLOCK=block, PER_OUTPUT=False, **common), num_warps=warps, aligned=(0, 1, 2, 3, 4))
else:
    k = compile_for(kd._dequant_rows, {"rows_ptr": "*i32", "y_ptr": "*fp16", "n_elems": "i32", "dim": "i32"},
                    dict(BLOCK=block, WIDTH=32, **common), num_warps=warps, aligned=(0, 1, 3))
ttgir = k.asm["ttgir"]
print(f"convert_layout={ttgir.count('ttg.convert_layout')} local_alloc={ttgir.count('ttg.local_alloc')}")
print(k.asm["ptx"])
