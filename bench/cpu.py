"""CPU benchmarks of the host ops' CPU paths (no GPU, no Triton interpreter).

    PYTHONPATH=python python bench/cpu.py [linear] [embedding_bag] [dequantize] [packing]

Prints one line per case: best of ``--reps`` wall-clock times (after one warm-up
call), our op against its baseline, and the ratio. Every output is checked
(exactly, or against the baseline's float64 value) before it is timed.

* ``linear``: ``ops.linear`` (int4, g128, fp16 scale/shift as ``quantize`` makes
  them, fp32 ``x``) against ``x @ W`` in fp32 on the already-dequantized weight.
* ``embedding_bag``: ``ops.embedding_bag`` on a 2**20 x 128 int4 row-fused table,
  64 bags of 8 lookups, against ``F.embedding_bag`` on the dequantized table.
* ``dequantize``: peak RSS increase of ``ops.dequantize`` relative to its output.
* ``packing``: ``pack``/``unpack`` of 2**24 codes, eager and ``torch.compile``,
  against torchao's pure-torch bitpacking (if importable) and a plain
  shifted-slices baseline written here.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

REPS = 5


def best_ms(fn, reps: int = REPS) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def line(name: str, ours: float, base: float, base_name: str) -> None:
    print(f"{name:<58} ours {ours:9.3f} ms   {base_name} {base:9.3f} ms   ratio {ours / base:6.2f}x", flush=True)


# --- linear --------------------------------------------------------------------------------------

def bench_linear(reps: int) -> None:
    from triton_dequant import ops, packing, reference as ref

    K = N = 4096
    g = torch.Generator().manual_seed(0)
    w = torch.randn(N, K, generator=g) * 0.02  # nn.Linear weight [out, in]
    packed, scale, shift = packing.quantize(w.t().contiguous(), 4, group_size=128, dim=0)  # [K/8, N], [K/128, N]
    wd = ref.linear_weight(packed, scale, shift, 4, dtype=torch.float32, group_size=128)  # exact, once
    for M in (1, 16):
        for dtype in (torch.float32, torch.bfloat16):
            x = torch.randn(M, K, generator=g).to(dtype)
            ours = lambda: ops.linear(x, packed, scale, shift, 4, group_size=128)
            base = lambda: x.float() @ wd
            exact = x.double() @ wd.double()
            err = ((ours().double() - exact).norm() / exact.norm()).item()
            assert err < (1e-5 if dtype == torch.float32 else 1e-2), err
            line(f"linear int4 g128 M={M} K=N={K} x={str(dtype)[6:]}", best_ms(ours, reps), best_ms(base, reps),
                 "fp32 matmul")


# --- embedding_bag -------------------------------------------------------------------------------

def bench_embedding_bag(reps: int) -> None:
    import torch.nn.functional as F
    from triton_dequant import ops, reference as ref

    T, D, B, L = 1 << 20, 128, 64, 8
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(-2 ** 31, 2 ** 31 - 1, (T, 1 + D // 8), dtype=torch.int32, generator=g)
    # fp16 scale and shift as quantize makes them (shift = -scale * zero point)
    sc = (torch.rand(T, generator=g) * 0.1 + 0.01).half()
    sh = (-sc.float() * (6 + 3 * torch.rand(T, generator=g))).half()
    rows[:, 0] = torch.stack([sc, sh], -1).view(torch.int32)[:, 0]
    table = ops.dequantize_rows(rows, 4).float()  # the baseline's table: fp16 rows, as ours (not timed)
    idx = torch.randint(0, T, (B * L,), generator=g)
    offs = torch.arange(0, B * L, L)
    ours = lambda: ops.embedding_bag(rows, idx, offs, 4)
    base = lambda: F.embedding_bag(idx, table, offs, mode="sum")
    exact = ref.embedding_bag(rows[idx], torch.arange(B * L), offs, 4, dtype=torch.float64)
    assert torch.allclose(ours().double(), exact, rtol=1e-6, atol=1e-6)
    assert torch.allclose(base().double(), exact, rtol=1e-5, atol=1e-5)
    line(f"embedding_bag int4 T=2^20 D={D} {B} bags x {L}", best_ms(ours, reps), best_ms(base, reps),
         "F.embedding_bag")


# --- dequantize: memory -----------------------------------------------------------------------------

_RSS = r"""
import sys, torch
from triton_dequant import ops
def kb(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
n, nbit, dtype, per_row = int(sys.argv[1]), int(sys.argv[2]), getattr(torch, sys.argv[3]), sys.argv[4] == "1"
x = torch.randint(-2**31, 2**31 - 1, (n // (32 // nbit) // 64, 64), dtype=torch.int32)
s = torch.rand(x.shape[0], 1).half() if per_row else 0.37
h = -s if per_row else 1.5
ops.dequantize(x[:2], s[:2] if per_row else s, h[:2] if per_row else h, nbit, dtype)  # warm-up (lazy imports)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = kb("VmRSS:")
y = ops.dequantize(x, s, h, nbit, dtype, dim=-1)
print((kb("VmHWM:") - before) * 1024 / y.numel(), y.element_size())
"""


def bench_dequantize(reps: int) -> None:
    import os
    import subprocess
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, ["python", os.environ.get("PYTHONPATH")])))
    for nbit, dtype, per_row in ((4, "float16", False), (4, "float16", True), (8, "float32", True), (2, "bfloat16", False)):
        out = subprocess.run([sys.executable, "-c", _RSS, str(1 << 26), str(nbit), dtype, str(int(per_row))],
                             capture_output=True, text=True, env=env, check=True).stdout.split()
        per_out, size = float(out[0]), int(out[1])
        print(f"dequantize 2^26 outputs nbit={nbit} {dtype:<8} {'per-row' if per_row else 'python'} scale: "
              f"peak RSS growth {per_out:6.2f} bytes per output = {per_out / size:4.2f}x the output", flush=True)


# --- pack / unpack ----------------------------------------------------------------------------------

def bench_packing(reps: int) -> None:
    from triton_dequant.packing import pack, unpack
    try:
        from torchao.prototype.dtypes.uintx import bitpacking as ao
    except Exception as e:  # noqa: BLE001
        ao = None
        print(f"torchao bitpacking not importable ({type(e).__name__}: {e}); baseline: shifted slices below")
    n = 1 << 24
    g = torch.Generator().manual_seed(2)
    for nbit in (1, 2, 3, 4, 6):
        codes = torch.randint(0, 1 << nbit, (n,), dtype=torch.uint8, generator=g)
        if ao is not None:
            ao_pack = lambda c, nb=nbit: ao.pack(c, nb)
            ao_unpack = lambda sh, nb=nbit: ao.unpack(sh, nb)
        else:
            ao_pack, ao_unpack = _slices_pack, _slices_unpack
        shards = ao_pack(codes)
        assert torch.equal(ao_unpack(shards), codes)
        torch._dynamo.reset()
        c_ao_pack = torch.compile(ao_pack, fullgraph=True, dynamic=False)
        c_ao_unpack = torch.compile(ao_unpack, fullgraph=True, dynamic=False)
        assert torch.equal(c_ao_unpack(c_ao_pack(codes)), codes)
        base = {"eager": (best_ms(lambda: ao_pack(codes), reps), best_ms(lambda: ao_unpack(shards), reps)),
                "compile": (best_ms(lambda: c_ao_pack(codes), reps), best_ms(lambda: c_ao_unpack(shards), reps))}
        for dense in (False, True):
            kw = dict(container=torch.uint8, dense=dense)
            packed = pack(codes, nbit, check=False, **kw)
            assert torch.equal(unpack(packed, nbit, n=n, dense=dense), codes)
            c_pack = torch.compile(lambda c, nb=nbit, k=kw: pack(c, nb, check=False, **k), fullgraph=True,
                                   dynamic=False)
            c_unpack = torch.compile(lambda p, nb=nbit, d=dense: unpack(p, nb, n=n, dense=d), fullgraph=True,
                                     dynamic=False)
            assert torch.equal(c_pack(codes), packed) and torch.equal(c_unpack(packed), codes)
            mode = "dense " if dense else "padded"
            for how, (fp, fu) in (("eager", (lambda: pack(codes, nbit, check=False, **kw),
                                             lambda: unpack(packed, nbit, n=n, dense=dense))),
                                  ("compile", (lambda: c_pack(codes), lambda: c_unpack(packed)))):
                line(f"pack   2^24 codes nbit={nbit} uint8 {mode} {how}", best_ms(fp, reps), base[how][0],
                     "torchao" if ao is not None else "slices")
                line(f"unpack 2^24 codes nbit={nbit} uint8 {mode} {how}", best_ms(fu, reps), base[how][1],
                     "torchao" if ao is not None else "slices")


def _slices_pack(codes: torch.Tensor, nbit: int = 4) -> torch.Tensor:
    """A plain shifted-slices baseline (nbit dividing 8), in the manner of torchao's
    ``bitpacking.py``: contiguous blocks ORed at their shifts."""
    per = 8 // nbit
    m = codes.shape[-1] // per
    out = codes[..., :m].clone()
    for j in range(1, per):
        out |= codes[..., j * m:(j + 1) * m] << (j * nbit)
    return out


def _slices_unpack(packed: torch.Tensor, nbit: int = 4) -> torch.Tensor:
    per = 8 // nbit
    return torch.cat([(packed >> (j * nbit)) & ((1 << nbit) - 1) for j in range(per)], -1)


SECTIONS = {"linear": bench_linear, "embedding_bag": bench_embedding_bag, "dequantize": bench_dequantize,
            "packing": bench_packing}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--reps", type=int, default=REPS)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (on a loaded machine, 1 avoids OpenMP barrier stalls)")
    args = ap.parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}: choose from {', '.join(SECTIONS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for s in args.sections or SECTIONS:
        SECTIONS[s](args.reps)


if __name__ == "__main__":
    main(sys.argv[1:])
