"""Prepacked MMA weight layouts (:mod:`triton_dequant.layouts`): host round trips
(property over random shapes, tails, every nbit, both archs), the documented bit
orders, agreement with Triton's own MMA operand layouts, the in-kernel relabeling
(interpreter), GPTQ/AWQ conversion, bad arguments."""
import itertools

import pytest
import torch
import triton
import triton.language as tl

from triton_dequant import interop, layouts, packing
from triton_dequant.layouts import MmaLayout

from conftest import DEVICE

# every tile the shipped table uses, plus other shapes the layouts accept
TILES = [(128, 64, 4), (128, 64, 8), (128, 128, 4), (64, 64, 4), (256, 64, 8), (128, 32, 4)]
LAYOUTS = []
for arch, nbit, (bn, bk, w) in itertools.product(("sm90", "sm80"), (2, 4, 8), TILES):
    try:
        LAYOUTS.append(MmaLayout(arch, nbit, bn, bk, w))
    except ValueError:
        pass


def _codes(K, N, nbit, signed, gen):
    lo, hi = (-(1 << (nbit - 1)), 1 << (nbit - 1)) if signed else (0, 1 << nbit)
    return torch.randint(lo, hi, (K, N), generator=gen, dtype=torch.int64)


def test_layout_set_covers_every_nbit_and_arch():
    assert {(L.arch, L.nbit) for L in LAYOUTS} == set(itertools.product(("sm90", "sm80"), (2, 4, 8)))
    for arch, nbit in itertools.product(("sm90", "sm80"), (2, 4, 8)):
        assert layouts.default_layout(arch, nbit) in LAYOUTS


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_round_trip_random_shapes(layout):
    """prepack -> unprepack gives the codes back, for random K, N with tails (not
    multiples of the tile), signed and unsigned; the padding codes are 0."""
    gen = torch.Generator().manual_seed(hash(layout.name) % 2 ** 31)
    for _ in range(3):
        K = int(torch.randint(1, 3 * layout.bk, (1,), generator=gen))
        N = int(torch.randint(1, 3 * layout.bn, (1,), generator=gen))
        signed = bool(torch.randint(0, 2, (1,), generator=gen))
        codes = _codes(K, N, layout.nbit, signed, gen)
        data = layout.prepack_codes(codes)
        assert data.dtype == torch.int32 and tuple(data.shape) == layout.shape(K, N)
        back = layout.unprepack_codes(data, K, N, signed=signed)
        assert back.dtype == (torch.int8 if signed else torch.uint8)
        assert torch.equal(back.to(torch.int64), codes)
        # every code of the padded tiles outside [K, N] is 0
        nt, kt = layout.tiles(K, N)
        full = layout.unprepack_codes(data, kt * layout.bk, nt * layout.bn, signed=signed)
        assert torch.equal(full[:K, :N], back)
        assert int(full.to(torch.int64).abs().sum()) == int(back.to(torch.int64).abs().sum())


@pytest.mark.parametrize("nbit,packed_dim", [(4, 0), (8, 0), (2, 0), (4, 1)])
def test_round_trip_plain_layout(nbit, packed_dim):
    """From the plain int32 layout of ops.linear (and back), both packed dims."""
    gen = torch.Generator().manual_seed(nbit)
    per = 32 // nbit
    K, N = (3 * per * 9, 136) if packed_dim == 0 else (200, per * 17)
    codes = _codes(K, N, nbit, False, gen)
    plain = packing.pack(codes, nbit, dim=packed_dim, container=torch.int32)
    for arch in ("sm90", "sm80"):
        L = layouts.default_layout(arch, nbit)
        data = layouts.prepack(plain, nbit, L, packed_dim=packed_dim)
        assert torch.equal(layouts.unprepack(data, L, K, N, packed_dim=packed_dim), plain)
        assert torch.equal(layouts.plain_codes(data, L, K, N).to(torch.int64), codes)


def test_bit_orders_documented():
    """The module docstring's examples (int4, 128 x 64, 4 warps)."""
    L = MmaLayout("sm90", 4)
    assert [f"{a}{b}" for a, b in L.code_bits] == \
        "k0 k3 k4 k5 n3 k1 k2 n0 n1 n2 n4 n5 n6".split()
    L = MmaLayout("sm80", 4)
    assert [f"{a}{b}" for a, b in L.code_bits] == \
        "k0 k1 k4 k5 n3 k2 k3 n0 n1 n2 n4 n5 n6".split()
    assert MmaLayout("sm90", 4).span_k == 32 and MmaLayout("sm90", 8).span_k == 16
    assert MmaLayout("sm80", 8).span_k == 4 and layouts.default_layout("sm90", 2).span_k == 64


