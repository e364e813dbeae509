"""The tensor-core kernel on prepacked weights (:mod:`triton_dequant.kernels.linear._mma_prepacked`)
against the exact reference (``reference.linear_weight`` + float64 matmul, relative
error <= 1e-2), in the interpreter on CPU (compiled on a GPU): int4 unsigned with
shift and signed, int8, int2; fp16 and bf16; per channel (after the loop and inside
the asm) and per group (32, 64, 128 and a multiple of the K tile, half words for
int2 groups of 32); odd N, K not a multiple of the tile (nor of the codes per
word), M = 1 .. 70; split-K (partials and atomics); bias; both archs' layouts;
the public op with ``layout=`` and the "dequant" route. (64-bit row offsets are
checked on the compiled TTIR by ``test/lit/linear.py`` and ``linear_mma.py``.)"""
import os
import sys

import pytest
import torch

from triton_dequant import layouts, ops, reference as ref
from triton_dequant.kernels import linear as kl
from triton_dequant.layouts import MmaLayout

from conftest import DEVICE

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import naive  # noqa: E402  (the bench's shift/mask baseline)

C = kl.Config
F16, BF16 = torch.float16, torch.bfloat16


def _problem(M, K, N, nbit, groups, signed, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-(1 << (nbit - 1)), 1 << (nbit - 1)) if signed else (0, 1 << nbit)
    codes = torch.randint(lo, hi, (K, N), generator=g)
    sshape = (N,) if groups == 1 else (groups, N)
    s = torch.rand(sshape, generator=g) * 0.02 + 0.005
    mid = 0.0 if signed else (1 << (nbit - 1))
    h = -s * mid * (1 + 0.1 * torch.randn(sshape, generator=g)) + 0.01 * torch.randn(sshape, generator=g)
    if signed:
        h = torch.zeros_like(s)  # symmetric
    x = torch.randn(M, K, generator=g).to(dtype)
    return x, codes, s.to(dtype), h.to(dtype)


def _want(x, codes, s, h, gs, signed, bias=None):
    q8 = codes.to(torch.int8 if signed else torch.uint8)  # one code per 8-bit container
    w = ref.linear_weight(q8, s, h, 8, dtype=x.dtype, group_size=gs, signed=signed).double()
    y = x.double() @ w
    return y if bias is None else y + bias.double()


def _check(y, want, dtype, tol=1e-2):
    got = y.cpu().double()
    assert y.dtype == dtype and got.shape == want.shape and torch.isfinite(got).all()
    err = ((got - want).norm() / want.norm()).item()
    err_max = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= tol and err_max <= tol, (err, err_max)


def _run(M, K, N, nbit, groups, signed, dtype, layout, cfg=None, bias=False, unpack=None, seed=0):
    x, codes, s, h = _problem(M, K, N, nbit, groups, signed, dtype, seed)
    gs = K // groups
    data = layout.prepack_codes(codes)
    b = (torch.randn(N, generator=torch.Generator().manual_seed(7)) * 0.5).to(dtype) if bias else None
    y = kl.linear(x.to(DEVICE), data.to(DEVICE), s.to(DEVICE), h.to(DEVICE), nbit, gs, 0, signed, config=cfg,
                  unpack=unpack, layout=layout, bias=None if b is None else b.to(DEVICE))
    _check(y, _want(x, codes, s, h, gs, signed, b), dtype)
    return y


L90 = {nb: layouts.default_layout("sm90", nb) for nb in (2, 4, 8)}
L80 = {nb: layouts.default_layout("sm80", nb) for nb in (2, 4, 8)}
P = lambda **kw: C("prepacked", **kw)  # noqa: E731

