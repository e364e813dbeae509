"""Layout study: what the layout step (triton_dequant.layout) buys on the GPU.

1-D standalone dequant (load packed words -> tl.dequantize -> store) at tile
sizes where stock Triton 3.6 keeps a layout conversion through shared memory
(a thread holds PER * 16 bytes of outputs after a 16-byte load, Coalesce gives
the store 16 bytes per thread):

* ``stock``: the layout step off: 16-byte loads, conversion through shared
  memory (st.shared / ldmatrix), coalesced 16-byte stores;
* ``rewrite``: the step on, default policy ("narrow"): the packed words are
  loaded PER times narrower so that the tile is born in the coalesced store
  layout: no conversion, no shared memory, coalesced 16-byte stores;
* ``owned``: the step on, policy "owned": 16-byte loads, each thread stores the
  run it holds (16-byte pieces; a warp's store instruction writes 16 of every
  PER * 32 bytes: "gaps"), no shared memory;
* ``split``: the same tile as sub-tiles of one 16-byte output vector per thread,
  in the kernel source (no hook; what ``rewrite`` does to the layouts);
* ``copy``: a device-to-device copy of the same bytes (read + write).

Then the other consumers with the step off (``stock``) and on (``rewrite``):
a 2-D tile unpacked along axis 0 and stored (8-byte stores of the thread's
own row pieces, no gaps), and a GEMV-like tl.sum (activations loaded in the
layout of the product).

Every implementation's output is checked bit for bit against a torch reference
before it is timed (GEMV: against float64, and stock == rewrite bit for bit).
Each variant is its own ``triton.jit`` object compiled with the step in the
state it measures (the state is part of the kernel cache key in memory and on
disk, ``triton_dequant.state``, so one object would do as well).

    PYTHONPATH=python python3 bench/run.py --only layout
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import layout

N_OUT = 1 << 28
FORMATS = [(8, torch.int32), (4, torch.int32), (2, torch.int16)]
CONFIGS = [(1024, 4), (4096, 4), (1024, 8), (4096, 8), (8192, 8)]  # (words per program, warps)
AXIS0 = ((8192, 16384), (16, 64, 4))  # (K, N) outputs; (BK words, BN, warps)
GEMV = ((8192, 8192), (128, 64, 4))  # (K, N); (BK outputs, BN, warps)
SCALE, SHIFT = 0.5, -8.0  # exact in fp16 for every code
# estimate of this module's GPU run (s): 3 formats x (5 configs x 4 variants + 2 + 2) = 72 Triton
# compiles ~1 s each; ~80 do_bench calls ~12 s; 2^28-output data ~5 s
ESTIMATE_S = 90
_SCALE, _SHIFT = tl.constexpr(SCALE), tl.constexpr(SHIFT)  # (what the kernel sees)


def _dq_tile(x_ptr, y_ptr, n, BLOCK: tl.constexpr, SUB: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """BLOCK packed words per program, as BLOCK // SUB sub-tiles of SUB words."""
    pid = tl.program_id(0)
    for i in tl.static_range(BLOCK // SUB):
        offs = pid * BLOCK + i * SUB + tl.arange(0, SUB)
        x = tl.load(x_ptr + offs, mask=offs < n)
        y = tl.dequantize(x, _SCALE, _SHIFT, NBIT)
        o = (pid * BLOCK + i * SUB) * PER + tl.arange(0, SUB * PER)
        tl.store(y_ptr + o, y, mask=o < n * PER)



def _dq_axis0(x_ptr, y_ptr, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """[BK, BN] packed words -> [BK*PER, BN] outputs (unpacked along axis 0)."""
    rk = tl.program_id(0) * BK + tl.arange(0, BK)[:, None]
    rn = tl.program_id(1) * BN + tl.arange(0, BN)[None, :]
    y = tl.dequantize(tl.load(x_ptr + rk * N + rn), _SCALE, _SHIFT, NBIT, axis=0)
    ro = tl.program_id(0) * BK * PER + tl.arange(0, BK * PER)[:, None]
    tl.store(y_ptr + ro * N + rn, y)


def _dq_gemv(x_ptr, w_ptr, y_ptr, K, N, BK: tl.constexpr, BN: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """y[BN] = x @ W[:, BN]: W tile [BK/PER, BN] words unpacked along axis 0, tl.sum over K."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    acc = tl.zeros([BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rkw = k0 // PER + tl.arange(0, BK // PER)
        q = tl.dequantize(tl.load(w_ptr + rkw[:, None] * N + rn[None, :]), _SCALE, _SHIFT, NBIT, axis=0)
        x = tl.load(x_ptr + k0 + tl.arange(0, BK))
        acc += tl.sum(q.to(tl.float32) * x[:, None].to(tl.float32), axis=0)
    tl.store(y_ptr + rn, acc)


def _reference(x: torch.Tensor, nbit: int) -> torch.Tensor:
    width = torch.iinfo(x.dtype).bits
    shifts = torch.arange(width // nbit, device=x.device, dtype=torch.int32) * nbit
    q = (x.to(torch.int32)[:, None] >> shifts) & ((1 << nbit) - 1)
    return (q.to(torch.float32) * SCALE + SHIFT).to(torch.float16).reshape(-1)


def _kernel_facts(compiled) -> dict:
    """Layout conversions / shared memory of a compiled kernel (None in the interpreter)."""
    asm = getattr(compiled, "asm", None)
    if not asm or "ttgir" not in asm:
        return {}
    c = layout.conversion_summary(asm["ttgir"])
    return {"converts": c["moving"], "smem_bytes": getattr(compiled.metadata, "shared", None)}


def _copy_us(time_us, nbytes: int, device: str) -> float:
    src = torch.randint(0, 255, (nbytes // 2,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return time_us(lambda: dst.copy_(src))


_VARIANTS = {"stock": (False, "narrow"), "rewrite": (True, "narrow"), "owned": (True, "owned"),
             "split": (False, "narrow")}


def _compile_state(impl):
    on, policy = _VARIANTS[impl]
    layout.enable() if on else layout.disable()
    layout.set_store_policy(policy)


def _check(impl, what, y, ref):
    if not torch.equal(y, ref):
        bad = (y != ref).nonzero()[:4].flatten().tolist()
        raise AssertionError(f"layout bench {impl} {what}: wrong output at {bad}")


def run(time_us, record, device="cuda", n_out: int = N_OUT, configs=None, axis0=AXIS0, gemv=GEMV):
    configs = configs or CONFIGS
    with layout.override():  # the switches as they were, afterwards
        for nbit, dtype in FORMATS:
            width = torch.iinfo(dtype).bits
            per = width // nbit
            info = torch.iinfo(dtype)
            n = n_out // per
            x = torch.randint(info.min, info.max, (n,), dtype=dtype, device=device)
            ref = _reference(x, nbit)
            nbytes = n * x.element_size() + n_out * 2
            copy = _copy_us(time_us, nbytes, device)
            for block, warps in configs:
                shape = f"1-D store, {n_out} out, {block} words x {warps} warps"
                sub = min(block, warps * 32 * max(1, 8 // per))  # one 16-byte output vector per thread
                for impl in ("stock", "rewrite", "owned", "split"):
                    _compile_state(impl)
                    fn = triton.jit(_dq_tile)  # a fresh JIT object: its own in-memory cache
                    y = torch.full((n_out,), float("nan"), dtype=torch.float16, device=device)
                    tile = sub if impl == "split" else block

                    def launch(fn=fn, y=y, tile=tile):
                        return fn[(triton.cdiv(n, block),)](x, y, n, BLOCK=block, SUB=tile, NBIT=nbit,
                                                             PER=per, num_warps=warps)

                    compiled = launch()  # compiles now, in this state of the step
                    _check(impl, f"nbit={nbit} {shape}", y, ref)
                    record(bench="layout", nbit=nbit, shape=shape, impl=impl, us=time_us(launch), bytes=nbytes,
                           **_kernel_facts(compiled))
                record(bench="layout", nbit=nbit, shape=shape, impl="copy", us=copy, bytes=nbytes)

            # 2-D tile [BK, BN] words unpacked along axis 0, stored
            (K, N), (BK, BN, warps) = axis0
            xk = torch.randint(info.min, info.max, (K // per, N), dtype=dtype, device=device)
            refk = _reference(xk.T.contiguous().reshape(-1), nbit).reshape(N, K).T.contiguous()
            nbytes = xk.numel() * xk.element_size() + K * N * 2
            shape = f"axis-0 store, {K}x{N} out, {BK}x{BN} words x {warps} warps"
            for impl in ("stock", "rewrite"):
                _compile_state(impl)
                fn = triton.jit(_dq_axis0)
                y = torch.full((K, N), float("nan"), dtype=torch.float16, device=device)

                def launch(fn=fn, y=y):
                    return fn[(K // per // BK, N // BN)](xk, y, N, BK=BK, BN=BN, NBIT=nbit, PER=per,
                                                         num_warps=warps)

                compiled = launch()
                _check(impl, f"nbit={nbit} {shape}", y, refk)
                record(bench="layout", nbit=nbit, shape=shape, impl=impl, us=time_us(launch), bytes=nbytes,
                       **_kernel_facts(compiled))
            record(bench="layout", nbit=nbit, shape=shape, impl="copy", us=_copy_us(time_us, nbytes, device),
                   bytes=nbytes)

            # GEMV-like: y = x @ dequant(W), tl.sum over the unpacked axis
            if gemv is None:  # (Triton 3.6's interpreter cannot run this loop with numpy 2)
                continue
            (K, N), (BK, BN, warps) = gemv
            w = torch.randint(info.min, info.max, (K // per, N), dtype=dtype, device=device)
            xa = torch.randn(K, device=device).half()
            qw = _reference(w.T.contiguous().reshape(-1), nbit).reshape(N, K).T.double()
            refg = xa.double() @ qw
            nbytes = w.numel() * w.element_size() + K * 2 + N * 4
            shape = f"gemv tl.sum, K={K} N={N}, {BK}x{BN} x {warps} warps"
            outs = []
            for impl in ("stock", "rewrite"):
                _compile_state(impl)
                fn = triton.jit(_dq_gemv)
                y = torch.empty(N, dtype=torch.float32, device=device)

                def launch(fn=fn, y=y):
                    return fn[(N // BN,)](xa, w, y, K, N, BK=BK, BN=BN, NBIT=nbit, PER=per, num_warps=warps)

                compiled = launch()
                torch.testing.assert_close(y.double(), refg, rtol=1e-3, atol=1e-1)
                outs.append(y.clone())
                record(bench="layout", nbit=nbit, shape=shape, impl=impl, us=time_us(launch), bytes=nbytes,
                       **_kernel_facts(compiled))
            record(bench="layout", nbit=nbit, shape=shape, impl="copy", us=_copy_us(time_us, nbytes, device),
                   bytes=nbytes, note=f"stock == rewrite bitwise: {torch.equal(outs[0], outs[1])}")


DRY_RUN = {"n_out": 1 << 13, "configs": [(256, 4)], "axis0": ((64, 64), (4, 32, 4)), "gemv": None}

if __name__ == "__main__":
    import os
    import sys
    import time

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
        dev, kwargs = "cpu", DRY_RUN

        def time_us(fn):
            t = time.perf_counter()
            fn()
            return 1e6 * (time.perf_counter() - t)
    else:
        from common import make_time_us
        dev, kwargs, time_us = "cuda", {}, make_time_us()
    run(time_us, lambda **r: print(r, flush=True), device=dev, **kwargs)
