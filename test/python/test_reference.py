"""The exact reference itself: rounding and fused multiply-add against fractions."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from triton_dequant import reference as ref


def _round_fraction(x: Fraction, fmt: ref.FloatFormat) -> float:
    """Round a rational exactly (RNE) to fmt, independently of round_to."""
    if x == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    a = abs(x)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    e = max(e, fmt.emin)
    q = Fraction(2) ** (e - fmt.precision + 1)
    n = a / q
    fl = n.numerator // n.denominator
    rem = n - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2 == 1):
        fl += 1
    r = fl * q
    if r > Fraction(fmt.max_finite):
        return sign * float("inf")
    return sign * float(r)


def _random_values(n, gen, lo=-40, hi=20):
    m = torch.rand(n, generator=gen, dtype=torch.float64) + 0.5
    e = torch.randint(lo, hi, (n,), generator=gen)
    s = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    return s * torch.ldexp(m, e)


@pytest.mark.parametrize("fmt", [ref.FP16, ref.BF16, ref.FP32], ids=lambda f: f.name)
def test_round_to_matches_hardware_casts(fmt):
    gen = torch.Generator().manual_seed(0)
    v = _random_values(20000, gen, -150, 130)
    got = ref.round_to(v, fmt)
    if fmt is ref.FP16:  # numpy's double->half is correctly rounded
        want = torch.from_numpy(v.numpy().astype(np.float16).astype(np.float64))
    elif fmt is ref.FP32:
        want = v.to(torch.float32).to(torch.float64)
    else:  # bf16 via fractions (torch rounds double->bf16 twice)
        want = torch.tensor([_round_fraction(Fraction(float(x)), fmt) for x in v[:3000]], dtype=torch.float64)
        got = got[:3000]
    assert torch.equal(got, want)


@pytest.mark.parametrize("fmt", [ref.FP16, ref.BF16, ref.FP32], ids=lambda f: f.name)
def test_fma_is_exact_then_rounded_once(fmt):
    gen = torch.Generator().manual_seed(1)
    n = 3000
    q = torch.randint(-128, 256, (n,), generator=gen).to(torch.float64)
    s = ref.round_to(_random_values(n, gen, -30, 10), fmt)
    # shifts far below and near the product, to exercise inexact float64 sums and ties
    h = ref.round_to(_random_values(n, gen, -60, 10), fmt)
    got = ref.fma(q, s, h, fmt)
    want = [_round_fraction(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)), fmt)
            for a, b, c in zip(q, s, h)]
    assert torch.equal(got, torch.tensor(want, dtype=torch.float64))


def test_fma_double_rounding_case():
    # exact = 1 + 2**-8 + 2**-60: float32 would round to the bf16 tie 1 + 2**-8
    # and then to even (1.0); the exact value is above the tie -> 1 + 2**-7.
    q = torch.tensor([1.0], dtype=torch.float64)
    s = torch.tensor([1.0 + 2.0 ** -8], dtype=torch.float64)
    h = torch.tensor([2.0 ** -60], dtype=torch.float64)
    assert float(ref.fma(q, s, h, ref.BF16)) == 1.0 + 2.0 ** -7


@pytest.mark.parametrize("nbit,dtype", [(4, torch.int32), (2, torch.int16), (8, torch.int32), (1, torch.uint8)])
def test_unpack_codes_bit_order(nbit, dtype):
    per = torch.iinfo(dtype).bits // nbit
    codes = torch.arange(per) % (1 << nbit)
    word = sum(int(c) << (j * nbit) for j, c in enumerate(codes))
    if word >= 1 << (torch.iinfo(dtype).bits - 1) and dtype != torch.uint8:
        word -= 1 << torch.iinfo(dtype).bits
    x = torch.tensor([word], dtype=dtype)
    assert torch.equal(ref.unpack_codes(x, nbit), codes)


def test_unpack_codes_axis0_signed():
    x = torch.tensor([[0x7F80], [0x0102]], dtype=torch.int16)  # int8 codes along axis 0
    got = ref.unpack_codes(x, 8, axis=0, signed=True)
    assert got.tolist() == [[-128], [127], [2], [1]]
