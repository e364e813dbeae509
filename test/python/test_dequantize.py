"""tl.dequantize end to end: every code at every position, every container,
nbit, signedness and output type, four kinds of scale/shift, both axes.

Without a GPU this runs in Triton's interpreter (the portable lowering); on a
GPU the same kernels are compiled (the PTX lowering). The reference is the
exact value rounded once (triton_dequant.reference)."""
import itertools

import pytest
import torch
import triton
import triton.language as tl

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import reference as ref

from conftest import DEVICE
from dq_cases import CONTAINERS, DSTS, PAIRS, TORCH_DST, as_container, every_code_words

TL_DST = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}


@triton.jit
def _kernel(x_ptr, s_ptr, h_ptr, sv_ptr, hv_ptr, so_ptr, ho_ptr,
            y_const, y_scalar, y_vec, y_out,
            RB: tl.constexpr, C: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr,
            DST: tl.constexpr, SIGNED: tl.constexpr, AXIS: tl.constexpr,
            SCALE: tl.constexpr, SHIFT: tl.constexpr):
    """Rows [pid*RB, (pid+1)*RB) of a [R, C] packed tile, dequantized four ways."""
    pid = tl.program_id(0)
    r = pid * RB + tl.arange(0, RB)[:, None]
    c = tl.arange(0, C)[None, :]
    x = tl.load(x_ptr + r * C + c)
    if AXIS == 0:
        ro = pid * RB * PER + tl.arange(0, RB * PER)[:, None]
        co = tl.arange(0, C)[None, :]
        out = ro * C + co
        vec = c  # one scale per column: constant along the unpacked axis
    else:
        ro = pid * RB + tl.arange(0, RB)[:, None]
        co = tl.arange(0, C * PER)[None, :]
        out = ro * (C * PER) + co
        vec = r
    # 1. Python constants (immediates)
    y = tl.dequantize(x, SCALE, SHIFT, NBIT, DST, axis=AXIS, signed=SIGNED)
    tl.store(y_const + out, y)
    # 2. scalar tensors
    y = tl.dequantize(x, tl.load(s_ptr), tl.load(h_ptr), NBIT, DST, axis=AXIS, signed=SIGNED)
    tl.store(y_scalar + out, y)
    # 3. one value per row (axis -1) or per column (axis 0)
    y = tl.dequantize(x, tl.load(sv_ptr + vec), tl.load(hv_ptr + vec), NBIT, DST, axis=AXIS, signed=SIGNED)
    tl.store(y_vec + out, y)
    # 4. one value per output element
    y = tl.dequantize(x, tl.load(so_ptr + out), tl.load(ho_ptr + out), NBIT, DST, axis=AXIS, signed=SIGNED)
    tl.store(y_out + out, y)


C = 16  # words per row of the test tile


