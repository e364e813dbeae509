"""The ceilings, measured first in the run: what "at the memory wall" and "over cuBLAS" mean on this GPU.

Cases (random data, each checked before it is timed):
* ``copy``: a device-to-device ``Tensor.copy_`` of ``nbytes / 2`` bytes, so that
  ``nbytes`` (read + written) move; ``COPY_BYTES`` (256 MiB and 1 GiB).
  ``gbps`` = nbytes / us / 1e3. Checked: ``torch.equal(dst, src)``.
* ``matmul``: cuBLAS fp16 ``x @ w`` at ``M = N = K = MM`` (8192): ``tflops`` =
  2 M N K / us / 1e6. Checked against float64 (relative error, norm, <= 1e-2).

Records: bench ``"ceiling"``, nbit 16 (fp16 / bytes), impl ``"copy"`` or
``"cublas-fp16"``, extra ``gbps`` or ``tflops``. The per-case copies of the other
benches (same bytes as the case) are what their ratios use; these figures say
how close those copies are to the device's best.
"""
from __future__ import annotations

import torch

from common import time_all

COPY_BYTES = (1 << 28, 1 << 30)
MM = 8192
TOL = 1e-2
# estimate of this module's GPU run (s): 3 cases x 2 interleaved rounds of do_bench
# (~0.15 s each), the float64 check of an 8192^3 matmul (~0.1 s); no Triton compile
ESTIMATE_S = 5


def _mib(n: int) -> str:
    return f"{n >> 30}GiB" if n >= 1 << 30 else f"{n >> 20}MiB" if n >= 1 << 20 else f"{n >> 10}KiB"


def run(time_us, record, device="cuda", copy_bytes=COPY_BYTES, mm=MM):
    gen = torch.Generator(device=device).manual_seed(0)
    fns, meta = {}, {}
    for nbytes in copy_bytes:
        src = torch.randint(0, 256, (nbytes // 2,), dtype=torch.uint8, device=device, generator=gen)
        dst = torch.empty_like(src)
        dst.copy_(src)
        if not torch.equal(dst, src):
            raise AssertionError(f"copy of {nbytes // 2} bytes differs")
        fns[f"copy,bytes={_mib(nbytes)}"] = lambda src=src, dst=dst: dst.copy_(src)
        meta[f"copy,bytes={_mib(nbytes)}"] = ("copy", nbytes)
    a = torch.randn(mm, mm, device=device, generator=gen).half()
    b = torch.randn(mm, mm, device=device, generator=gen).half()
    want = a.double() @ b.double()
    err = ((a @ b).double() - want).norm() / want.norm()
    if not err <= TOL:
        raise AssertionError(f"cuBLAS fp16 {mm}^3: relative error {err:.2e} > {TOL}")
    del want
    fns[f"matmul,M=N=K={mm}"] = lambda: a @ b
    meta[f"matmul,M=N=K={mm}"] = ("cublas-fp16", 2 * mm ** 3)
    for shape, (us, runs) in time_all(time_us, fns).items():
        impl, n = meta[shape]
        if impl == "copy":
            extra = dict(bytes=n, gbps=n / us / 1e3)
            print(f"  CEILING copy {shape.split('=')[1]}: {extra['gbps']:.0f} GB/s (read + write)", flush=True)
        else:
            extra = dict(flop=n, tflops=n / us / 1e6)
            print(f"  CEILING cuBLAS fp16 {mm}^3: {extra['tflops']:.0f} TFLOP/s", flush=True)
        record(bench="ceiling", nbit=16, shape=shape, impl=impl, us=us, runs=runs, **extra)


DRY_RUN = {"copy_bytes": (1 << 16,), "mm": 64}
