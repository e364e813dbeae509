"""IEEE specials through tl.dequantize: +-inf, NaN, +-0 and overflowing scale/shift of
every dtype, for every output type, bit-identical to the exact reference (a NaN
matches any NaN: payloads are not part of the contract).

* the kernel (the portable lowering in the interpreter; compiled PTX on a GPU), with
  scale/shift per row (applied inside the unpack) and per output (an fma after it),
  as fp16/bf16/fp32 tensors or as Python constants;
* the PTX sequence itself, run by the emulator (scale/shift operands and immediates)."""
import math

import pytest
import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401
from triton_dequant import ptx, reference as ref

from conftest import DEVICE
from dq_cases import DSTS, TORCH_DST

TL = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
SDTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
INF, NAN = math.inf, math.nan
SPECIAL = [INF, -INF, NAN, 0.0, -0.0]
FINITE = [1.5, -0.75, 60000.0, 3.0e38]  # the last two overflow some outputs
# every (scale, shift) pair with at least one special: 65 cases
PAIRS = [(s, h) for s in SPECIAL + FINITE for h in SPECIAL + FINITE if s in SPECIAL or h in SPECIAL
         or (s != s or h != h)]
R = 128  # rows of the test tile (power of two >= len(PAIRS))
# signed int4: codes 0..7 and -8..-1 (zero, positive and negative codes)
WORDS = [0x76543210, 0xFEDCBA98 - (1 << 32)]
NBIT, PER, C = 4, 8, 2


def _same(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Bitwise equal, or both NaN."""
    bits = torch.int16 if got.element_size() == 2 else torch.int32
    return (got.view(bits) == want.view(bits)) | (got.isnan() & want.isnan())


def _table(sdtype):
    s = torch.tensor([p[0] for p in PAIRS] + [0.0] * (R - len(PAIRS)), dtype=torch.float64).to(sdtype)
    h = torch.tensor([p[1] for p in PAIRS] + [0.0] * (R - len(PAIRS)), dtype=torch.float64).to(sdtype)
    return s, h


def _x():
    return torch.tensor(WORDS, dtype=torch.int32).repeat(R, 1)


@triton.jit
def _rows_kernel(x_ptr, s_ptr, h_ptr, so_ptr, ho_ptr, y_row, y_out, R: tl.constexpr, C: tl.constexpr,
                 PER: tl.constexpr, NBIT: tl.constexpr, DST: tl.constexpr):
    r = tl.arange(0, R)[:, None]
    x = tl.load(x_ptr + r * C + tl.arange(0, C)[None, :])
    out = r * (C * PER) + tl.arange(0, C * PER)[None, :]
    y = tl.dequantize(x, tl.load(s_ptr + r), tl.load(h_ptr + r), NBIT, DST, signed=True)
    tl.store(y_row + out, y)
    y = tl.dequantize(x, tl.load(so_ptr + out), tl.load(ho_ptr + out), NBIT, DST, signed=True)
    tl.store(y_out + out, y)


@pytest.mark.parametrize("sdtype", list(SDTYPES))
@pytest.mark.parametrize("dst", DSTS)
def test_kernel_tensor_specials(dst, sdtype):
    s, h = _table(SDTYPES[sdtype])
    x = _x()
    tdst = TORCH_DST[dst]
    want = ref.dequantize(x, s[:, None], h[:, None], NBIT, tdst, signed=True)
    so, ho = s[:, None].expand(R, C * PER).contiguous(), h[:, None].expand(R, C * PER).contiguous()
    ys = [torch.empty(R, C * PER, dtype=tdst, device=DEVICE) for _ in range(2)]
    _rows_kernel[(1,)](x.to(DEVICE), s.to(DEVICE), h.to(DEVICE), so.to(DEVICE), ho.to(DEVICE), *ys,
                       R, C, PER, NBIT, TL[dst])
    for name, y in zip(("per row", "per output"), ys):
        ok = _same(y.cpu(), want)
        bad = (~ok).nonzero()
        assert ok.all(), (f"{name}: {len(bad)} outputs differ, first: pair {PAIRS[bad[0, 0]]} code column "
                          f"{bad[0, 1].item()}: got {y.cpu()[tuple(bad[0])].item()} want {want[tuple(bad[0])].item()}")


@triton.jit
def _const_kernel(x_ptr, y_ptr, C: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr, DST: tl.constexpr,
                  SCALE: tl.constexpr, SHIFT: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, C))
    tl.store(y_ptr + tl.arange(0, C * PER), tl.dequantize(x, SCALE, SHIFT, NBIT, DST, signed=True))


@pytest.mark.parametrize("dst", DSTS)
def test_kernel_constant_specials(dst):
    x = torch.tensor(WORDS, dtype=torch.int32)
    tdst = TORCH_DST[dst]
    y = torch.empty(C * PER, dtype=tdst, device=DEVICE)
    xd = x.to(DEVICE)
    for s, h in PAIRS:
        _const_kernel[(1,)](xd, y, C, PER, NBIT, TL[dst], s, h)
        want = ref.dequantize(x, s, h, NBIT, tdst, signed=True)
        assert _same(y.cpu(), want).all(), (s, h, y.cpu().tolist(), want.tolist())


@pytest.mark.parametrize("sdtype", list(SDTYPES))
@pytest.mark.parametrize("dst", DSTS)
def test_emulated_ptx_specials(dst, sdtype):
    """The asm with scale/shift operands (rounded to ``dst`` by the kernel's cast) and
    with immediates, over every pair."""
    fmt = ref.float_format(dst)
    s, h = _table(SDTYPES[sdtype])
    x = _x()
    want = ref.dequantize(x, s[:, None], h[:, None], NBIT, TORCH_DST[dst], signed=True)
    sb, hb = (ref.to_bits(ref.round_to(t.double(), fmt), fmt)[:, None] for t in (s, h))
    prog = ptx.build(ptx.Variant(NBIT, 32, dst, True))
    got = torch.stack(ptx.emulate(prog, x, sb, hb), -1).reshape(R, C * PER)
    got = ref.from_bits(got, fmt).to(TORCH_DST[dst])
    assert _same(got, want).all()
    if sdtype != "fp32":
        return
    for k, (sv, hv) in enumerate(PAIRS):  # immediates (Python constants), once per dst
        imm = [int(ref.to_bits(torch.tensor([ref.round_scalar(v, fmt)]), fmt)[0]) & ((1 << fmt.bits) - 1)
               for v in (sv, hv)]
        prog = ptx.build(ptx.Variant(NBIT, 32, dst, True, True, imm[0], imm[1]))
        got = torch.stack(ptx.emulate(prog, x[0]), -1).reshape(C * PER)
        want = ref.dequantize(x[0], sv, hv, NBIT, TORCH_DST[dst], signed=True)
        assert _same(ref.from_bits(got, fmt).to(TORCH_DST[dst]), want).all(), (sv, hv)