# (M, K, N, nbit, groups, signed, dtype, layout, config, bias): a covering set, not the product
CASES = [
    # int4 unsigned with shift, per channel after the loop: decode M, K and N tails (K not a multiple of 8)
    (1, 200, 100, 4, 1, False, F16, L90[4], None, False),
    (3, 100, 136, 4, 1, False, F16, L80[4], P(bm=16, split=2), True),
    # signed symmetric, per channel inside the asm, split-K with fp32 atomics
    (5, 256, 136, 4, 1, True, F16, L90[4], P(bm=16, split=2, post=False, reduce=2), False),
    # per group: 64 = the K tile (bf16), 32 < the tile (odd N, atomics), 128 = 2 tiles (bias, 2 m-tiles), 192
    (17, 256, 128, 4, 4, False, BF16, L90[4], None, False),
    (16, 256, 130, 4, 8, False, F16, L80[4], P(bm=16, split=2, reduce=2), False),
    (33, 384, 128, 4, 3, False, F16, L90[4], P(bm=32, split=3), True),
    (16, 384, 96, 4, 2, True, BF16, L80[4], P(bm=16, split=1), False),
    # int8: per group 64 signed bf16, per channel inside the asm
    (16, 256, 128, 8, 4, True, BF16, L80[8], None, False),
    (5, 512, 96, 8, 1, False, F16, L90[8], P(bm=16, split=2, post=False), False),
    # int2: groups of 32 (half words), per channel signed bf16
    (16, 512, 128, 2, 16, False, F16, L90[2], P(bm=16, split=2), False),
    (16, 256, 200, 2, 1, True, BF16, L80[2], None, True),
    # 8-warp kernel on the 4-warp bytes, bm = 64 with 2 m-tiles; other tiles
    (70, 256, 256, 4, 2, False, F16, L90[4], P(bm=64, num_warps=8, split=2), False),
    (16, 320, 64, 4, 5, False, F16, MmaLayout("sm90", 4, 64, 64, 4), P(bm=16, split=2), False),
    (16, 256, 128, 8, 1, False, F16, MmaLayout("sm90", 8, 128, 128, 8), P(bm=16, num_warps=8), False),
]


@pytest.mark.parametrize("M,K,N,nbit,groups,signed,dtype,layout,cfg,bias", CASES)
def test_prepacked_kernel(M, K, N, nbit, groups, signed, dtype, layout, cfg, bias):
    _run(M, K, N, nbit, groups, signed, dtype, layout, cfg, bias)


def test_prepacked_naive_twin():
    """The bench's shift/mask baseline runs the same kernel on the same bytes."""
    _run(16, 256, 128, 4, 2, False, F16, L90[4], P(bm=16, split=2), unpack=naive.unpack)
    _run(16, 512, 128, 2, 16, False, F16, L90[2], P(bm=16, split=1, post=False), unpack=naive.unpack)


def test_prepacked_repeated_calls_agree():
    """Split-K partials summed in a fixed order: bit-identical results call after call."""
    x, codes, s, h = _problem(16, 256, 128, 4, 1, False, F16)
    data = L90[4].prepack_codes(codes)
    args = [t.to(DEVICE) for t in (x, data, s, h)]
    cfg = P(bm=16, split=4)
    y1 = kl.linear(args[0], args[1], args[2], args[3], 4, 256, 0, False, config=cfg, layout=L90[4])
    y2 = kl.linear(args[0], args[1], args[2], args[3], 4, 256, 0, False, config=cfg, layout=L90[4])
    assert torch.equal(y1, y2)


def test_prepacked_config_table():
    L = L90[4]
    assert kl.prepacked_config(1, 8192, 8192, L, F16).bm == 16
    c = kl.prepacked_config(16, 8192, 8192, L, F16)
    assert (c.kernel, c.bm, c.bn, c.bk, c.num_warps) == ("prepacked", 16, 128, 64, 4) and c.split > 1
    c = kl.prepacked_config(128, 8192, 8192, L, F16)
    assert (c.bm, c.num_warps) == (128, 8)
    assert kl.prepacked_config(100, 8192, 8192, L80[4], F16).bm == 32  # sm80: bm <= 32
    assert kl.prepacked_config(256, 8192, 28672, L, F16).split == 1
    # no bm 128 / 8 warps without split-K (NaN on the H200 at M=128, N=28672)
    assert (lambda c: (c.bm, c.num_warps, c.split))(kl.prepacked_config(128, 8192, 28672, L, F16)) == (64, 4, 1)
    with pytest.raises(ValueError, match="layout"):
        kl.linear(torch.zeros(2, 64, dtype=F16), torch.zeros(1, 1, 1024, dtype=torch.int32),
                  torch.ones(128, dtype=F16), torch.zeros(128, dtype=F16), 4, 64, 0, False,
                  config=C("mm", bm=16), layout=L)


