"""Host ops: the Triton kernels (interpreter on CPU, compiled on GPU) against the
exact references, the torch.library registration (fake tensors, torch.compile),
and argument errors."""
import itertools

import pytest
import torch

import triton_dequant
from triton_dequant import ops, reference as ref
from triton_dequant.kernels import dequant as kdq

from conftest import DEVICE
from dq_cases import CONTAINERS, PAIRS, TORCH_DST, as_container


def _bits(t):
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def _rand_container(shape, dtype, gen):
    width = torch.iinfo(dtype).bits
    return as_container(torch.randint(0, 1 << width, shape, generator=gen, dtype=torch.int64), dtype)


SCALES = ["scalar", "float", "per-row", "per-output"]


@pytest.mark.parametrize("width,nbit", [(32, 4), (32, 8), (16, 2), (8, 1), (32, 1)])
@pytest.mark.parametrize("dim", [-1, 0, 1])
@pytest.mark.parametrize("scales", SCALES)
def test_dequantize_kernel(width, nbit, dim, scales):
    gen = torch.Generator().manual_seed(width + nbit + dim)
    dtype = CONTAINERS[width][0]
    x = _rand_container((3, 37, 5), dtype, gen)
    per = width // nbit
    out_shape = list(x.shape)
    out_shape[dim] *= per
    if scales == "float":
        s, h = -0.37, 1.5
    elif scales == "scalar":
        s, h = torch.tensor(0.1, dtype=torch.float32), torch.tensor(-2.0, dtype=torch.float16)
    elif scales == "per-row":  # constant along the unpacked dim
        shp = list(out_shape)
        shp[dim] = 1
        s, h = torch.randn(shp, generator=gen).half(), torch.randn(shp, generator=gen).half()
    else:
        s, h = torch.randn(out_shape, generator=gen).half(), torch.randn(out_shape, generator=gen).half()
    want = ref.dequantize(x, s, h, nbit, torch.float16, axis=dim)
    dev = lambda v: v.to(DEVICE) if isinstance(v, torch.Tensor) else torch.tensor(float(v), device=DEVICE)
    got = kdq.dequantize(x.to(DEVICE), dev(s), dev(h), nbit, torch.float16, dim % 3, False, block=16)
    assert torch.equal(_bits(got.cpu()), _bits(want))
    assert torch.equal(_bits(ops.dequantize(x, s, h, nbit, dim=dim)), _bits(want))  # CPU op: reference


@pytest.mark.parametrize("width,nbit", PAIRS)
@pytest.mark.parametrize("dst", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("signed", [False, True])
def test_dequantize_rows_kernel(width, nbit, dst, signed):
    gen = torch.Generator().manual_seed(width * nbit)
    dtype = CONTAINERS[width][1 if signed else 0]
    header = 32 // width
    rows = _rand_container((7, header + 13), dtype, gen)
    # valid fp16 header values of both signs
    sh = torch.randn(7, 2, generator=gen).half().view(torch.int16)
    rows[:, :header] = sh.view(dtype).reshape(7, header) if width < 32 else sh.view(torch.int32).view(dtype)
    per = width // nbit
    for dim in (13 * per, 13 * per - 3):
        want = ref.dequantize_rows(rows, nbit, TORCH_DST[dst], n_codes=dim, signed=signed)
        got = kdq.dequantize_rows(rows.to(DEVICE), nbit, TORCH_DST[dst], dim, signed, block=8)
        assert torch.equal(_bits(got.cpu()), _bits(want))
    assert torch.equal(_bits(ops.dequantize_rows(rows, nbit, TORCH_DST[dst], signed=signed)),
                       _bits(ref.dequantize_rows(rows, nbit, TORCH_DST[dst], signed=signed)))


def test_row_header_layout():
    # int32 word 0: scale in the low 16 bits, shift in the high 16 bits
    s, h = torch.tensor([0.5], dtype=torch.float16), torch.tensor([-3.0], dtype=torch.float16)
    word = (int(h.view(torch.int16)) & 0xFFFF) << 16 | (int(s.view(torch.int16)) & 0xFFFF)
    rows = torch.tensor([[word - (1 << 32) if word >= 1 << 31 else word, 0x76543210]], dtype=torch.int32)
    assert ops.dequantize_rows(rows, 4).tolist() == [[0.5 * q - 3.0 for q in range(8)]]


def test_custom_ops_registered_with_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(4, 16, dtype=torch.int32)
        y = ops.dequantize(x, 1.0, 0.0, 4, dim=0)
        assert y.shape == (32, 16) and y.dtype == torch.float16
        r = ops.dequantize_rows(torch.empty(3, 9, dtype=torch.int32), 4, torch.bfloat16, n_codes=60)
        assert r.shape == (3, 60) and r.dtype == torch.bfloat16
    assert hasattr(torch.ops.triton_dequant, "dequantize")


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(0)
    x = _rand_container((8, 16), torch.int32, gen)
    s = torch.rand(8, 1, generator=gen).half()

    def f(x, s):
        return ops.dequantize(x, s, -s, 4).float().sum(-1)

    torch._dynamo.reset()
    assert torch.equal(torch.compile(f, fullgraph=True)(x, s), f(x, s))


BAD = [
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.float32), 1.0, 0.0, 4), TypeError, "`packed`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int64), 1.0, 0.0, 4), TypeError, "`packed`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), 1.0, 0.0, 3), ValueError, "`nbit`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), 1.0, 0.0, 4, dim=1), ValueError, "`dim`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), 1.0, 0.0, 4, dtype=torch.int32), TypeError, "`dtype`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), torch.ones(3), 0.0, 4), ValueError, "`scale`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), torch.ones(1, dtype=torch.int32), 0.0, 4), TypeError, "`scale`"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.int32), 1.0, "0", 4), TypeError, "`shift`"),
    (lambda: ops.dequantize_rows(torch.zeros(4, 3, dtype=torch.int32), 4, n_codes=100), ValueError, "`n_codes`"),
    (lambda: ops.dequantize_rows(torch.zeros(4, dtype=torch.int32), 4), ValueError, "`rows`"),
    (lambda: ops.dequantize_rows(torch.zeros(4, 3, dtype=torch.float16), 4), TypeError, "`rows`"),
]


@pytest.mark.parametrize("call,exc,name", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_arguments(call, exc, name):
    with pytest.raises(exc, match=name.replace("`", "`")):
        call()
