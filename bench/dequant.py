"""Standalone dequantization: whole tensors and the row-fused format.

Cases: 2**28 fp16 outputs, nbit 8/4/2 (int32 containers for 8/4, int16 for 2,
the seed's formats). Baselines in the same process: device copy of the same
bytes, torch eager, torch.compile, a naive Triton shift/mask kernel with the
same tiling as ours.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from triton_dequant import ops, reference as ref
from triton_dequant.kernels import dequant as kdq

from common import time_all

N_OUT = 1 << 28
WARPS = 8  # kernels.dequant's default
FORMATS = [(8, torch.int32), (4, torch.int32), (2, torch.int16)]
# estimate of this module's GPU run (s): Triton compiles ours 6 (3 formats x whole / rows) + the naive
# twins 6, ~1 s each; torch.compile 6 x ~4 s; timing 6 cases x 5 impls x 2 rounds x ~0.15 s = 9 s; data ~5 s
ESTIMATE_S = 50


@triton.jit
def naive_last(x_ptr, s_ptr, h_ptr, y_ptr, n, tiles, BLOCK: tl.constexpr, PER: tl.constexpr,
               NBIT: tl.constexpr, WIDTH: tl.constexpr):
    """Same grid and tile as kernels.dequant._dequant_last, shift/mask + int->float."""
    pid = tl.program_id(0)
    row = (pid // tiles).to(tl.int64)
    t = pid % tiles
    cols = t * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + row * n + cols, mask=cols < n)
    u = x.to(tl.uint32) if WIDTH == 32 else x.to(tl.uint16, bitcast=True).to(tl.uint32)
    q = (u[:, None] >> (tl.arange(0, PER) * NBIT)[None, :]) & ((1 << NBIT) - 1)
    s = tl.load(s_ptr + row).to(tl.float16)
    h = tl.load(h_ptr + row).to(tl.float16)
    y = tl.reshape(q.to(tl.float16) * s + h, [BLOCK * PER])
    out = t * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + row * n * PER + out, y, mask=out < n * PER)


@triton.jit
def naive_rows(rows_ptr, y_ptr, n_elems, dim, BLOCK: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr):
    """Same grid and tile as kernels.dequant._dequant_rows (int32 rows), shift/mask + int->float."""
    row = tl.program_id(0).to(tl.int64)
    base = rows_ptr + row * n_elems
    head = tl.load(base)
    s = (head & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
    h = (head >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    t = tl.program_id(1)
    cols = t * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(base + 1 + cols, mask=cols * PER < dim).to(tl.uint32)
    q = (x[:, None] >> (tl.arange(0, PER) * NBIT)[None, :]) & ((1 << NBIT) - 1)
    y = tl.reshape(q.to(tl.float16) * s + h, [BLOCK * PER])
    out = t * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + row * dim + out, y, mask=out < dim)


def _torch_dequant(x, s, h, nbit):
    width = torch.iinfo(x.dtype).bits
    per = width // nbit
    shifts = torch.arange(per, device=x.device, dtype=torch.int32) * nbit
    q = (x.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << nbit) - 1)
    return q.reshape(*x.shape[:-1], -1).to(torch.float16) * s + h


def _torch_rows(rows, nbit, dim):
    head = rows[:, :1]  # scale in the low 16 bits, shift in the high 16 bits
    s = (head & 0xFFFF).to(torch.int16).view(torch.float16)
    h = (head >> 16).to(torch.int16).view(torch.float16)
    return _torch_dequant(rows[:, 1:], s, h, nbit)[:, :dim]


_compiled = {}


def _compiled_fn(name, fn):
    if name not in _compiled:
        _compiled[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _compiled[name]


def _check(name, got, want, exact=True):
    """Ours must be bit-exact; baselines round twice (mul, then add) unless fused,
    so they get a tolerance of a couple of fp16 ulps."""
    if exact:
        bad = (got.view(torch.int16) != want.view(torch.int16)).sum().item()
    else:
        bad = (~torch.isclose(got.float(), want.float(), rtol=2e-3, atol=1e-3)).sum().item()
    if bad:
        raise AssertionError(f"{name}: {bad} outputs differ from the reference")


def _record_all(time_us, record, bench, nbit, shape, nbytes, device, ours, naive, compiled, eager):
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    fns = {"ours": ours, "naive-triton": naive, "torch-compile": compiled, "torch-eager": eager,
           "copy": lambda: dst.copy_(src)}
    for impl, (best, runs) in time_all(time_us, fns).items():
        record(bench=bench, nbit=nbit, shape=shape, impl=impl, us=best, bytes=nbytes, runs=runs)


def run(time_us, record, device="cuda", n_out: int = N_OUT):
    gen = torch.Generator(device=device).manual_seed(0)
    for nbit, container in FORMATS:
        width = torch.iinfo(container).bits
        per = width // nbit
        n_words = n_out // per
        x = torch.randint(-2 ** (width - 1), 2 ** (width - 1) - 1, (1, n_words), dtype=container,
                          device=device, generator=gen)
        s = torch.tensor([[0.0625]], dtype=torch.float16, device=device)
        h = torch.tensor([[-1.5]], dtype=torch.float16, device=device)
        nbytes = x.numel() * x.element_size() + n_out * 2
        shape = f"n_out=2^{n_out.bit_length() - 1},container=int{width}"
        # correctness first: ours vs the exact reference on a slice, then everything vs ours
        ours = lambda: ops.dequantize(x, s, h, nbit)
        y = ours()
        head = x[:, :4096].cpu()
        _check("ours (head)", y[:, :4096 * per].cpu(), ref.dequantize(head, s.cpu(), h.cpu(), nbit))
        y_naive = torch.empty_like(y)
        block = kdq._default_tile(per, torch.float16, WARPS)  # the tile ours uses
        tiles = triton.cdiv(n_words, block)
        naive = lambda: naive_last[(tiles,)](x, s, h, y_naive, n_words, tiles, BLOCK=block, PER=per, NBIT=nbit,
                                             WIDTH=width, num_warps=WARPS)
        naive()
        _check("naive-triton", y_naive, y, exact=False)
        eager = lambda: _torch_dequant(x, s, h, nbit)
        _check("torch-eager", eager(), y, exact=False)
        comp = _compiled_fn(f"dq{nbit}", _torch_dequant)
        compiled = lambda: comp(x, s, h, nbit)
        _check("torch-compile", compiled(), y, exact=False)
        _record_all(time_us, record, "dequant", nbit, shape, nbytes, device, ours=ours, naive=naive,
                    compiled=compiled, eager=eager)
        del x, y, y_naive

    # row-fused int32 rows of D = 4096 codes, padded to a 16-byte multiple
    for nbit in (8, 4, 2):
        per = 32 // nbit
        block = kdq._default_tile(per, torch.float16, WARPS)
        D = 4096
        data_words = D // per
        E = (1 + data_words + 3) // 4 * 4
        R = n_out // D
        rows = torch.randint(-2 ** 31, 2 ** 31 - 1, (R, E), dtype=torch.int32, device=device, generator=gen)
        sh = (torch.rand(R, 2, device=device, generator=gen) - 0.5).half()  # valid fp16 header values
        rows[:, 0] = sh.view(torch.int32).view(-1)
        nbytes = R * (1 + data_words) * 4 + R * D * 2
        shape = f"n_out=2^{n_out.bit_length() - 1},D={D},row_words={E}"
        ours = lambda: ops.dequantize_rows(rows, nbit, n_codes=D)
        y = ours()
        _check("rows ours (head)", y[:64].cpu(), ref.dequantize_rows(rows[:64].cpu(), nbit, n_codes=D))
        y_naive = torch.empty_like(y)
        b = min(block, triton.next_power_of_2(data_words))
        naive = lambda: naive_rows[(R, triton.cdiv(data_words, b))](rows, y_naive, E, D, BLOCK=b, PER=per,
                                                                     NBIT=nbit, num_warps=WARPS)
        naive()
        _check("rows naive-triton", y_naive, y, exact=False)
        eager = lambda: _torch_rows(rows, nbit, D)
        _check("rows torch-eager", eager(), y, exact=False)
        comp = _compiled_fn(f"rows{nbit}", _torch_rows)
        compiled = lambda: comp(rows, nbit, D)
        _check("rows torch-compile", compiled(), y, exact=False)
        _record_all(time_us, record, "dequant_rows", nbit, shape, nbytes, device, ours=ours, naive=naive,
                    compiled=compiled, eager=eager)
        del rows, y, y_naive


DRY_RUN = {"n_out": 1 << 13}
