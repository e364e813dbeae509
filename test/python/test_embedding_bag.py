"""n-bit embedding bag: the Triton kernel (interpreter on CPU, compiled on GPU) against
the float64 reference, the public op (CPU: the reference itself), its argument errors,
fake-tensor registration and torch.compile.

Tolerance: the kernel rounds each looked-up row to fp16 exactly (as the reference
does), then multiplies and sums in fp32. Against the exact float64 result, an fp32
output may be off by ``1e-5 * sum(|terms|)`` (a bag of n terms accumulates at most
about ``n * 2**-24`` relative to that sum; n <= 40 here), an fp16 output by that
plus one fp16 ulp of the result (the final rounding after the fp32 sum)."""
import itertools

import pytest
import torch

import triton_dequant  # noqa: F401
from triton_dequant import ops, reference as ref
from triton_dequant.kernels import embedding_bag as keb

from conftest import DEVICE, HAS_GPU

CONTAINER = {32: torch.int32, 16: torch.int16, 8: torch.uint8}
HEADER = {32: 1, 16: 2, 8: 4}
PAIRS = [(w, n) for w in (32, 16, 8) for n in (8, 4, 2, 1)]
MODES = ["sum", "mean", "wsum"]  # wsum: sum with per_sample_weights
BLOCK_L = 4
# bag lengths: empty (first, middle, last), one lookup, < L, == L, > 2L
LENGTHS = [0, 1, 9, 0, 2, BLOCK_L, 0]