@pytest.mark.parametrize("layout", LAYOUTS, ids=str)
def test_structure(layout):
    """f is a bijection onto the tile; a word holds codes of one row n, its codes
    (2i, 2i+1) are a K pair; the lane/warp bits are the operand layout's."""
    n, k = layout.offsets()
    assert torch.equal(torch.sort(n * layout.bk + k).values, torch.arange(layout.bn * layout.bk))
    per = layout.per
    assert bool((n.reshape(-1, per) == n.reshape(-1, per)[:, :1]).all())
    kp = k.reshape(-1, 2)
    assert bool((kp[:, 1] == kp[:, 0] + 1).all())
    lp = per.bit_length() - 1
    lv = layout.vec.bit_length() - 1
    ob = layout.operand_bits
    cb = layout.code_bits
    assert list(cb[lp + lv:lp + lv + 5]) == ob["lane"]
    assert list(cb[lp + lv + 5:lp + lv + 5 + len(ob["warp"])]) == ob["warp"]
    assert sorted(cb[:lp + lv] + cb[lp + lv + 5 + len(ob["warp"]):]) == sorted(ob["reg"])
    assert MmaLayout.from_name(layout.name) == layout


def _triton_operand(layout):
    """Triton 3.6's linear layout of the A operand (gluon's to_linear_layout)."""
    import triton.experimental.gluon.language as gl
    from triton._C.libtriton import gluon_ir, ir
    ctx = ir.context()
    ir.load_dialects(ctx)
    b = gluon_ir.GluonOpBuilder(ctx)
    if layout.arch == "sm90":
        mma = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[layout.num_warps, 1],
                                        instr_shape=[16, 16, 16])
    else:
        mma = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[layout.num_warps, 1], instr_shape=[16, 8])
    dot = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=layout.kwidth)
    return b.to_linear_layout(dot._to_ir(b), [layout.bn, layout.bk])


def _as_bits(bases):
    out = []
    for n, k in bases:
        assert (n == 0) != (k == 0) and (n | k) & ((n | k) - 1) == 0, (n, k)
        out.append(("n", n.bit_length() - 1) if n else ("k", k.bit_length() - 1))
    return out


@pytest.mark.parametrize("layout", [L for L in LAYOUTS if L.num_warps == 4 or L.bn >= 128], ids=str)
def test_operand_layout_matches_triton(layout):
    """Our derivation of the MMA operand layout (from the PTX fragments) is the one
    Triton 3.6 builds: same lane and warp bases in order, same register bases."""
    ll = _triton_operand(layout)
    ob = layout.operand_bits
    assert _as_bits(ll.lane_bases) == ob["lane"]
    assert _as_bits(ll.warp_bases) == ob["warp"]
    assert _as_bits(ll.reg_bases) == ob["reg"]


def test_compatible_warps():
    for arch in ("sm90", "sm80"):
        for nbit in (2, 4, 8):
            assert layouts.default_layout(arch, nbit).compatible_warps() == (4, 8)
    assert MmaLayout("sm90", 2, 128, 64, 4).compatible_warps() == (4,)  # 4 vs 2 words per thread
    assert MmaLayout("sm90", 4, 64, 64, 4).compatible_warps() == (4,)   # 8 warps need bn >= 128


@triton.jit
def _relabel_kernel(w_ptr, y_ptr, NBIT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LAYOUT: tl.constexpr):
    """One prepacked tile -> its logical [BN, BK] codes (the kernel's load, unpack, unshuffle)."""
    NW: tl.constexpr = BN * BK * NBIT // 32
    w = tl.load(w_ptr + tl.arange(0, NW))
    q = tl.dequantize(w[:, None], 1.0, 0.0, NBIT, tl.float32, axis=1)
    q = layouts.unshuffle(q, BN, BK, LAYOUT)
    tl.store(y_ptr + tl.arange(0, BN)[:, None] * BK + tl.arange(0, BK)[None, :], q)


@pytest.mark.parametrize("layout", [MmaLayout("sm90", 4), MmaLayout("sm80", 8), layouts.default_layout("sm90", 2),
                                    MmaLayout("sm80", 4, 64, 32, 4)], ids=str)
