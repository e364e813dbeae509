"""The CPU paths of the host ops (triton_dequant._cpu): bit-identical to the exact
references where they round (the dequantized weight / table), BLAS where they sum."""

import pytest
import torch

from triton_dequant import _cpu, ops, reference as ref

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
CONTAINER = {(32, False): torch.int32, (16, False): torch.int16, (8, False): torch.uint8,
             (32, True): torch.uint32, (16, True): torch.uint16, (8, True): torch.int8}


def _weight(K, N, nbit, width, packed_dim, groups, sdtype, seed, alt=False):
    g = torch.Generator().manual_seed(seed)
    per = width // nbit
    shape = (K // per, N) if packed_dim == 0 else (K, N // per)
    qw = torch.randint(0, 1 << width, shape, generator=g, dtype=torch.int64)
    dt = CONTAINER[(width, alt)]
    signed_dt = {8: torch.int8, 16: torch.int16, 32: torch.int32}[width]
    qw = torch.where(qw >= 1 << (width - 1), qw - (1 << width), qw).to(signed_dt)
    qw = qw.view(dt) if dt != torch.uint8 else qw.view(torch.uint8)
    sshape = (N,) if groups == 1 else (groups, N)
    s = (torch.randn(sshape, generator=g) * 0.37).to(sdtype)
    h = (torch.randn(sshape, generator=g) * 3).to(sdtype)
    return qw, s, h


def _special(s, h):
    """Put IEEE specials and values that defeat the fp32/float64 fast paths into scale/shift."""
    s, h = s.clone(), h.clone()
    fs, fh = s.view(-1), h.view(-1)
    vals = [float("inf"), float("-inf"), float("nan"), 0.0, -0.0]
    for i, v in enumerate(vals):
        fs[3 * i] = v
        fh[3 * i + 1] = v
        fs[3 * i + 2], fh[3 * i + 2] = v, vals[-1 - i]
    if s.dtype != F16:  # a shift far below the products: not exact in fp32 (nor float64 for fp32 values)
        fs[20], fh[20] = 1.0 + 2.0 ** -7, 2.0 ** -100
    return s, h


# (nbit, width, packed_dim, groups, signed, x dtype, scale dtype, alt container, specials)
WEIGHT_CASES = [
    (4, 32, 0, 8, False, F16, F16, False, False),
    (4, 32, 0, 8, True, BF16, F16, True, True),
    (4, 32, 1, 4, False, F32, F16, False, True),
    (4, 32, 0, 1, True, F32, F32, False, True),   # fp32 scales: float64 / fallback
    (8, 32, 0, 2, True, F16, F32, True, True),    # scales rounded to fp16 first
    (8, 8, 1, 1, False, BF16, BF16, False, False),
    (2, 16, 0, 4, True, F32, BF16, True, False),
    (2, 16, 1, 1, False, F16, BF16, False, True),
    (1, 8, 0, 2, False, BF16, F32, True, True),
    (1, 32, 1, 1, True, F32, F16, False, False),
]


@pytest.mark.parametrize("nbit,width,packed_dim,groups,signed,dtype,sdtype,alt,special", WEIGHT_CASES)
def test_linear_weight_bit_exact(nbit, width, packed_dim, groups, signed, dtype, sdtype, alt, special):
    K, N = 128, 64
    k = WEIGHT_CASES.index((nbit, width, packed_dim, groups, signed, dtype, sdtype, alt, special))
    qw, s, h = _weight(K, N, nbit, width, packed_dim, groups, sdtype, seed=k, alt=alt)
    if special:
        s, h = _special(s, h)
    gs = K // groups
    want = ref.linear_weight(qw, s, h, nbit, dtype=dtype, group_size=gs, packed_dim=packed_dim, signed=signed)
    got = _cpu.linear_weight(qw, s, h, nbit, dtype=dtype, group_size=gs, packed_dim=packed_dim, signed=signed)
    assert got.dtype == dtype and got.shape == (K, N)
    same = (got == want) & (torch.signbit(got) == torch.signbit(want)) | (got.isnan() & want.isnan())
    assert same.all(), f"{int((~same).sum())} weights differ, first at {(~same).nonzero()[0].tolist()}"
    # any block gives the same weights
    per = width // nbit
    kstep = gs if groups > 1 else (per if packed_dim == 0 else 1)
    nstep = per if packed_dim == 1 else 1
    k0, k1, n0, n1 = kstep, min(K, 3 * kstep), nstep, min(N, 3 * nstep)
    part = _cpu.linear_weight(qw, s, h, nbit, dtype=dtype, group_size=gs, packed_dim=packed_dim, signed=signed,
                              k0=k0, k1=k1, n0=n0, n1=n1)
    bits = torch.int16 if dtype != F32 else torch.int32
    assert torch.equal(part.view(bits), got[k0:k1, n0:n1].reshape(part.shape).view(bits))


def test_work_precision_choice():
    s16 = torch.tensor([0.37, -1.5]).half()
    assert _cpu._work_dtype(s16, -8 * s16, 4) == torch.float32
    s32 = torch.tensor([0.37, -1.5])
    assert _cpu._work_dtype(s32, -8 * s32, 4) == torch.float64
    assert _cpu._work_dtype(s32, torch.tensor([2.0 ** -120, 0.0]), 4) is None
    specials = torch.tensor([float("inf"), float("nan")])
    assert _cpu._work_dtype(specials.half(), specials.half(), 8) == torch.float32


@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("M", [1, 5])
def test_linear_cpu(dtype, M):
    """fp32 accumulation of the exact weight: against float64 x @ W, the error bound of an
    fp32 sum of K products (plus the final rounding for fp16/bf16)."""
    K, N, nbit = 512, 96, 4
    qw, s, h = _weight(K, N, nbit, 32, 0, 4, F16, seed=M)
    x = torch.randn(2, M, K, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = ops.linear(x, qw, s, h, nbit)
    assert y.shape == (2, M, N) and y.dtype == dtype
    w = ref.linear_weight(qw, s, h, nbit, dtype=dtype, group_size=K // 4).double()
    exact = x.double() @ w
    bound = K * 2.0 ** -24 * (x.double().abs() @ w.abs())
    if dtype != F32:
        bound = bound + exact.abs() * 2.0 ** -(11 if dtype == F16 else 8)
    assert ((y.double() - exact).abs() <= bound).all()


def test_linear_cpu_empty_k_and_rows():
    qw, s, h = _weight(64, 16, 4, 32, 0, 1, F16, seed=0)
    assert ops.linear(torch.zeros(0, 64), qw, s, h, 4).shape == (0, 16)


def test_linear_fp32_x_needs_the_cpu():
    qw, s, h = (t.to("meta") for t in _weight(64, 16, 4, 32, 0, 1, F16, seed=0))
    with pytest.raises(TypeError, match="`x` must be fp16 or bf16 on meta"):
        ops.linear(torch.zeros(2, 64, device="meta"), qw, s, h, 4)


@pytest.mark.parametrize("sdtype,dtype", [(F16, F32), (F16, F16), (BF16, F32), (BF16, BF16), (F32, BF16)])
def test_linear_weight_wide_exponents(sdtype, dtype):
    """Scale and shift magnitudes 2**+-20 apart: the fast fp32 check (magnitudes within
    2**(23 - bits)) on both sides of its bound, the float64 and the fallback paths."""
    g = torch.Generator().manual_seed(4)
    K, N = 64, 256
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // 8, N), dtype=torch.int32, generator=g)
    mag = lambda: torch.exp2(torch.randint(-20, 21, (2, N), generator=g).double()) * torch.randn(2, N, generator=g,
                                                                                             dtype=torch.float64)
    s, h = mag().to(sdtype), mag().to(sdtype)
    want = ref.linear_weight(qw, s, h, 4, dtype=dtype, group_size=32, signed=True)
    got = _cpu.linear_weight(qw, s, h, 4, dtype=dtype, group_size=32, packed_dim=0, signed=True)
    bits = torch.int16 if dtype != F32 else torch.int32
    assert torch.equal(got.view(bits), want.view(bits))
