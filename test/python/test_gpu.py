"""GPU-only regressions of fixed bugs (skipped without a GPU; CPU CI covers the same
plans by compiling them, see test_plans.py / test_launch_key.py):

* the launch cache must not reuse a kernel compiled for other dtypes: ``linear``
  called repeatedly with the same shapes but different scale/shift and ``x`` dtypes,
  on every route (GEMV, plain tensor-core kernel, prepacked kernel);
* ``ops.dequantize`` past 2**31 outputs (64-bit offsets): exact at the tail, every
  element written;
* ``embedding_bag`` with int64 offsets and indices agrees with the CPU path.
"""
import pytest
import torch

from triton_dequant import layouts, ops, packing, reference as ref

from conftest import HAS_GPU

pytestmark = pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")


def _rel(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("M", [1, 3, 16, 64])
@pytest.mark.parametrize("prepacked", [False, True])
def test_linear_dtype_changes_reach_new_kernels(M, prepacked):
    """Same shapes, each call with other dtypes: every result matches the reference."""
    K, N, g = 512, 384, 128
    gen = torch.Generator().manual_seed(M)
    codes = torch.randint(0, 16, (K, N), generator=gen, dtype=torch.int32)
    qw = packing.pack(codes, 4, dim=0)
    s = torch.rand(K // g, N, generator=gen) * 0.02 + 0.005
    h = -8 * s + 0.01 * torch.randn(K // g, N, generator=gen)
    lay = layouts.default_layout(torch.cuda.get_device_capability(), 4) if prepacked else None
    w_dev = (layouts.prepack(qw, 4, lay) if prepacked else qw).cuda()
    for x_dtype, s_dtype in [(torch.float16, torch.float16), (torch.float16, torch.float32),
                             (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16),
                             (torch.float16, torch.bfloat16), (torch.float16, torch.float16)]:
        x = torch.randn(M, K, generator=gen).to(x_dtype)
        sc, sh = s.to(s_dtype), h.to(s_dtype)
        w = ref.linear_weight(qw, sc, sh, 4, dtype=x_dtype, group_size=g).double()
        want = x.double() @ w
        y = ops.linear(x.cuda(), w_dev, sc.cuda(), sh.cuda(), 4, g, layout=lay)
        assert y.dtype == x_dtype
        assert _rel(y.cpu(), want) < 1e-2, (x_dtype, s_dtype)


def test_dequantize_past_2_31_outputs():
    """2**28 + 256 int32 words of int4 codes: 2**31 + 2048 fp16 outputs, all written, exact."""
    n = (1 << 28) + 256
    words = torch.randint(-(1 << 31), 1 << 31, (n,), dtype=torch.int64, device="cuda").to(torch.int32)
    poison = torch.full((n * 8,), float("nan"), dtype=torch.float16, device="cuda")
    del poison  # the caching allocator hands this NaN-filled block to the op's output
    y = ops.dequantize(words, 0.5, -3.0, 4)  # q * 0.5 - 3 is exact in fp16
    assert y.shape == (n * 8,)
    step = 1 << 26
    for lo in range(0, n, step):
        w = words[lo:lo + step]
        q = torch.stack([(w >> (4 * j)) & 15 for j in range(8)], dim=1).reshape(-1)
        assert torch.equal(y[lo * 8:(lo + w.numel()) * 8], (q.half() * 0.5 - 3.0)), lo


@pytest.mark.parametrize("idx_dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_embedding_bag_matches_cpu(idx_dtype, include_last_offset):
    gen = torch.Generator().manual_seed(1)
    T, D, nbit = 1000, 64, 4
    x = torch.randn(T, D, generator=gen)
    rows = packing.pack_rows(x, nbit)
    lens = torch.tensor([0, 3, 17, 1, 0, 40, 2])
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    offsets = (starts if include_last_offset else starts[:-1]).to(idx_dtype)
    indices = torch.randint(0, T, (int(lens.sum()),), generator=gen).to(idx_dtype)
    for mode in ("sum", "mean"):
        want = ops.embedding_bag(rows, indices, offsets, nbit, mode=mode, include_last_offset=include_last_offset)
        got = ops.embedding_bag(rows.cuda(), indices.cuda(), offsets.cuda(), nbit, mode=mode,
                                include_last_offset=include_last_offset)
        torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("M,K,N", [(128, 8192, 28672), (128, 8192, 8192), (256, 1024, 28672)])
@pytest.mark.parametrize("reduce", [None, 2])
def test_prepacked_large_tiles_and_split_k_atomics(M, K, N, reduce):
    """The prepacked kernel at the shapes where the H200 gave NaN (bm 128 on 8 warps
    without split-K, now planned as bm 64) and the split-K fp32 atomics that summed
    before every slice's red.add had landed (fixed by a per-thread fence): finite and
    right against the float64 reference, every output row."""
    from triton_dequant.kernels import linear as kl
    gen = torch.Generator().manual_seed(M + N)
    codes = torch.randint(0, 16, (K, N), generator=gen, dtype=torch.int32)
    qw = packing.pack(codes, 4, dim=0)
    s = (torch.rand(K // 128, N, generator=gen) * 0.02 + 0.005).half()
    h = (-8 * s.float() + 0.01 * torch.randn(K // 128, N, generator=gen)).half()
    lay = layouts.default_layout(torch.cuda.get_device_capability(), 4)
    x = torch.randn(M, K, generator=gen).half()
    want = x.double() @ ref.linear_weight(qw, s, h, 4, dtype=torch.float16, group_size=128).double()
    cfg = None
    if reduce is not None:
        d = kl.prepacked_config(M, K, N, lay, torch.float16)
        cfg = kl.Config("prepacked", bm=min(d.bm, 64), bk=lay.bk, bn=lay.bn, split=4, num_warps=lay.num_warps,
                        num_stages=d.num_stages, reduce=reduce)
    y = kl.linear(x.cuda(), layouts.prepack(qw, 4, lay).cuda(), s.cuda(), h.cuda(), 4, 128, 0, False,
                  config=cfg, layout=lay).cpu()
    assert torch.isfinite(y).all()
    err = (y.double() - want).norm(dim=1) / want.norm(dim=1)
    assert err.max().item() < 1e-2
