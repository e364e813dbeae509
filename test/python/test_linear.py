"""Weight-only low-bit matmul: the GEMV and tensor-core kernels of
:mod:`triton_dequant.kernels.linear` (interpreter on CPU, compiled on a GPU) with
explicit configs, the default launch table, the public op (CPU reference path,
argument errors, torch.compile)."""
import os
import sys

import pytest
import torch

from triton_dequant import ops, reference as ref
from triton_dequant.kernels import linear as kl

from conftest import DEVICE, HAS_GPU

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import naive  # noqa: E402  (the bench's shift/mask baseline: checked here on the CPU)

C = kl.Config
CONTAINER = {(32, False): torch.int32, (32, True): torch.int32, (16, False): torch.int16, (16, True): torch.int16,
             (8, False): torch.uint8, (8, True): torch.int8}


def _problem(M, K, N, nbit, width, packed_dim, groups, signed, dtype, seed=0, x_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    per = width // nbit
    shape = (K // per, N) if packed_dim == 0 else (K, N // per)
    dt = CONTAINER[(width, signed)]
    lo, hi = (0, 1 << width) if dt == torch.uint8 else (-(1 << (width - 1)), 1 << (width - 1))
    qw = torch.randint(lo, hi, shape, generator=g, dtype=torch.int64).to(dt)
    sshape = (N,) if groups == 1 else (groups, N)
    s = torch.rand(sshape, generator=g) * 0.02 + 0.005
    mid = 0.0 if signed else (1 << (nbit - 1))
    h = -s * mid * (1 + 0.1 * torch.randn(sshape, generator=g)) + 0.01 * torch.randn(sshape, generator=g)
    x = (torch.randn(M, K, generator=g) * x_scale).to(dtype)
    return x, qw, s.to(dtype), h.to(dtype)


def _check(y, x, qw, s, h, nbit, group_size, packed_dim, signed, tol=1e-2):
    """Relative error (norm and max) against x @ W in float64, W the exact
    dequantized weight rounded once to x.dtype (reference.linear_weight)."""
    w = ref.linear_weight(qw, s, h, nbit, dtype=x.dtype, group_size=group_size, packed_dim=packed_dim,
                          signed=signed).double()
    want = x.double() @ w
    got = y.cpu().double()
    assert got.shape == want.shape and y.dtype == x.dtype
    assert torch.isfinite(got).all()
    err = ((got - want).norm() / want.norm()).item()
    err_max = ((got - want).abs().max() / want.abs().max()).item()
    assert err <= tol and err_max <= tol, (err, err_max)
    return err


def _run(M, K, N, nbit, width, packed_dim, groups, signed, dtype, cfg, unpack=None, x_scale=1.0, seed=0):
    x, qw, s, h = _problem(M, K, N, nbit, width, packed_dim, groups, signed, dtype, seed=seed, x_scale=x_scale)
    gs = K // groups
    y = kl.linear(x.to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), nbit, gs, packed_dim, signed,
                  config=cfg, unpack=unpack)
    return _check(y, x, qw, s, h, nbit, gs, packed_dim, signed)


# (M, K, N, nbit, width, packed_dim, groups, signed, dtype, config): K and N are
# not multiples of the tiles where the layout allows (packed along K, K is a
# multiple of PER; along N, N is)
GEMV_CASES = [
    # int4 in int32, packed along K: the decode layout, every scale/product mode
    (1, 200, 100, 4, 32, 0, 1, False, torch.float16, C("gemv", bk=8, bn=32, split=2)),
    (1, 256, 96, 4, 32, 0, 1, False, torch.float16, C("gemv", bk=8, bn=32, split=4, reduce=2)),
    (1, 256, 96, 4, 32, 0, 1, True, torch.float16, C("gemv", bk=16, bn=32, split=1, post=False)),
    (3, 256, 96, 4, 32, 0, 1, False, torch.float16, C("gemv", bm=4, bk=8, bn=32, split=3, dot16=False)),
    (1, 256, 100, 4, 32, 0, 4, False, torch.float16, C("gemv", bk=16, bn=32, split=2)),   # group 64 < tile 128
    (3, 512, 96, 4, 32, 0, 4, True, torch.bfloat16, C("gemv", bm=4, bk=8, bn=32, split=2)),  # group 128 = 2 tiles
    (1, 256, 96, 4, 32, 0, 1, False, torch.bfloat16, C("gemv", bk=8, bn=32, split=2, reduce=2)),
    # int8 in int32, int2 in int32 and int16, int4 in uint8
    (1, 200, 100, 8, 32, 0, 1, False, torch.float16, C("gemv", bk=8, bn=32, split=3)),
    (3, 256, 96, 8, 32, 0, 2, True, torch.bfloat16, C("gemv", bm=4, bk=8, bn=32, split=2)),
    (1, 256, 100, 2, 32, 0, 1, True, torch.float16, C("gemv", bk=4, bn=32, split=2)),
    (3, 320, 96, 2, 32, 0, 2, False, torch.float16, C("gemv", bm=4, bk=4, bn=32, split=2, post=False)),
    (1, 256, 96, 2, 16, 0, 1, False, torch.float16, C("gemv", bk=8, bn=64, split=2)),
    (1, 256, 96, 4, 8, 0, 1, False, torch.float16, C("gemv", bk=16, bn=128, split=2)),
    # packed along N
    (1, 200, 96, 4, 32, 1, 1, False, torch.float16, C("gemv", bk=16, bn=64, split=2)),
    (3, 256, 104, 4, 32, 1, 4, True, torch.bfloat16, C("gemv", bm=4, bk=16, bn=64, split=2, reduce=2)),
    (1, 256, 96, 2, 16, 1, 1, True, torch.float16, C("gemv", bk=16, bn=64, split=1, post=False)),
    (1, 199, 96, 8, 32, 1, 1, False, torch.float16, C("gemv", bk=16, bn=32, split=3)),
]


@pytest.mark.parametrize("M,K,N,nbit,width,packed_dim,groups,signed,dtype,cfg", GEMV_CASES)
def test_gemv_kernel(M, K, N, nbit, width, packed_dim, groups, signed, dtype, cfg):
    _run(M, K, N, nbit, width, packed_dim, groups, signed, dtype, cfg)


MM_CASES = [
    (16, 256, 96, 4, 32, 0, 1, False, torch.float16, C("mm", bm=16, bk=64, bn=32, split=2)),
    (33, 200, 100, 4, 32, 0, 1, True, torch.float16, C("mm", bm=16, bk=32, bn=32, split=1, post=False)),
    (16, 256, 96, 4, 32, 0, 4, False, torch.bfloat16, C("mm", bm=16, bk=32, bn=32, split=2, reduce=2)),
    (33, 256, 96, 4, 32, 0, 8, False, torch.float16, C("mm", bm=32, bk=64, bn=32, split=1)),  # group 32 < tile
    (3, 256, 100, 8, 32, 0, 2, True, torch.float16, C("mm", bm=16, bk=64, bn=32, split=3)),
    (16, 256, 96, 2, 16, 0, 1, False, torch.bfloat16, C("mm", bm=16, bk=32, bn=32, split=2)),
    (16, 256, 96, 8, 8, 0, 1, True, torch.float16, C("mm", bm=16, bk=32, bn=32, split=1)),   # 1 code / byte
    (16, 256, 96, 1, 32, 0, 1, False, torch.float16, C("mm", bm=16, bk=32, bn=32, split=2)),  # int1
    (16, 200, 96, 4, 32, 1, 1, False, torch.float16, C("mm", bm=16, bk=32, bn=32, split=2)),
    (33, 256, 104, 4, 32, 1, 4, True, torch.bfloat16, C("mm", bm=16, bk=64, bn=32, split=1, post=False)),
    (16, 256, 128, 2, 32, 1, 2, False, torch.float16, C("mm", bm=16, bk=32, bn=64, split=2, reduce=2)),
]


@pytest.mark.parametrize("M,K,N,nbit,width,packed_dim,groups,signed,dtype,cfg", MM_CASES)
def test_mm_kernel(M, K, N, nbit, width, packed_dim, groups, signed, dtype, cfg):
    _run(M, K, N, nbit, width, packed_dim, groups, signed, dtype, cfg)


@pytest.mark.parametrize("M", [1, 3, 16, 33])
@pytest.mark.parametrize("nbit,width,packed_dim,groups", [(4, 32, 0, 1), (2, 32, 0, 2), (8, 32, 1, 1)])
def test_default_config(M, nbit, width, packed_dim, groups):
    """The launch table's own choice, for every M bucket."""
    K, N = 256, 96
    cfg = kl.default_config(M, K, N, nbit, width, packed_dim, torch.float16)
    assert cfg.kernel == ("gemv" if M <= 4 else "mm")
    _run(M, K, N, nbit, width, packed_dim, groups, False, torch.float16, None, seed=M)


def test_naive_baseline_same_tiling():
    """The bench's naive-Triton baseline (shift/mask + int->float) is correct too."""
    cfg = C("gemv", bk=8, bn=32, split=2)
    _run(1, 256, 96, 4, 32, 0, 1, True, torch.float16, cfg, unpack=naive.unpack)
    _run(16, 256, 96, 4, 32, 0, 2, False, torch.float16, C("mm", bm=16, bk=64, bn=32, split=2), unpack=naive.unpack)


@pytest.mark.parametrize("nbit,width", [(4, 32), (2, 32)])
def test_gemv_fp16_large_activations(nbit, width):
    """fp16 products of raw codes and x: x is scaled by 2**-k first, so |x| near
    the fp16 limit cannot overflow the fp16 lanes."""
    cfg = C("gemv", bk=8, bn=32, split=2)
    _run(1, 256, 96, nbit, width, 0, 1, False, torch.float16, cfg, x_scale=8000.0)


@pytest.mark.parametrize("reduce", [1, 2])
def test_split_k_buffers_reset(reduce):
    """One launch per call: the last CTA of a tile resets the counters (and, with
    atomics, the fp32 accumulator), so repeated calls agree."""
    x, qw, s, h = _problem(1, 256, 96, 4, 32, 0, 1, False, torch.float16)
    args = [t.to(DEVICE) for t in (x, qw, s, h)]
    cfg = C("gemv", bk=8, bn=32, split=4, reduce=reduce)
    y1 = kl.linear(*args, 4, 256, 0, False, config=cfg)
    y2 = kl.linear(*args, 4, 256, 0, False, config=cfg)
    assert torch.equal(y1, y2)
    for key, buf in kl._BUFFERS.items():
        if key[0] in ("cnt", "acc") and buf.device.type == torch.device(DEVICE).type:
            assert not buf.any(), key


def test_leading_dims_and_empty():
    x, qw, s, h = _problem(6, 256, 96, 4, 32, 0, 1, False, torch.float16)
    x3 = x.reshape(2, 3, 256)
    y = kl.linear(x3.to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), 4, 256, 0, False)
    assert y.shape == (2, 3, 96)
    _check(y.reshape(6, 96), x, qw, s, h, 4, 256, 0, False)
    y0 = kl.linear(x[:0].to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), 4, 256, 0, False)
    assert y0.shape == (0, 96)