def test_unshuffle_in_kernel(layout):
    """The in-kernel relabeling (reshape / permute / reshape, word offsets) inverts the host prepack."""
    gen = torch.Generator().manual_seed(1)
    codes = _codes(layout.bk, layout.bn, layout.nbit, False, gen)
    data = layout.prepack_codes(codes).to(DEVICE)
    y = torch.empty(layout.bn, layout.bk, dtype=torch.float32, device=DEVICE)
    _relabel_kernel[(1,)](data, y, NBIT=layout.nbit, BN=layout.bn, BK=layout.bk, LAYOUT=layout.name)
    assert torch.equal(y.cpu(), codes.t().float())


@triton.jit
def _offsets_kernel(n_ptr, k_ptr, NW: tl.constexpr, LAYOUT: tl.constexpr):
    i = tl.arange(0, NW)
    n, k = layouts.word_offsets(i, LAYOUT)
    tl.store(n_ptr + i, n)
    tl.store(k_ptr + i, k)


@pytest.mark.parametrize("layout", [MmaLayout("sm90", 4), MmaLayout("sm80", 2, 128, 128, 8)], ids=str)
def test_word_offsets_in_kernel(layout):
    nw = layout.words
    n = torch.empty(nw, dtype=torch.int32, device=DEVICE)
    k = torch.empty(nw, dtype=torch.int32, device=DEVICE)
    _offsets_kernel[(1,)](n, k, NW=nw, LAYOUT=layout.name)
    wn, wk = layout.offsets()
    assert torch.equal(n.cpu().long(), wn[::layout.per]) and torch.equal(k.cpu().long(), wk[::layout.per])


def test_from_gptq_and_awq():
    gen = torch.Generator().manual_seed(3)
    K, N, G = 256, 64, 2
    codes = _codes(K, N, 4, False, gen)
    zero = torch.randint(1, 16, (G, N), generator=gen)
    scales = (torch.rand(G, N, generator=gen) + 0.5).half()
    qweight, qzeros, sc = interop.to_gptq(packing.pack(codes, 4, dim=0), scales,
                                          (-(scales.double() * zero)).half(), nbit=4)
    L = layouts.default_layout("sm90", 4)
    data, s, h = layouts.from_gptq(qweight, qzeros, sc, L)
    assert torch.equal(layouts.plain_codes(data, L, K, N).long(), codes)
    assert torch.equal(s, sc) and torch.equal(h, (-(scales.double() * zero)).half())
    aq, az, asc = interop.to_awq(packing.pack(codes, 4, dim=1), scales, h, nbit=4)
    data2, s2, h2 = layouts.from_awq(aq, az, asc, L)
    assert torch.equal(data2, data) and torch.equal(h2, h)


def test_errors():
    with pytest.raises(ValueError, match="arch"):
        MmaLayout("sm70", 4)
    with pytest.raises(ValueError, match="nbit"):
        MmaLayout("sm90", 3)
    with pytest.raises(ValueError, match="bn"):
        MmaLayout("sm90", 4, 96)
    with pytest.raises(ValueError, match="bn"):
        MmaLayout("sm90", 4, 64, 64, 8)
    with pytest.raises(ValueError, match="bk"):
        MmaLayout("sm80", 4, 128, 16)
    with pytest.raises(ValueError, match="span rows"):
        MmaLayout("sm90", 2, 128, 32)
    with pytest.raises(ValueError, match="layout name"):
        MmaLayout.from_name("sm90_4b")
    with pytest.raises(ValueError, match="arch"):
        layouts.mma_layout(75, 4)
    assert layouts.mma_layout((9, 0), 4) == MmaLayout("sm90", 4)
    assert layouts.mma_layout(86, 8).arch == "sm80"
    L = MmaLayout("sm90", 4)
    with pytest.raises(TypeError, match="`qweight`"):
        L.check_data(torch.zeros(1, 1, L.words, dtype=torch.int64), 64, 128)
    with pytest.raises(ValueError, match=r"`qweight`.*\[2, 1, 1024\]"):
        L.check_data(torch.zeros(1, 1, L.words, dtype=torch.int32), 64, 129)
    with pytest.raises(ValueError, match="group_size"):
        L.check_group_size(96)   # neither a multiple nor a divisor of bk = 64
    L.check_group_size(32)
    L.check_group_size(192)
    with pytest.raises(ValueError, match="group_size"):
        MmaLayout("sm90", 4).check_group_size(8)  # half a word spans 16 values of K
    with pytest.raises(ValueError, match="nbit"):
        layouts.prepack(torch.zeros(8, 128, dtype=torch.int32), 8, L)
    with pytest.raises(ValueError, match="multiple of 8"):
        layouts.unprepack(L.prepack_codes(torch.zeros(60, 128, dtype=torch.int64)), L, 60, 128)
