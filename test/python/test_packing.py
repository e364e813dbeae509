"""Host-side packing (triton_dequant.packing) and foreign-format conversions
(triton_dequant.interop). Expected bit patterns are built here from the written
definitions with Python integers, independently of the code under test."""
import functools
import itertools
import re
import shutil
import struct

import pytest
import torch

from triton_dequant import interop, packing
from triton_dequant.interop import (from_awq, from_fbgemm_rowwise, from_fbgemm_tbe, from_gptq, to_awq,
                                    to_fbgemm_rowwise, to_fbgemm_tbe, to_gptq)
from triton_dequant.packing import (bitpack, bitunpack, pack, pack_rows, quantize, unpack,
                                    unpack_rows)

CONTAINERS = [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32]
WIDTH = {torch.uint8: 8, torch.int8: 8, torch.int16: 16, torch.uint16: 16, torch.int32: 32, torch.uint32: 32}
NBITS = list(range(1, 9))
AWQ_ORDER_DOC = [0, 2, 4, 6, 1, 3, 5, 7]  # AutoAWQ WQLinear_GEMM order_map


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _codes(shape, nbit, signed, seed=0, dtype=torch.int64):
    lo, hi = (-(1 << (nbit - 1)), 1 << (nbit - 1)) if signed else (0, 1 << nbit)
    return torch.randint(lo, hi, shape, generator=_gen(seed)).to(dtype)


def _unsigned_list(p):
    """Element values of a container tensor as unsigned Python ints."""
    w = WIDTH[p.dtype]
    twin = {8: torch.uint8, 16: torch.int16, 32: torch.int32}[w] if p.dtype != torch.int8 else torch.int8
    return [v & ((1 << w) - 1) for v in p.view(twin).to(torch.int64).reshape(-1).tolist()]


