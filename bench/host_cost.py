"""Eager host cost per call of the ops' CUDA path, measured on a CPU.

A fake Triton driver (no GPU, no CUDA) stands in for the real one: kernels are
really planned and compiled (for sm_90, on this CPU) and loaded through Triton's own
``CompiledKernel`` code, but "loading" returns dummy handles and the launcher is a
no-op Python function. So the timed path is everything the host does per call up to
the C launcher -- argument preparation, the call description, plan and launch-cache
lookups, output allocation (on the CPU here) -- minus the launcher's own C code and
the CUDA driver (measure those on the GPU: bench/probe_linear.py). CPU tensors stand
in for CUDA tensors, so allocations are CPU allocations.

    PYTHONPATH=python python bench/host_cost.py [--calls 20000]

Prints microseconds per call (best of 20 rounds) for each op and for the pieces of
the linear path.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))


class _Utils:
    def load_binary(self, name, kernel, shared, device):
        return 1, 2, 32, 0, 1024  # module, function, registers, spills, max threads

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536,
                "warpSize": 32, "sm_clock_rate": 1, "mem_clock_rate": 1, "mem_bus_width": 1}


class FakeDriver:
    """The parts of Triton's CUDA driver that compiling, loading and launching use."""

    def __init__(self):
        self.utils = _Utils()
        self.launches = 0

    def launcher_cls(self, src, metadata):
        def launch(*args):
            self.launches += 1
        return launch

    def get_current_device(self):
        return 0

    def set_current_device(self, d):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        return torch.device("cpu")


def install_fakes():
    """The fake driver, and the CUDA-only calls of the launch path pointed at it."""
    fake = FakeDriver()
    driver.set_active(fake)
    from triton_dequant.kernels import _plan
    _plan.target_of = lambda device: _plan.cuda_target(90, 132)
    _plan._stream = lambda idx: 0
    _plan._current_device = lambda: 0
    _plan._on_device = lambda idx: contextlib.nullcontext()
    return fake


def per_call_us(fn, calls: int, rounds: int = 20) -> float:
    """Best of ``rounds`` rounds of ``calls`` calls (the best round is the one least
    disturbed by other processes on a shared machine)."""
    fn()  # compile and load
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - t0) / calls * 1e6)
    return min(out)


def cases():
    from triton_dequant import packing
    from triton_dequant.kernels import _plan, dequant, embedding_bag as eb, linear as kl
    g = torch.Generator().manual_seed(0)
    K = N = 4096
    x = torch.randn(1, K, generator=g).half()
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // 8, N), dtype=torch.int32, generator=g)
    s, h = torch.rand(N, generator=g).half(), torch.rand(N, generator=g).half()
    xg = torch.randn(16, K, generator=g).half()
    sg, hg = torch.rand(K // 128, N, generator=g).half(), torch.rand(K // 128, N, generator=g).half()
    packed = torch.randint(-2 ** 31, 2 ** 31 - 1, (64, 128), dtype=torch.int32, generator=g)
    rows = packing.pack_rows(torch.randn(64, 128, generator=g), 4, row_align=16)
    idx = torch.randint(0, 64, (64 * 32,), generator=g)
    off = torch.arange(64) * 32
    out = {
        "linear M=1 (GEMV, split-K)": lambda: kl.linear(x, qw, s, h, 4, K, 0, False),
        "linear M=16 g128 (tensor cores)": lambda: kl.linear(xg, qw, sg, hg, 4, 128, 0, False),
        "dequantize [64,128] int32 -> fp16": lambda: dequant.dequantize(packed, s[:1], h[:1], 4, torch.float16,
                                                                          1, False),
        "dequantize_rows [64 rows]": lambda: dequant.dequantize_rows(rows, 4, torch.float16, 128, False),
        "embedding_bag 64 bags x 32": lambda: eb.embedding_bag(rows, idx, off, 4, "sum", None, 128,
                                                              torch.float32, False, False),
    }
    # the pieces of the linear path
    target = _plan.cuda_target(90, 132)
    call, x2, qw2, s2, h2, _ = kl._prepare(x, qw, s, h, 4, K, 0, False)
    where = _plan.device_stream(x.device)
    p = kl.plan(call, target)
    k = p.kernels[0]
    y = torch.empty(1, N, dtype=torch.float16)
    ws = kl._workspace(p.ws_numel, x.device)
    cnt = kl._zeroed("cnt", p.tiles, torch.int32, x.device)
    out["  linear pieces: _prepare (call description)"] = lambda: kl._prepare(x, qw, s, h, 4, K, 0, False)
    out["  linear pieces: plan lookup"] = lambda: kl.plan(call, target)
    out["  linear pieces: launch (cache lookup + launcher call)"] = \
        lambda: _plan.launch(k, (x2, qw2, s2, h2, y, ws, cnt), x.device, target)
    out["  linear pieces: output + split-K buffers"] = lambda: (torch.empty((1, N), dtype=x.dtype, device=x.device),
                                                               kl._zeroed("cnt", p.tiles, torch.int32, x.device, where),
                                                               kl._workspace(p.ws_numel, x.device, where))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    a = ap.parse_args()
    fake = install_fakes()
    import triton_dequant
    print(f"triton_dequant from {os.path.dirname(triton_dequant.__file__)}; torch {torch.__version__}")
    for name, fn in cases().items():
        before = fake.launches
        us = per_call_us(fn, a.calls)
        launched = fake.launches > before
        print(f"{name:58s} {us:8.2f} us/call" + ("" if launched or name.startswith("  ") else "  (no launch!)"))


if __name__ == "__main__":
    main()