@pytest.mark.parametrize("M,groups,packed_dim,nbit", [(300, 2, 0, 4), (260, 1, 1, 8)])
def test_dequant_route(M, groups, packed_dim, nbit):
    """Plain weights, large M: dequantize + torch.matmul (the launch table's choice from DEQUANT_MIN_M)."""
    from triton_dequant import packing
    K, N = 128, 96
    x, codes, s, h = _problem(M, K, N, nbit, groups, False, F16)
    qw = packing.pack(codes, nbit, dim=packed_dim, container=torch.int32)
    assert kl.default_config(M, K, N, nbit, 32, packed_dim, F16).kernel == "dequant"
    b = torch.randn(N).to(F16)
    y = kl.linear(x.to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), nbit, K // groups, packed_dim, False,
                  bias=b.to(DEVICE))
    _check(y, _want(x, codes, s, h, K // groups, False, b), F16)


@pytest.mark.parametrize("kernel", ["gemv", "mm"])
def test_bias_plain_kernels(kernel):
    from triton_dequant import packing
    M = 3 if kernel == "gemv" else 16
    x, codes, s, h = _problem(M, 256, 96, 4, 2, False, F16)
    qw = packing.pack(codes, 4, dim=0, container=torch.int32)
    b = torch.randn(96).to(F16)
    cfg = C("gemv", bm=4, bk=8, bn=32, split=2) if kernel == "gemv" else C("mm", bm=16, bk=64, bn=32, split=2)
    y = kl.linear(x.to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), 4, 128, 0, False, config=cfg,
                  bias=b.to(DEVICE))
    _check(y, _want(x, codes, s, h, 128, False, b), F16)


# --- the public op -----------------------------------------------------------------------------

def test_op_prepacked():
    """ops.linear(..., layout=...): N from scale, K from x (CUDA: the kernel; CPU: exact W, fp32 sums)."""
    x, codes, s, h = _problem(5, 200, 100, 4, 1, True, BF16)
    L = L90[4]
    data = L.prepack_codes(codes)
    b = torch.randn(100).to(BF16)
    for lay in (L, L.name):
        y = ops.linear(x.reshape(5, 1, 200).to(DEVICE), data.to(DEVICE), s.to(DEVICE), h.to(DEVICE), 4,
                       signed=True, layout=lay, bias=b.to(DEVICE))
        assert y.shape == (5, 1, 100)
        _check(y.reshape(5, 100), _want(x, codes, s, h, 200, True, b), BF16)


def test_op_prepacked_torch_compile():
    x, codes, s, h = _problem(3, 128, 64, 4, 2, False, F16)
    L = MmaLayout("sm90", 4, 64, 64, 4)
    data = L.prepack_codes(codes)
    fn = torch.compile(lambda *a: ops.linear(*a, 4, group_size=64, layout=L.name), fullgraph=True)
    got = fn(x, data, s, h)
    assert torch.equal(got, ops.linear(x, data, s, h, 4, group_size=64, layout=L))


def test_op_prepacked_errors():
    x, codes, s, h = _problem(2, 128, 128, 4, 2, False, F16)
    L = L90[4]
    data = L.prepack_codes(codes)
    with pytest.raises(ValueError, match="`qweight`"):
        ops.linear(x, data[:, :1], s, h, 4, layout=L)                    # shape for another K
    with pytest.raises(ValueError, match="`qweight`"):
        ops.linear(x[:, :64], data, s, h, 4, layout=L)                   # K from x disagrees
    with pytest.raises(TypeError, match="`qweight`"):
        ops.linear(x, data.to(torch.int64), s, h, 4, layout=L)
    with pytest.raises(ValueError, match="`nbit`"):
        ops.linear(x, data, s, h, 8, layout=L)
    with pytest.raises(ValueError, match="`layout`"):
        ops.linear(x, data, s, h, 4, layout="mma_sm91")
    with pytest.raises(TypeError, match="`layout`"):
        ops.linear(x, data, s, h, 4, layout=3)
    with pytest.raises(ValueError, match="`packed_dim`"):
        ops.linear(x, data, s, h, 4, packed_dim=1, layout=L)
    with pytest.raises(ValueError, match="`group_size`"):                 # 128 = 16 x 8: 8 < half a word's span
        ops.linear(x, data, s.repeat(8, 1), h.repeat(8, 1), 4, layout=L)
    with pytest.raises(ValueError, match="`bias`"):
        ops.linear(x, data, s, h, 4, layout=L, bias=torch.zeros(64, dtype=F16))
    with pytest.raises(ValueError, match="`shift`"):
        ops.linear(x, data, s[:, :64], h, 4, layout=L)
    with pytest.raises(ValueError, match="`qweight`"):                    # N = 200 from scale: 2 row tiles
        ops.linear(x, data, s.repeat(1, 2)[:, :200], h.repeat(1, 2)[:, :200], 4, layout=L)