def test_bad_configs():
    x, qw, s, h = _problem(1, 256, 96, 4, 32, 0, 1, False, torch.float16)
    for cfg, word in [(C("gemv", bm=8), "bm"), (C("gemv", bk=12), "bk"), (C("mm", bm=8), "bm"),
                      (C("conv"), "kernel"), (C("gemv", split=0), "split")]:
        with pytest.raises(ValueError, match=word):
            kl.linear(x, qw, s, h, 4, 256, 0, False, config=cfg)


def test_config_table():
    """Shapes of the table: GEMV with 16-byte container rows for decode, one wave
    of ~4 CTAs per SM; mm with split-K for M = 16."""
    c = kl.default_config(1, 8192, 8192, 4, 32, 0, torch.float16)
    assert (c.kernel, c.bn, c.bk, c.num_warps) == ("gemv", 128, 16, 4)
    assert 3 * 132 <= (8192 // c.bn) * c.split <= 8 * 132
    c = kl.default_config(1, 8192, 8192, 2, 32, 0, torch.float16)
    assert c.bk == 8
    c = kl.default_config(16, 8192, 8192, 4, 32, 0, torch.float16)
    assert c.kernel == "mm" and c.bm == 16 and c.split > 1
    assert kl.default_config(4, 8192, 8192, 4, 32, 0, torch.bfloat16).dot16 is False
    assert kl._config.xshift(4, 8, False) == 6 and kl._config.xshift(2, 16, False) == 5


# --- the public op ------------------------------------------------------------------------

def test_op_cpu_reference():
    x, qw, s, h = _problem(5, 256, 96, 4, 32, 0, 4, True, torch.bfloat16)
    y = ops.linear(x.reshape(5, 1, 256), qw, s, h, 4, group_size=64, signed=True)
    assert y.shape == (5, 1, 96) and y.dtype == torch.bfloat16
    _check(y.reshape(5, 96), x, qw, s, h, 4, 64, 0, True)  # exact W, fp32 sums: test_cpu.py


@pytest.mark.skipif(not HAS_GPU, reason="the op runs the kernels on CUDA tensors only")
def test_op_cuda():
    x, qw, s, h = _problem(3, 256, 96, 4, 32, 0, 1, False, torch.float16)
    y = ops.linear(x.cuda(), qw.cuda(), s.cuda(), h.cuda(), 4)
    _check(y, x, qw, s, h, 4, 256, 0, False)


def test_op_errors():
    x, qw, s, h = _problem(2, 256, 96, 4, 32, 0, 1, False, torch.float16)
    with pytest.raises(ValueError, match="`x`"):
        ops.linear(x[:, :128], qw, s, h, 4)                       # wrong K
    with pytest.raises(TypeError, match="`x`"):
        ops.linear(x.to(torch.int32), qw, s, h, 4)                # non-float x
    with pytest.raises(TypeError, match="`x`"):                # fp32 x: CPU only
        ops.linear(x.float().to("meta"), qw.to("meta"), s.to("meta"), h.to("meta"), 4)
    with pytest.raises(ValueError, match="`scale`"):
        ops.linear(x, qw, s[:50], h, 4)                           # wrong scale shape
    with pytest.raises(ValueError, match="`shift`"):
        ops.linear(x, qw, s, h[None].expand(2, 96), 4)            # shift shape differs
    with pytest.raises(ValueError, match="`group_size`"):
        ops.linear(x, qw, s.expand(4, 96), h.expand(4, 96), 4, group_size=32)   # 4 x 32 != K
    with pytest.raises(ValueError, match="`group_size`"):
        ops.linear(x, qw, s.expand(64, 96), h.expand(64, 96), 4, group_size=4)  # not a multiple of PER
    with pytest.raises(TypeError, match="`qweight`"):
        ops.linear(x, qw.float(), s, h, 4)
    with pytest.raises(ValueError, match="`nbit`"):
        ops.linear(x, qw, s, h, 3)
    with pytest.raises(ValueError, match="`packed_dim`"):
        ops.linear(x, qw, s, h, 4, packed_dim=2)


def test_op_torch_compile():
    x, qw, s, h = _problem(3, 256, 96, 4, 32, 0, 2, False, torch.float16)
    fn = torch.compile(ops.linear, fullgraph=True)
    got = fn(x, qw, s, h, 4, group_size=128)
    assert torch.equal(got, ops.linear(x, qw, s, h, 4, group_size=128))


@pytest.mark.parametrize("nbit,K", [(4, 512), (2, 1024), (8, 320)])
def test_gemv_prefetch(nbit, K):
    """The register double-buffered GEMV (last prefetch masked off)."""
    gen = torch.Generator().manual_seed(nbit)
    N = 96
    per = 32 // nbit
    qw = torch.randint(-2 ** 31, 2 ** 31 - 1, (K // per, N), dtype=torch.int32, generator=gen)
    s = (torch.rand(N, generator=gen) * 0.02 + 0.005).half()
    h = (-s.float() * 3).half()
    x = torch.randn(1, K, generator=gen).half()
    cfg = kl.Config("gemv", bm=1, bk=4, bn=32, split=2, prefetch=True)
    y = kl.linear(x.to(DEVICE), qw.to(DEVICE), s.to(DEVICE), h.to(DEVICE), nbit, K, 0, False, config=cfg).cpu()
    want = ref.linear(x, qw, s, h, nbit).double()
    err = ((y.double() - want).norm() / want.norm()).item()
    assert err <= 1e-2, err