def _ref_pack_1d(codes, nbit, width, dense):
    """The written bit order, with Python ints: padded (PER = W // nbit codes per
    element, code j at bits [j*nbit, (j+1)*nbit)) or dense (LSB-first bit stream
    cut into W-bit elements, whole groups of W codes)."""
    u = [c & ((1 << nbit) - 1) for c in codes]
    n = len(u)
    if not dense:
        per = width // nbit
        return [sum(u[i * per + j] << (j * nbit) for j in range(per) if i * per + j < n)
                for i in range(-(-n // per))]
    stream = sum(c << (i * nbit) for i, c in enumerate(u))
    return [(stream >> (width * k)) & ((1 << width) - 1) for k in range(-(-n // width) * nbit)]


def _i32(v):
    """Unsigned 32-bit Python int -> the int32 value with those bits."""
    return v - (1 << 32) if v >= 1 << 31 else v


def _f16_bits(v):
    return struct.unpack("<H", struct.pack("<e", v))[0]


# --- round trips -----------------------------------------------------------------------------

SHAPE = (13, 37, 5)  # no length is a multiple of PER (for nbit < 8 in uint8) or of 8 / 32 codes


@pytest.mark.parametrize("signed", [False, True], ids=["u", "s"])
@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("dense", [False, True], ids=["padded", "dense"])
@pytest.mark.parametrize("container", CONTAINERS, ids=str)
@pytest.mark.parametrize("nbit", NBITS)
def test_round_trip(nbit, container, dense, dim, signed):
    codes = _codes(SHAPE, nbit, signed, seed=nbit)
    p = pack(codes, nbit, dim=dim, container=container, dense=dense, signed=signed)
    W = WIDTH[container]
    n = SHAPE[dim]
    expect_len = -(-n // W) * nbit if dense else -(-n // (W // nbit))
    assert p.dtype == container and p.is_contiguous()
    assert p.shape == tuple(expect_len if i == dim % 3 else s for i, s in enumerate(SHAPE))
    u = unpack(p, nbit, dim=dim, dense=dense, n=n, signed=signed)
    assert u.dtype == (torch.int8 if signed else torch.uint8)
    assert torch.equal(u.to(torch.int64), codes)
    full = unpack(p, nbit, dim=dim, dense=dense, signed=signed)  # padding codes are zero
    assert torch.equal(full.narrow(dim, 0, n).to(torch.int64), codes)
    assert not full.narrow(dim, n, full.shape[dim] - n).any()


@pytest.mark.parametrize("signed", [False, True], ids=["u", "s"])
@pytest.mark.parametrize("dense", [False, True], ids=["padded", "dense"])
@pytest.mark.parametrize("container", CONTAINERS, ids=str)
@pytest.mark.parametrize("nbit", NBITS)
def test_bits_match_definition(nbit, container, dense, signed):
    codes = _codes((45,), nbit, signed, seed=100 + nbit)
    p = pack(codes, nbit, container=container, dense=dense, signed=signed)
    assert _unsigned_list(p) == _ref_pack_1d(codes.tolist(), nbit, WIDTH[container], dense)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                                   torch.uint16, torch.uint32], ids=str)
def test_any_integer_input_dtype(dtype):
    codes = _codes((3, 21), 1, False, dtype=torch.int64)
    p = pack(codes.to(dtype), 1, container=torch.int16)
    assert torch.equal(p, pack(codes, 1, container=torch.int16))


def test_compatible_with_reference_unpack():
    from triton_dequant import reference as ref
    for nbit, container in [(1, torch.int32), (2, torch.int16), (4, torch.uint8), (8, torch.int32)]:
        codes = _codes((6, 64), nbit, False, seed=nbit)
        p = pack(codes, nbit, dim=0, container=container)
        assert torch.equal(ref.unpack_codes(p, nbit, axis=0)[:6], codes)


def test_empty():
    p = pack(torch.zeros(4, 0, dtype=torch.int64), 3, container=torch.int32)
    assert p.shape == (4, 0)
    assert unpack(p, 3).shape == (4, 0)


# --- known values ----------------------------------------------------------------------------

def test_nibbles_in_int32():
    p = pack(torch.arange(8), 4, container=torch.int32)
    assert p.tolist() == [0x76543210]
    assert pack(torch.arange(8), 4, container=torch.uint32).view(torch.int32).tolist() == [0x76543210]


def test_two_bit_codes_in_uint8():
    assert pack(torch.tensor([1, 2, 3, 0]), 2, container=torch.uint8).tolist() == [0b00111001]


def test_dense_uint3_three_bytes():
    # bits, LSB first: 001 010 011 100 101 110 111 000 -> 0x1F58D1
    p = pack(torch.tensor([1, 2, 3, 4, 5, 6, 7, 0]), 3, container=torch.uint8, dense=True)
    assert p.tolist() == [0xD1, 0x58, 0x1F]
    assert unpack(p, 3, dense=True).tolist() == [1, 2, 3, 4, 5, 6, 7, 0]


def test_dense_int32_is_byte_stream():
    codes = _codes((64,), 3, False, seed=3)
    words = pack(codes, 3, container=torch.int32, dense=True)
    assert words.shape == (6,)
    assert torch.equal(words.view(torch.uint8), pack(codes, 3, container=torch.uint8, dense=True))


def test_signed_two_complement_int16():
    p = pack(torch.tensor([-1, 2, -8, 7]), 4, container=torch.int16, signed=True)
    assert p.tolist() == [0x782F]
    assert unpack(p, 4, signed=True).tolist() == [-1, 2, -8, 7]
    assert unpack(p, 4).tolist() == [15, 2, 8, 7]


def test_bool_bitset():
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.bool)
    bits = bitpack(mask)
    assert bits.dtype == torch.uint8 and bits.tolist() == [0b00001101, 0b1]
    assert torch.equal(bitunpack(bits, 9), mask)
    words = bitpack(mask, container=torch.int32)
    assert words.tolist() == [0b100001101]
    assert torch.equal(bitunpack(words, 9), mask)


def test_bitset_dim():
    mask = torch.rand(5, 19, generator=_gen()) > 0.5
    bits = bitpack(mask, dim=0)
    assert bits.shape == (1, 19)
    assert torch.equal(bitunpack(bits, 5, dim=0), mask)


# --- padding bits ----------------------------------------------------------------------------

@pytest.mark.parametrize("nbit,container", [(3, torch.uint8), (5, torch.int16), (7, torch.int32), (3, torch.int32)])
def test_padding_bits_zero(nbit, container):
    W = WIDTH[container]
    per = W // nbit
    codes = torch.full((2 * per + 1,), (1 << nbit) - 1)
    vals = _unsigned_list(pack(codes, nbit, container=container))
    full = (1 << (per * nbit)) - 1  # the W % nbit high bits stay zero
    assert vals == [full, full, (1 << nbit) - 1]


def test_dense_tail_zero():
    codes = torch.full((10,), 7)
    assert pack(codes, 3, container=torch.uint8, dense=True).tolist() == [255, 255, 255, 0x3F, 0, 0]


# --- quantize ------------------------------------------------------------------------------------

def _dequant_exact(packed, scale, shift, nbit, dim, n, group_size, signed):
    """fp16(scale*q + shift) rounded once (float64 is exact here), plus the exact value."""
    q = unpack(packed, nbit, dim=dim, n=n, signed=signed).to(torch.float64)
    g = group_size or n
    s = scale.to(torch.float64).repeat_interleave(g, dim).narrow(dim, 0, n)
    h = shift.to(torch.float64).repeat_interleave(g, dim).narrow(dim, 0, n)
    exact = s * q + h
    return exact.to(torch.float16).to(torch.float64), exact, s


def _check_bound(x, packed, scale, shift, nbit, dim, group_size, signed):
    n = x.shape[dim]
    deq, exact, s = _dequant_exact(packed, scale, shift, nbit, dim, n, group_size, signed)
    xd = x.to(torch.float64)
    err = (xd - deq).abs()
    bound = s / 2 + (exact - deq).abs() + 1e-12 * (xd.abs() + s)
    assert torch.isfinite(deq).all()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item()}"


@pytest.mark.parametrize("xdtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("group_size", [None, 10, 5])
@pytest.mark.parametrize("signed", [False, True], ids=["affine", "symmetric"])
@pytest.mark.parametrize("nbit", [2, 3, 4, 8])
@pytest.mark.parametrize("dim", [0, -1])
def test_quantize_error_bound(nbit, signed, group_size, xdtype, dim):
    g = _gen(nbit)
    x = torch.randn(6, 50, generator=g) * torch.logspace(-3, 2, 6)[:, None] + torch.randn(6, 1, generator=g)
    x[2] = 0.75  # constant row
    x[3, :] = x[3, 0]
    x = x.to(xdtype)
    x = x if dim == -1 else x.t().contiguous()
    packed, scale, shift = quantize(x, nbit, group_size=group_size, dim=dim, signed=signed)
    G = -(-50 // group_size) if group_size else 1
    expect = (G, 6) if dim == 0 else (6, G)
    assert scale.shape == expect and shift.shape == expect
    assert scale.dtype == torch.float16 and shift.dtype == torch.float16
    assert torch.isfinite(scale).all() and (scale > 0).all() and torch.isfinite(shift).all()
    if signed:
        assert not shift.any()
    _check_bound(x, packed, scale, shift, nbit, dim, group_size, signed)


@pytest.mark.parametrize("scale_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_quantize_scale_dtypes_and_3d(scale_dtype):
    x = torch.randn(3, 40, 2, generator=_gen(5)) * 3 - 1
    packed, scale, shift = quantize(x, 4, group_size=8, dim=1, scale_dtype=scale_dtype, container=torch.uint8)
    assert scale.shape == (3, 5, 2) and scale.dtype == scale_dtype and packed.shape == (3, 20, 2)
    _check_bound(x, packed, scale, shift, 4, 1, 8, False)


def test_quantize_constant_rows():
    x = torch.tensor([[0.0] * 9, [1e-3] * 9, [-7.1] * 9, [0.1] * 9])
    for signed in (False, True):
        packed, scale, shift = quantize(x, 4, signed=signed)
        assert torch.isfinite(scale).all() and torch.isfinite(shift).all() and (scale > 0).all()
        _check_bound(x, packed, scale, shift, 4, -1, None, signed)


def test_quantize_formula_unsigned():
    x = torch.tensor([[-1.0, 0.0, 2.0, 0.5]])
    packed, scale, shift = quantize(x, 2, container=torch.uint8)
    assert shift.item() == -1.0 and scale.item() == 1.0  # (2 - (-1)) / 3 = 1 exactly
    assert unpack(packed, 2, n=4).tolist() == [[0, 1, 3, 2]]  # (0.5+1)/1 = 1.5 -> 2 (half to even)


def test_quantize_formula_signed():
    x = torch.tensor([[-3.0, 1.4, 0.0, 3.0]])
    packed, scale, shift = quantize(x, 3, signed=True)
    assert scale.item() == 1.0 and shift.item() == 0.0  # 3 / (2**2 - 1)
    assert unpack(packed, 3, n=4, signed=True).tolist() == [[-3, 1, 0, 3]]


# --- row-fused layout ----------------------------------------------------------------------------

@pytest.mark.parametrize("container", [torch.int32, torch.int16, torch.uint8, torch.int8, torch.uint32], ids=str)
def test_pack_rows_header_bits(container):
    x = torch.randn(3, 10, generator=_gen(1))
    rows = pack_rows(x, 4, container=container)
    _, scale, shift = quantize(x, 4)
    sb = [_f16_bits(v) for v in scale[:, 0].tolist()]
    hb = [_f16_bits(v) for v in shift[:, 0].tolist()]
    W = WIDTH[container]
    head = [_unsigned_list(rows[r, :32 // W]) for r in range(3)]
    for r in range(3):
        if W == 32:
            assert head[r] == [sb[r] | hb[r] << 16]
        elif W == 16:
            assert head[r] == [sb[r], hb[r]]
        else:
            assert head[r] == [sb[r] & 255, sb[r] >> 8, hb[r] & 255, hb[r] >> 8]
    codes, s2, h2 = unpack_rows(rows, 4, 10)
    assert torch.equal(s2, scale[:, 0]) and torch.equal(h2, shift[:, 0])
    assert torch.equal(rows[:, 32 // W:], pack(codes, 4, container=container))
    assert rows.shape[1] == 32 // W + -(-10 // (W // 4))


def test_pack_rows_align_and_signed():
    x = torch.randn(4, 33, generator=_gen(2))
    rows = pack_rows(x, 2, container=torch.int32, row_align=16, signed=True)
    assert rows.shape == (4, 4) and not rows[:, 1 + 3:].any()
    codes, scale, shift = unpack_rows(rows, 2, 33, signed=True)
    assert not shift.any()
    _check_bound(x, pack(codes, 2, signed=True), scale[:, None], shift[:, None], 2, -1, None, True)


def test_pack_rows_matches_reference_split_rows():
    from triton_dequant import reference as ref
    x = torch.randn(5, 24, generator=_gen(3))
    for container in (torch.int32, torch.int16, torch.uint8):
        rows = pack_rows(x, 4, container=container)
        data, scale, shift = ref.split_rows(rows)
        codes, s2, h2 = unpack_rows(rows, 4, 24)
        assert torch.equal(scale, s2) and torch.equal(shift, h2)
        assert torch.equal(ref.unpack_codes(data, 4)[:, :24], codes.long())


# --- FBGEMM -----------------------------------------------------------------------------------------

def _fbgemm_sbhalf_row(codes, nbit, scale, bias):
    """FloatToFusedNBitRowwiseQuantizedSBHalf: code c in byte c // (8/nbit) at bit
    (c % (8/nbit)) * nbit, then fp16 scale, fp16 bias."""
    per = 8 // nbit
    data = bytearray(-(-len(codes) // per))
    for c, q in enumerate(codes):
        data[c // per] |= q << ((c % per) * nbit)
    return list(data) + list(struct.pack("<ee", scale, bias))


@pytest.mark.parametrize("container", [torch.int32, torch.int16, torch.uint8], ids=str)
def test_from_fbgemm_rowwise_hand_built(container):
    codes = [[1, 2, 3, 4, 5], [15, 0, 7, 8, 9]]
    rows = torch.tensor([_fbgemm_sbhalf_row(c, 4, 0.5, -1.0) for c in codes], dtype=torch.uint8)
    assert rows[0].tolist() == [0x21, 0x43, 0x05, 0x00, 0x38, 0x00, 0xBC]
    ours = from_fbgemm_rowwise(rows, 4, n_codes=5, container=container)
    if container == torch.int32:
        assert ours[0].tolist() == [_i32(0xBC003800), 0x00054321]
    c2, s, h = unpack_rows(ours, 4, 5)
    assert c2.tolist() == codes and s.tolist() == [0.5, 0.5] and h.tolist() == [-1.0, -1.0]
    assert torch.equal(to_fbgemm_rowwise(ours, 4, 5), rows)


@pytest.mark.parametrize("nbit", [1, 2, 4, 8])
def test_fbgemm_rowwise_half_round_trip(nbit):
    D = 21
    codes = _codes((3, D), nbit, False, seed=nbit).tolist()
    rows = torch.tensor([_fbgemm_sbhalf_row(c, nbit, 0.125 * (i + 1), -2.5 + i)
                         for i, c in enumerate(codes)], dtype=torch.uint8)
    ours = from_fbgemm_rowwise(rows, nbit, n_codes=D, qparams_dtype=torch.float16)
    assert unpack_rows(ours, nbit, D)[0].tolist() == codes
    assert torch.equal(to_fbgemm_rowwise(ours, nbit, D, qparams_dtype=torch.float16), rows)


def test_from_fbgemm_8bit_fp32_qparams():
    # Fused8BitRowwiseQuantized: D code bytes, then fp32 scale and fp32 bias
    rows = torch.tensor([[0, 128, 255] + list(struct.pack("<ff", 0.1, -3.3))], dtype=torch.uint8)
    ours = from_fbgemm_rowwise(rows, 8, container=torch.uint8)
    s32, b32 = struct.unpack("<ff", struct.pack("<ff", 0.1, -3.3))
    assert ours[0].tolist() == list(struct.pack("<ee", s32, b32)) + [0, 128, 255]  # rounded to nearest fp16
    back = to_fbgemm_rowwise(ours, 8, 3)  # fp16 -> fp32 is exact
    assert back.shape == (1, 11)
    assert torch.equal(from_fbgemm_rowwise(back, 8, container=torch.uint8), ours)


def _tbe_row(codes, nbit, scale, shift, align=16):
    """TBE inference row: fp16 scale, fp16 shift, data bytes (LSB first), zero padding."""
    per = 8 // nbit
    data = bytearray(-(-len(codes) // per))
    for c, q in enumerate(codes):
        data[c // per] |= q << ((c % per) * nbit)
    row = list(struct.pack("<ee", scale, shift)) + list(data)
    return row + [0] * (-len(row) % align)


@pytest.mark.parametrize("nbit", [2, 4, 8])
@pytest.mark.parametrize("container", [torch.int32, torch.uint8], ids=str)
def test_fbgemm_tbe(nbit, container):
    D = 6 if nbit == 4 else 12
    codes = _codes((2, D), nbit, False, seed=nbit).tolist()
    tbe = torch.tensor([_tbe_row(c, nbit, 0.25, 2.0 - i) for i, c in enumerate(codes)], dtype=torch.uint8)
    assert tbe.shape[1] % 16 == 0
    ours = from_fbgemm_tbe(tbe, nbit, D, container=container)
    c2, s, h = unpack_rows(ours, nbit, D)
    assert c2.tolist() == codes and s.tolist() == [0.25, 0.25] and h.tolist() == [2.0, 1.0]
    if container == torch.uint8:  # our uint8 rows are the TBE rows without the padding
        assert torch.equal(ours, tbe[:, :4 + -(-D * nbit // 8)])
    assert torch.equal(to_fbgemm_tbe(ours, nbit, D), tbe)


def test_tbe_known_row():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]])
    tbe = to_fbgemm_tbe(pack_rows(x, 4), 4, 8)
    # shift = 1, scale = ru(7/15) in fp16; codes round((x - 1) / scale)
    s = torch.tensor(7 / 15).half()
    s = s if s.double() >= 7 / 15 else torch.nextafter(s, torch.tensor(1.0).half())
    q = [round((v - 1) / s.item()) for v in range(1, 9)]
    data = [q[2 * i] | q[2 * i + 1] << 4 for i in range(4)]
    assert tbe[0].tolist() == list(struct.pack("<ee", s.item(), 1.0)) + data + [0] * 8


# --- GPTQ / AWQ -------------------------------------------------------------------------------------

def _gptq_words(codes, nbit):
    """AutoGPTQ QuantLinear.pack for one column (list of K codes) -> K*nbit/32 uint32
    words: 2/4/8 bits: 32/nbit codes per word at bits nbit*(j - i); 3 bits: words of
    (10 codes, 2 low bits of the 11th), (its high bit, 10 codes << 1, low bit of the
    22nd), (its 2 high bits, 10 codes << 2)."""
    words = []
    if nbit != 3:
        per = 32 // nbit
        for r in range(len(codes) // per):
            words.append(sum(codes[r * per + j] << (nbit * j) for j in range(per)))
        return words
    for b in range(len(codes) // 32):
        c = codes[32 * b:32 * b + 32]
        w0 = sum(c[j] << (3 * j) for j in range(10)) | (c[10] & 3) << 30
        w1 = (c[10] >> 2) & 1 | sum(c[11 + j] << (3 * j + 1) for j in range(10)) | (c[21] & 1) << 31
        w2 = (c[21] >> 1) & 3 | sum(c[22 + j] << (3 * j + 2) for j in range(10))
        words += [w0, w1, w2]
    return words


def _gptq_example(nbit, K, N, G, minus_one=True, seed=0):
    g = _gen(seed)
    codes = torch.randint(0, 1 << nbit, (K, N), generator=g)
    lo = 1 if minus_one else 0
    zeros = torch.randint(lo, (1 << nbit) + lo, (G, N), generator=g)
    scales = (torch.rand(G, N, generator=g) * 0.1 + 0.01).half()
    cols = [_gptq_words(codes[:, n].tolist(), nbit) for n in range(N)]
    qweight = torch.tensor([[_i32(cols[n][r]) for n in range(N)] for r in range(len(cols[0]))], dtype=torch.int32)
    zrows = [_gptq_words((zeros[gi] - lo).tolist(), nbit) for gi in range(G)]
    qzeros = torch.tensor([[_i32(w) for w in row] for row in zrows], dtype=torch.int32)
    return codes, zeros, scales, qweight, qzeros


@pytest.mark.parametrize("minus_one", [True, False], ids=["classic", "v2"])
@pytest.mark.parametrize("nbit", [2, 3, 4, 8])
def test_from_gptq(nbit, minus_one):
    K, N, G = 64, 32, 2
    codes, zeros, scales, qweight, qzeros = _gptq_example(nbit, K, N, G, minus_one, seed=nbit)
    packed, scale, shift = from_gptq(qweight, qzeros, scales, nbit=nbit, zeros_minus_one=minus_one)
    assert torch.equal(unpack(packed, nbit, dim=0, dense=nbit == 3).long(), codes)
    assert torch.equal(packed, pack(codes, nbit, dim=0, container=torch.int32, dense=nbit == 3))
    assert torch.equal(scale, scales)
    assert torch.equal(shift, (-(scales.double() * zeros)).half())
    # our W = scale*q + shift is GPTQ's (q - z) * scale up to the extra rounding of shift
    s = scales.double().repeat_interleave(K // G, 0)
    ours = s * codes + shift.double().repeat_interleave(K // G, 0)
    theirs = (codes - zeros.repeat_interleave(K // G, 0)) * s
    assert torch.allclose(ours, theirs, rtol=0, atol=2 ** -10 * theirs.abs().max().item())
    back = to_gptq(packed, scale, shift, nbit=nbit, zeros_minus_one=minus_one)
    assert torch.equal(back[0], qweight) and torch.equal(back[1], qzeros) and torch.equal(back[2], scales)


def test_gptq_known_word():
    codes = torch.arange(8)[:, None].repeat(1, 8)  # K = 8, N = 8: one qweight row
    zeros = torch.full((1, 8), 8)
    qzeros = torch.tensor([[0x77777777]], dtype=torch.int32)  # 8 - 1 in every nibble
    packed, scale, shift = from_gptq(pack(codes, 4, dim=0), qzeros, torch.ones(1, 8).half())
    assert packed.tolist() == [[0x76543210] * 8]
    assert torch.equal(shift, -zeros.half())


def test_gptq_g_idx():
    codes, zeros, scales, qweight, qzeros = _gptq_example(4, 32, 8, 2)
    g_idx = torch.arange(32, dtype=torch.int32) // 16
    from_gptq(qweight, qzeros, scales, g_idx=g_idx)
    with pytest.raises(ValueError, match="g_idx"):
        from_gptq(qweight, qzeros, scales, g_idx=g_idx.flip(0))


def _awq_words(row, nbit=4):
    """AutoAWQ WQLinear_GEMM packing of one row of N codes: word c holds column
    8c + order_map[i] at bits 4i."""
    return [sum(row[8 * c + AWQ_ORDER_DOC[i]] << (4 * i) for i in range(8)) for c in range(len(row) // 8)]


def test_awq_known_word():
    qweight = torch.tensor([[_i32(w) for w in _awq_words(list(range(8)))]], dtype=torch.int32)
    assert qweight.tolist() == [[0x75316420]]
    packed, _, _ = from_awq(qweight, torch.zeros(1, 1, dtype=torch.int32), torch.ones(1, 8).half())
    assert packed.tolist() == [[0x76543210]]


@pytest.mark.parametrize("packed_dim", [1, 0])
def test_from_awq(packed_dim):
    K, N, G = 32, 24, 2
    g = _gen(7)
    codes = torch.randint(0, 16, (K, N), generator=g)
    zeros = torch.randint(0, 16, (G, N), generator=g)
    scales = (torch.rand(G, N, generator=g) * 0.1 + 0.01).half()
    qweight = torch.tensor([[_i32(w) for w in _awq_words(r)] for r in codes.tolist()], dtype=torch.int32)
    qzeros = torch.tensor([[_i32(w) for w in _awq_words(r)] for r in zeros.tolist()], dtype=torch.int32)
    packed, scale, shift = from_awq(qweight, qzeros, scales, packed_dim=packed_dim)
    assert torch.equal(packed, pack(codes, 4, dim=packed_dim, container=torch.int32))
    assert torch.equal(scale, scales) and torch.equal(shift, (-(scales.double() * zeros)).half())
    back = to_awq(packed, scale, shift, packed_dim=packed_dim)
    assert torch.equal(back[0], qweight) and torch.equal(back[1], qzeros) and torch.equal(back[2], scales)


def test_awq_to_gptq_via_ours():
    """AWQ -> ours -> GPTQ (v2 zeros): the same dequantized weight."""
    K, N = 16, 8
    g = _gen(9)
    codes = torch.randint(0, 16, (K, N), generator=g)
    zeros = torch.randint(0, 16, (1, N), generator=g)
    scales = torch.rand(1, N, generator=g).half()
    qweight = torch.tensor([[_i32(w) for w in _awq_words(r)] for r in codes.tolist()], dtype=torch.int32)
    qzeros = torch.tensor([[_i32(w) for w in _awq_words(r)] for r in zeros.tolist()], dtype=torch.int32)
    packed, scale, shift = from_awq(qweight, qzeros, scales, packed_dim=0)
    gq, gz, gs = to_gptq(packed, scale, shift, zeros_minus_one=False)
    assert torch.equal(gq, torch.tensor([[_i32(w) for w in _gptq_words(codes[:, n].tolist(), 4)] for n in range(N)],
                                        dtype=torch.int32).t())
    assert torch.equal(unpack(gz, 4).long(), zeros)


# --- errors ------------------------------------------------------------------------------------------

_T = torch.arange(8)
_P = pack(_T, 4)
_ROWS = pack_rows(torch.randn(2, 8, generator=_gen()), 4)
_G = _gptq_example(4, 32, 8, 2)

ERRORS = [
    (lambda: pack(_T.float(), 4), TypeError, "codes"),
    (lambda: pack([1, 2], 4), TypeError, "codes"),
    (lambda: pack(_T, 0), ValueError, "nbit"),
    (lambda: pack(_T, 9), ValueError, "nbit"),
    (lambda: pack(_T, 4.0), TypeError, "nbit"),
    (lambda: pack(_T, True), TypeError, "nbit"),
    (lambda: pack(_T, 4, container=torch.int64), ValueError, "container"),
    (lambda: pack(_T, 4, container=torch.float16), ValueError, "container"),
    (lambda: pack(_T, 4, container="int32"), TypeError, "container"),
    (lambda: pack(_T, 4, dim=1), ValueError, "dim"),
    (lambda: pack(_T, 4, dim=0.0), TypeError, "dim"),
    (lambda: pack(torch.tensor(3), 4), ValueError, "dim"),
    (lambda: pack(_T, 4, dense=1), TypeError, "dense"),
    (lambda: pack(_T + 9, 4), ValueError, r"`codes` values must be in \[0, 15\]"),
    (lambda: pack(_T - 1, 4), ValueError, "codes"),
    (lambda: pack(torch.tensor([8]), 4, signed=True), ValueError, r"\[-8, 7\]"),
    (lambda: pack(torch.tensor([-9]), 4, signed=True), ValueError, "codes"),
    (lambda: pack(torch.tensor([16], dtype=torch.uint32), 4), ValueError, "codes"),
    (lambda: pack(torch.tensor([True]), 1, signed=True), ValueError, "codes"),
    (lambda: unpack(_P.float(), 4), TypeError, "packed"),
    (lambda: unpack(_P.long(), 4), TypeError, "packed"),
    (lambda: unpack(_P, 4, n=9), ValueError, "`n`"),
    (lambda: unpack(_P, 4, n=-1), ValueError, "`n`"),
    (lambda: unpack(_P, 4, container=torch.int16), ValueError, "container"),
    (lambda: unpack(_P, 4, dim=1), ValueError, "dim"),
    (lambda: unpack(_P, 4, dtype=torch.float32), TypeError, "dtype"),
    (lambda: unpack(torch.zeros(4, dtype=torch.uint8), 3, dense=True), ValueError, "packed"),
    (lambda: bitpack(_T), TypeError, "mask"),
    (lambda: bitpack(_T > 2, container=torch.int16), ValueError, "container"),
    (lambda: bitunpack(_P.float(), 3), TypeError, "bits"),
    (lambda: quantize(_T, 4), TypeError, "x"),
    (lambda: quantize(torch.randn(4), 1, signed=True), ValueError, "nbit"),
    (lambda: quantize(torch.randn(4), 4, group_size=0), ValueError, "group_size"),
    (lambda: quantize(torch.randn(4), 4, scale_dtype=torch.int32), TypeError, "scale_dtype"),
    (lambda: quantize(torch.randn(4), 4, container=torch.int64), ValueError, "container"),
    (lambda: quantize(torch.tensor([-6e4, 6e4]), 1), ValueError, "`x`"),
    (lambda: quantize(torch.tensor([0.0, float("nan")]), 4), ValueError, "`x`"),
    (lambda: pack_rows(torch.randn(4), 4), ValueError, "`x`"),
    (lambda: pack_rows(torch.randn(2, 4), 4, row_align=0), ValueError, "row_align"),
    (lambda: unpack_rows(_ROWS, 4, 100), ValueError, "n_codes"),
    (lambda: unpack_rows(_ROWS.float(), 4, 8), TypeError, "rows"),
    (lambda: from_fbgemm_rowwise(_ROWS, 4), TypeError, "rows"),
    (lambda: from_fbgemm_rowwise(_ROWS.view(torch.uint8), 3), ValueError, "nbit"),
    (lambda: from_fbgemm_rowwise(_ROWS.view(torch.uint8), 4, qparams_dtype=torch.float32), ValueError,
     "qparams_dtype"),
    (lambda: from_fbgemm_rowwise(_ROWS.view(torch.uint8), 4, qparams_dtype=torch.bfloat16), TypeError,
     "qparams_dtype"),
    (lambda: from_fbgemm_rowwise(_ROWS.view(torch.uint8), 4, n_codes=100), ValueError, "n_codes"),
    (lambda: from_fbgemm_tbe(_ROWS.view(torch.uint8), 1, 8), ValueError, "nbit"),
    (lambda: from_fbgemm_tbe(_ROWS.view(torch.uint8), 4, 100), ValueError, "n_codes"),
    (lambda: to_fbgemm_tbe(_ROWS, 4, 8, row_alignment=0), ValueError, "row_alignment"),
    (lambda: from_gptq(_G[3].float(), _G[4], _G[2]), TypeError, "qweight"),
    (lambda: from_gptq(_G[3], _G[4][:1], _G[2]), ValueError, "qzeros"),
    (lambda: from_gptq(_G[3], _G[4], _G[2], nbit=5), ValueError, "nbit"),
    (lambda: to_gptq(_G[3], _G[2], _G[2] * 0.3), ValueError, "shift"),
    (lambda: to_gptq(_G[3], _G[2], torch.zeros_like(_G[2])), ValueError, "shift"),
    (lambda: to_gptq(_G[3], _G[2], torch.zeros(3)), ValueError, "shift"),
    (lambda: from_awq(_G[3], _G[4], _G[2], nbit=2), ValueError, "nbit"),
    (lambda: from_awq(_G[3], _G[4], _G[2], packed_dim=2), ValueError, "packed_dim"),
    (lambda: to_awq(_P.view(1, 1), torch.ones(1, 8), -16 * torch.ones(1, 8)), ValueError, "shift"),
]


@pytest.mark.parametrize("i", range(len(ERRORS)))
def test_errors(i):
    fn, exc, msg = ERRORS[i]
    with pytest.raises(exc, match=msg):
        fn()


def test_check_false_truncates():
    assert pack(torch.tensor([17, 2]), 4, check=False, container=torch.uint8).tolist() == [0x21]


# --- torch.compile: one kernel ------------------------------------------------------------------------

_HAS_CXX = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
_KERNEL = re.compile(r"^\s*\w+ = async_compile\.(?:cpp_pybinding|cpp|triton)\(", re.M)


def _kernels(fn, *args):
    from torch._inductor.utils import run_and_get_code
    out, code = run_and_get_code(fn, *args)
    return out, len(_KERNEL.findall("\n".join(code)))


@pytest.mark.skipif(not _HAS_CXX, reason="inductor's CPU backend needs a C++ compiler")
@pytest.mark.parametrize("nbit,container,dense,dim", [
    (4, torch.int32, False, -1),
    (3, torch.uint8, True, 0),
    (2, torch.int16, False, 1),
    (5, torch.uint32, False, -1),
], ids=["u4-int32", "u3-dense-dim0", "u2-int16-dim1", "u5-uint32"])
def test_compile_one_kernel(nbit, container, dense, dim):
    torch._dynamo.reset()
    codes = _codes((6, 45, 3), nbit, False, seed=nbit)
    p_fn = torch.compile(functools.partial(pack, nbit=nbit, dim=dim, container=container, dense=dense, check=False),
                         fullgraph=True, dynamic=False)
    packed, n_pack = _kernels(p_fn, codes)
    assert torch.equal(packed, pack(codes, nbit, dim=dim, container=container, dense=dense))
    # dense 3/5/6/7 bits: groups of 8 codes into int64 words, then their low bytes (a copy)
    assert n_pack == (2 if dense and 8 % nbit else 1)
    u_fn = torch.compile(functools.partial(unpack, nbit=nbit, dim=dim, dense=dense, n=codes.shape[dim]),
                         fullgraph=True, dynamic=False)
    codes2, n_unpack = _kernels(u_fn, packed)
    assert torch.equal(codes2.long(), codes)
    assert n_unpack == (2 if dense and 8 % nbit else 1)  # dense 3/5/6/7: bytes into int64 words first


@pytest.mark.skipif(not _HAS_CXX, reason="inductor's CPU backend needs a C++ compiler")
def test_compile_checked():
    """check=True under torch.compile: a torch._assert_async (no graph break),
    RuntimeError on the CPU; inductor fuses it into the packing kernel here."""
    torch._dynamo.reset()
    fn = torch.compile(functools.partial(pack, nbit=4), fullgraph=True, dynamic=False)
    codes = _codes((64,), 4, False)
    packed, n = _kernels(fn, codes)
    assert torch.equal(packed, pack(codes, 4)) and n == 1
    with pytest.raises(RuntimeError, match="codes"):
        fn(codes + 16)


@pytest.mark.skipif(not _HAS_CXX, reason="inductor's CPU backend needs a C++ compiler")
def test_compile_symbolic_nbit():
    """nbit traced as a SymInt (dynamic=True; also automatic dynamic on the second bit
    width) is specialized: it used to fail formatting the range-check message."""
    torch._dynamo.reset()
    fp = torch.compile(pack, fullgraph=True, dynamic=True)
    codes = _codes((4, 40), 2, False)
    for nbit in (2, 3):
        assert torch.equal(fp(codes, nbit), pack(codes, nbit))