def make_rows(width: int, n_data: int, T: int, gen: torch.Generator, pad_to: int = 1) -> torch.Tensor:
    """[T, E] row-fused table: random fp16 scale/shift header, random data; E is
    header + n_data elements rounded up to a multiple of ``pad_to``."""
    dtype = CONTAINER[width]
    header = HEADER[width]
    E = -(-(header + n_data) // pad_to) * pad_to
    bits = torch.randint(0, 1 << width, (T, E), generator=gen, dtype=torch.int64)
    bits = torch.where(bits >= 1 << (width - 1), bits - (1 << width), bits) if dtype.is_signed else bits
    rows = bits.to(dtype)
    sh = torch.randn(T, 2, generator=gen).half()  # valid fp16 values of both signs
    rows[:, :header] = sh.view(torch.int32).view(dtype).reshape(T, header) if width < 32 \
        else sh.view(torch.int32)
    return rows


def make_bags(lengths, T: int, gen: torch.Generator, include_last_offset: bool, idx_dtype=torch.int64):
    lens = torch.tensor(lengths)
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    offsets = starts if include_last_offset else starts[:-1]
    indices = torch.randint(0, T, (int(lens.sum()),), generator=gen).to(idx_dtype)
    return indices, offsets.to(idx_dtype)


def check(got, rows, indices, offsets, nbit, mode, weights, dim, dtype, include_last_offset, signed):
    """``got`` against the exact result with the tolerance of the module docstring."""
    exact = ref.embedding_bag(rows, indices, offsets, nbit, mode=mode, per_sample_weights=weights, n_codes=dim,
                              dtype=torch.float64, include_last_offset=include_last_offset, signed=signed)
    # sum(|terms|) per bag and column: the same reference on |values| and |weights|
    table = ref.dequantize_rows(rows, nbit, torch.float16, n_codes=dim, signed=signed).double().abs()
    offs = offsets.tolist() + ([] if include_last_offset else [indices.numel()])
    absterm = torch.zeros_like(exact)
    for b in range(len(offs) - 1):
        lo, hi = offs[b], offs[b + 1]
        if hi > lo:
            v = table[indices[lo:hi].long()]
            if weights is not None:
                v = v * weights[lo:hi, None].double().abs()
            absterm[b] = v.sum(0) / ((hi - lo) if mode == "mean" else 1)
    assert got.dtype == dtype and got.shape == exact.shape
    g = got.cpu().double()
    tol = 1e-5 * absterm
    if dtype == torch.float16:
        e = torch.floor(torch.log2(exact.abs().clamp(min=2.0 ** -14)))
        tol = tol + torch.exp2(e - 10)
    bad = (g - exact).abs() > tol
    assert not bad.any(), (f"{int(bad.sum())} of {bad.numel()} outputs off; first at "
                           f"{bad.nonzero()[0].tolist()}: got {g[bad][0].item()} want {exact[bad][0].item()}")
    empty = [b for b in range(len(offs) - 1) if offs[b + 1] <= offs[b]]
    assert (g[empty] == 0).all()


CASES = [(w, n, mode, dtype, signed) for (w, n), mode, dtype, signed in
         itertools.product(PAIRS, MODES, (torch.float32, torch.float16), (False, True))]


@pytest.mark.parametrize("width,nbit,mode,dtype,signed", CASES,
                         ids=[f"i{w}-b{n}-{m}-{str(d)[6:]}-{'s' if s else 'u'}" for w, n, m, d, s in CASES])
def test_kernel(width, nbit, mode, dtype, signed):
    k = CASES.index((width, nbit, mode, dtype, signed))
    gen = torch.Generator().manual_seed(k)
    per = width // nbit
    # alternate the two tile origins: rows padded to 16 bytes, loaded from the row
    # start (header in the tile) / unpadded rows, loaded from the first data element
    head_in = k % 2 == 0
    n_data = max(2, 24 // per)  # 3 to 24 data elements, capacity 24..96 codes
    rows = make_rows(width, n_data, 50, gen, pad_to=16 * 8 // width if head_in else 1)
    dim = n_data * per - 3  # not a multiple of PER nor of the tile
    include_last = k % 3 == 0
    indices, offsets = make_bags(LENGTHS, rows.shape[0], gen, include_last, (torch.int64, torch.int32)[k % 2])
    weights = torch.randn(indices.shape, generator=gen) if mode == "wsum" else None
    block_w = max(1, 16 // per)  # several column blocks per bag
    got = keb.embedding_bag(rows.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), nbit,
                            "sum" if mode == "wsum" else mode, None if weights is None else weights.to(DEVICE),
                            dim, dtype, include_last, signed, block_l=BLOCK_L, block_w=block_w, head_in=head_in)
    check(got, rows, indices, offsets, nbit, "sum" if mode == "wsum" else mode, weights, dim, dtype,
          include_last, signed)


@pytest.mark.parametrize("wdtype", [torch.float16, torch.bfloat16, torch.float64])
def test_kernel_weight_dtypes_and_default_tiles(wdtype):
    """Weights of any float dtype (widened to fp32 in the kernel); default tile choice;
    bags longer than the default BLOCK_L (32); a row of int4 codes wider than one tile."""
    gen = torch.Generator().manual_seed(7)
    rows = make_rows(32, 80, 40, gen)  # 640 codes: 2 column blocks of 64 words
    indices, offsets = make_bags([33, 0, 31, 40], 40, gen, False)
    weights = torch.randn(indices.shape, generator=gen).to(wdtype)
    dim = 635
    got = keb.embedding_bag(rows.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), 4, "sum",
                            weights.to(DEVICE), dim, torch.float32, False, False)
    check(got, rows, indices, offsets, 4, "sum", weights, dim, torch.float32, False, False)


def test_layout_choice():
    # int32 rows of 1 + 16 words (68 bytes): data-only tile, 4-byte loads
    lay = keb.layout(torch.empty(8, 17, dtype=torch.int32), 4, 128)
    assert (lay["head_in"], lay["vec"], lay["limit"], lay["block_w"], lay["n_blocks"]) == (False, 1, 16, 16, 1)
    # padded to 80 bytes: a full-row tile would need 32 columns instead of 16: still data-only
    lay = keb.layout(torch.empty(8, 20, dtype=torch.int32), 4, 128)
    assert not lay["head_in"]
    # 1 + 15 words (64 bytes, D=120): the full row is 16 columns, 16-byte vectors
    lay = keb.layout(torch.empty(8, 16, dtype=torch.int32), 4, 120)
    assert (lay["head_in"], lay["vec"], lay["limit"], lay["n_blocks"]) == (True, 4, 16, 1)
    # D=512: 64 data words in one block; forced full rows: 68 words
    lay = keb.layout(torch.empty(8, 65, dtype=torch.int32), 4, 512)
    assert (lay["head_in"], lay["block_w"], lay["n_blocks"]) == (False, 64, 1)
    lay = keb.layout(torch.empty(8, 68, dtype=torch.int32), 4, 512, head_in=True)
    assert (lay["vec"], lay["limit"], lay["block_w"], lay["n_blocks"]) == (4, 68, 64, 2)
    # uint8 rows: data starts 4 bytes in, 4-byte vectors when the stride allows
    lay = keb.layout(torch.empty(8, 36, dtype=torch.uint8), 4, 64)
    assert (lay["head_in"], lay["vec"], lay["limit"]) == (False, 4, 32)


def test_no_bags_and_zero_dim():
    rows = make_rows(32, 2, 5, torch.Generator().manual_seed(0))
    idx = torch.tensor([1, 2], device=DEVICE)
    out = keb.embedding_bag(rows.to(DEVICE), idx, torch.tensor([0], device=DEVICE), 4, "sum", None, 16,
                            torch.float32, True, False)
    assert out.shape == (0, 16)
    out = keb.embedding_bag(rows.to(DEVICE), idx, torch.tensor([0, 1], device=DEVICE), 4, "mean", None, 0,
                            torch.float16, False, False)
    assert out.shape == (2, 0)
    # no lookups at all: every bag empty
    out = keb.embedding_bag(rows.to(DEVICE), idx[:0], torch.tensor([0, 0, 0], device=DEVICE), 4, "mean", None, 16,
                            torch.float32, False, False)
    assert out.shape == (3, 16) and (out == 0).all()


# --- the public op ---------------------------------------------------------------------------------

def _case(gen, T=30):
    rows = make_rows(32, 4, T, gen)
    indices, offsets = make_bags([3, 0, 5, 1], T, gen, False)
    return rows, indices, offsets


# every valid kind of input: empty bags (first, middle, last), one bag, no lookups at all
VALID = [([3, 0, 5, 1], "sum"), ([0, 4, 0], "mean"), ([0], "mean"), ([2, 0, 0], "wsum"), ([], "sum"),
         ([0, 0], "sum"), ([6], "wsum")]


@pytest.mark.parametrize("include_last", [False, True])
@pytest.mark.parametrize("idx_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("k", range(len(VALID)))
def test_op_cpu_and_kernel_agree(k, idx_dtype, include_last):
    """The CPU op (only the looked-up rows, fp32 sums) and the kernel (interpreter on
    CPU CI) against the exact result, on every valid kind of offsets."""
    lengths, mode = VALID[k]
    if include_last and not lengths:
        return  # torch needs at least one offset then
    gen = torch.Generator().manual_seed(k)
    rows = make_rows(32, 4, 30, gen)
    indices, offsets = make_bags(lengths, 30, gen, include_last, idx_dtype)
    w = torch.randn(indices.shape, generator=gen) if mode == "wsum" else None
    m = "sum" if mode == "wsum" else mode
    got = ops.embedding_bag(rows, indices, offsets, 4, mode=m, per_sample_weights=w, include_last_offset=include_last)
    kern = keb.embedding_bag(rows.to(DEVICE), indices.to(DEVICE), offsets.to(DEVICE), 4, m,
                             None if w is None else w.to(DEVICE), 32, torch.float32, include_last, False)
    for out in (got, kern):
        check(out, rows, indices, offsets, 4, m, w, 32, torch.float32, include_last, False)


def test_op_cpu_gathers_only_its_rows():
    """A table of 2**26 rows (4.5 GiB) that exists only where it is looked up: the CPU
    path touches nothing else (it used to dequantize the whole table per call)."""
    import ctypes
    import numpy as np
    T, E = 1 << 26, 17
    gen = torch.Generator().manual_seed(5)
    real = make_rows(32, E - 1, 8, gen)  # rows T - 8 .. T - 1
    size = real.element_size()
    raw = (ctypes.c_uint8 * (T * E * size)).from_address(real.data_ptr() - (T - 8) * E * size)
    table = torch.from_numpy(np.ctypeslib.as_array(raw)).view(torch.int32).view(T, E)
    idx = torch.tensor([T - 1, T - 8, T - 3, T - 3])
    got = ops.embedding_bag(table, idx, torch.tensor([0, 3]), 4, mode="mean")
    check(got, real, idx - (T - 8), torch.tensor([0, 3]), 4, "mean", None, 128, torch.float32, False, False)


BAD_OFFSETS = [([1, 3], False, "`offsets\\[0\\]` must be 0"), ([-1, 3], False, "`offsets\\[0\\]` must be 0"),
               ([0, 4, 2], False, "`offsets` must be non-decreasing"),
               ([0, 4, 9], False, "`offsets` must be <= len\\(indices\\) = 6"),
               ([0, 4], True, "`offsets\\[-1\\]` must be len\\(indices\\) = 6"),
               ([0, 7], True, "`offsets\\[-1\\]` must be len\\(indices\\) = 6")]


@pytest.mark.parametrize("offs,include_last,message", BAD_OFFSETS)
def test_op_offsets_validated(offs, include_last, message):
    """As torch's F.embedding_bag: bag 0 starts at 0, offsets never decrease and stay
    within the indices (with include_last_offset the last one is len(indices))."""
    rows = make_rows(32, 4, 30, torch.Generator().manual_seed(6))
    idx = torch.arange(6)
    for dtype in (torch.int32, torch.int64):
        with pytest.raises(ValueError, match=message):
            ops.embedding_bag(rows, idx, torch.tensor(offs, dtype=dtype), 4, include_last_offset=include_last)


def test_fake_tensor_and_torch_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        out = ops.embedding_bag(torch.empty(10, 9, dtype=torch.int32), torch.empty(7, dtype=torch.int64),
                                torch.empty(3, dtype=torch.int64), 4, mode="mean", n_codes=50, dtype=torch.float16,
                                include_last_offset=True)
        assert out.shape == (2, 50) and out.dtype == torch.float16
    gen = torch.Generator().manual_seed(2)
    rows, indices, offsets = _case(gen)
    w = torch.randn(indices.shape, generator=gen)

    def f(rows, indices, offsets, w):
        return ops.embedding_bag(rows, indices, offsets, 4, per_sample_weights=w, n_codes=30) * 2

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(rows, indices, offsets, w), f(rows, indices, offsets, w))


def _bad():
    gen = torch.Generator().manual_seed(3)
    rows, idx, offs = _case(gen)
    w = torch.ones(idx.shape)
    eb = ops.embedding_bag
    return [
        (lambda: eb(rows, torch.tensor([0, 30]), offs[:1], 4), IndexError, "`indices`"),
        (lambda: eb(rows, torch.tensor([-1, 3]), offs[:1], 4), IndexError, "`indices`"),
        (lambda: eb(rows.float(), idx, offs, 4), TypeError, "`rows`"),
        (lambda: eb(rows, idx.float(), offs, 4), TypeError, "`indices`"),
        (lambda: eb(rows, idx.reshape(1, -1), offs, 4), TypeError, "`indices`"),
        (lambda: eb(rows, idx, offs.to(torch.int16), 4), TypeError, "`offsets`"),
        (lambda: eb(rows, idx, offs, 3), ValueError, "`nbit`"),
        (lambda: eb(rows, idx, offs, 4, n_codes=33), ValueError, "`n_codes`"),
        (lambda: eb(rows, idx, offs, 4, mode="max"), ValueError, "`mode`"),
        (lambda: eb(rows, idx, offs, 4, dtype=torch.bfloat16), TypeError, "`dtype`"),
        (lambda: eb(rows, idx, offs, 4, mode="mean", per_sample_weights=w), ValueError, "`per_sample_weights`"),
        (lambda: eb(rows, idx, offs, 4, per_sample_weights=w[1:]), ValueError, "`per_sample_weights`"),
        (lambda: eb(rows, idx, offs, 4, per_sample_weights=w.long()), ValueError, "`per_sample_weights`"),
        (lambda: eb(rows, idx, offs[:0], 4, include_last_offset=True), ValueError, "`offsets`"),
        # mismatched devices, testable without a GPU through the meta device
        (lambda: eb(rows, idx.to("meta"), offs, 4), ValueError, "`indices`"),
        (lambda: eb(rows, idx, offs, 4, per_sample_weights=w.to("meta")), ValueError, "`per_sample_weights`"),
    ]


@pytest.mark.parametrize("k", range(len(_bad())))
def test_bad_arguments(k):
    call, exc, name = _bad()[k]
    with pytest.raises(exc, match=name):
        call()


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU: rows on cuda, indices on cpu")
def test_mismatched_devices_cuda():
    rows, idx, offs = _case(torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="`indices`"):
        ops.embedding_bag(rows.cuda(), idx, offs.cuda(), 4)