def _rows(n):
    """Power-of-two row count holding at least n words in rows of C."""
    return max(1, 1 << max(-(-n // C) - 1, 0).bit_length())


def _row_block(rows, per):
    # interpreter: one program; compiled: small tiles (<= 2048 outputs per call)
    return rows if DEVICE == "cpu" else max(1, min(rows, 2048 // (C * per)))


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


CASES = [(w, n, dt, s, d, a)
         for (w, n), s, d, a in itertools.product(PAIRS, (False, True), DSTS, (-1, 0))
         for dt in CONTAINERS[w][:1]]
# the other container signedness of each width: fewer combinations
CASES += [(w, n, CONTAINERS[w][1], s, "fp16", -1) for (w, n), s in itertools.product(PAIRS, (False, True))]


@pytest.mark.parametrize("width,nbit,container,signed,dst,axis", CASES,
                         ids=lambda v: str(v).replace("torch.", ""))
def test_bit_exact(width, nbit, container, signed, dst, axis):
    gen = torch.Generator().manual_seed(width * 100 + nbit * 10 + signed)
    words = every_code_words(width, nbit, gen)
    R = _rows(len(words))
    pad = torch.randint(0, 1 << width, (R * C - len(words),), generator=gen, dtype=torch.int64)
    x = as_container(torch.cat([words, pad]), container).reshape(R, C)
    per = width // nbit
    tdst = TORCH_DST[dst]
    out_shape = (R * per, C) if axis == 0 else (R, C * per)
    n_vec = C if axis == 0 else R

    def rnd(*shape):  # values of dst dtype, both signs
        return (torch.randn(*shape, generator=gen) * 3).to(tdst)

    s, h = rnd(1), rnd(1)
    sv, hv = rnd(n_vec), rnd(n_vec)
    so, ho = rnd(*out_shape), rnd(*out_shape)
    scale_c, shift_c = -0.3712890625, 5.5
    ys = [torch.full(out_shape, float("nan"), dtype=tdst) for _ in range(4)]
    dev = [t.to(DEVICE) for t in (x, s, h, sv, hv, so, ho, *ys)]
    rb = _row_block(R, per)
    _kernel[(R // rb,)](*dev, rb, C, per, nbit, TL_DST[dst], signed, axis, scale_c, shift_c)
    ys = [t.cpu() for t in dev[-4:]]
    vec_shape = (1, C) if axis == 0 else (R, 1)
    refs = [
        ref.dequantize(x, scale_c, shift_c, nbit, tdst, axis=axis, signed=signed),
        ref.dequantize(x, s, h, nbit, tdst, axis=axis, signed=signed),
        ref.dequantize(x, sv.reshape(vec_shape), hv.reshape(vec_shape), nbit, tdst, axis=axis, signed=signed),
        ref.dequantize(x, so, ho, nbit, tdst, axis=axis, signed=signed),
    ]
    for name, got, want in zip(("const", "scalar", "vector", "per-output"), ys, refs):
        bad = _bits(got) != _bits(want)
        assert not bad.any(), f"{name}: {int(bad.sum())} of {bad.numel()} outputs differ"


@triton.jit
def _tail_kernel(x_ptr, y_ptr, s, h, n_words, BLOCK: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n_words, other=0)
    y = tl.dequantize(x, s, h, NBIT)
    o = pid * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + o, y, mask=o < n_words * PER)


@pytest.mark.parametrize("nbit", [8, 4, 2, 1])
@pytest.mark.parametrize("n_words", [1, 37, 1000])
def test_tail_not_multiple_of_block(nbit, n_words):
    gen = torch.Generator().manual_seed(n_words)
    per = 32 // nbit
    x = torch.randint(-2**31, 2**31 - 1, (n_words,), generator=gen, dtype=torch.int32)
    y = torch.full((n_words * per + 5,), float("nan"), dtype=torch.float16)
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    block = 64
    _tail_kernel[(triton.cdiv(n_words, block),)](xd, yd, -0.75, 2.0, n_words, block, per, nbit)
    y = yd.cpu()
    want = ref.dequantize(x, -0.75, 2.0, nbit, torch.float16)
    assert torch.equal(_bits(y[:n_words * per]), _bits(want))
    assert torch.isnan(y[n_words * per:]).all()  # nothing written past the end


@triton.jit
def _mixed_kernel(x_ptr, s_ptr, y_ptr, N: tl.constexpr, PER: tl.constexpr, DST: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, N))
    y = tl.dequantize(x, tl.load(s_ptr), tl.load(s_ptr + 1), 4, DST)  # scale of another dtype
    tl.store(y_ptr + tl.arange(0, N * PER), y)


@pytest.mark.parametrize("scale_dtype,dst", [(s, d) for s in (torch.float16, torch.bfloat16, torch.float32)
                                             for d in DSTS if TORCH_DST[d] != s])
def test_scale_of_another_dtype_is_rounded_first(scale_dtype, dst):
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(-2**31, 2**31 - 1, (64,), dtype=torch.int32, generator=gen)
    s = (torch.randn(2, generator=gen) * 0.37).to(scale_dtype)  # rarely representable in dst
    y = torch.empty(64 * 8, dtype=TORCH_DST[dst])
    xd, sd, yd = x.to(DEVICE), s.to(DEVICE), y.to(DEVICE)
    _mixed_kernel[(1,)](xd, sd, yd, 64, 8, TL_DST[dst])
    want = ref.dequantize(x, s[0], s[1], 4, TORCH_DST[dst])
    assert torch.equal(_bits(yd.cpu()), _bits(want))
