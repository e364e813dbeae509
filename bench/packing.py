"""Host packing throughput: ``packing.pack`` / ``packing.unpack`` of 2**28 random
codes (uint8 in, int32 containers out; nbit 1, 2, 3, 4, 8 padded, 3 also dense).

impl ``ours``: the eager torch functions; ``torch-compile``: the same functions
under ``torch.compile(fullgraph=True)`` (one fused kernel each); ``copy``: a
device copy moving the same bytes. Pack is timed with ``check=False`` (the range
check is a separate reduction, run once untimed). ``bytes`` = codes read +
words written (pack) or words read + codes written (unpack). Every output is
checked exact before timing.
"""
from __future__ import annotations

import torch

N = 1 << 28
CASES = [(1, False), (2, False), (3, False), (4, False), (8, False), (3, True)]  # (nbit, dense)
# estimate of this module's GPU run (s): torch.compile of pack and unpack per case, 12 x ~5 s;
# 6 cases x 5 do_bench calls ~5 s; 2^28 codes per case ~5 s
ESTIMATE_S = 70


def _require_equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    if got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want):
        raise AssertionError(f"{name}: output differs from the expected codes / words")


_COMPILED = []


def _compiled():
    """``torch.compile`` of pack and unpack themselves, made once: one dynamo entry
    per (nbit, dense) case, below the default recompile limit of 8."""
    if not _COMPILED:
        from triton_dequant.packing import pack, unpack
        _COMPILED.extend(torch.compile(f, fullgraph=True, dynamic=False) for f in (pack, unpack))
    return _COMPILED


def run(time_us, record, device="cuda", n: int = N):
    from triton_dequant.packing import pack, unpack

    gen = torch.Generator(device=device).manual_seed(0)
    for nbit, dense in CASES:
        codes = torch.randint(0, 1 << nbit, (n,), dtype=torch.uint8, device=device, generator=gen)
        packed = pack(codes, nbit, container=torch.int32, dense=dense)  # range-checked once
        _require_equal("unpack(pack(codes))", unpack(packed, nbit, dense=dense, n=n), codes)

        kw = dict(nbit=nbit, container=torch.int32, dense=dense, check=False)
        ukw = dict(nbit=nbit, dense=dense, n=n)
        comp_pack, comp_unpack = _compiled()
        eager_pack = lambda: pack(codes, **kw)  # noqa: E731
        eager_unpack = lambda: unpack(packed, **ukw)  # noqa: E731
        compiled_pack = lambda: comp_pack(codes, **kw)  # noqa: E731
        compiled_unpack = lambda: comp_unpack(packed, **ukw)  # noqa: E731
        _require_equal("pack (eager)", eager_pack(), packed)
        _require_equal("pack (torch-compile)", compiled_pack(), packed)
        _require_equal("unpack (torch-compile)", compiled_unpack(), codes)

        nbytes = codes.numel() * codes.element_size() + packed.numel() * packed.element_size()
        size = f"2^{n.bit_length() - 1}" if n & (n - 1) == 0 else str(n)
        shape = f"n={size},container=int32{',dense' if dense else ''}"
        src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        copy_us = time_us(lambda: dst.copy_(src))
        for bench, impls in (("pack", {"ours": eager_pack, "torch-compile": compiled_pack}),
                             ("unpack", {"ours": eager_unpack, "torch-compile": compiled_unpack})):
            for impl, fn in impls.items():
                record(bench=bench, nbit=nbit, shape=shape, impl=impl, us=time_us(fn), bytes=nbytes)
            record(bench=bench, nbit=nbit, shape=shape, impl="copy", us=copy_us, bytes=nbytes)
        del codes, packed, src, dst
        if device == "cuda":
            torch.cuda.empty_cache()


DRY_RUN = {"n": 1 << 12 | 37}  # not a multiple of 32 codes: exercises the padding
