"""Bad arguments fail at compile time with a message naming the argument."""
import pytest
import triton
import triton.language as tl
from triton.compiler.errors import CompilationError

import triton_dequant  # noqa: F401
from triton_dequant.testing import compile_for


@triton.jit
def _kernel(x_ptr, s_ptr, y_ptr, NBIT: tl.constexpr, DST: tl.constexpr, AXIS: tl.constexpr,
            SIGNED: tl.constexpr, CASE: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, 16))
    s = tl.load(s_ptr)
    h = tl.load(s_ptr + 1)
    if CASE == "scalar_x":
        x = tl.load(x_ptr)
    if CASE == "bad_scale_shape":
        s = tl.load(s_ptr + tl.arange(0, 4))
    if CASE == "string_shift":
        y = tl.dequantize(x, s, "zero", NBIT, DST, axis=AXIS, signed=SIGNED)
    else:
        y = tl.dequantize(x, s, h, NBIT, DST, axis=AXIS, signed=SIGNED)
    tl.store(y_ptr + tl.arange(0, 128), y)  # (no tl.sum: CPU CI imports triton in interpreter mode)


GOOD = dict(x="*i32", s="*fp16", NBIT=4, DST=tl.float16, AXIS=-1, SIGNED=False, CASE="")
BAD = [
    ("nbit 3", dict(NBIT=3), "`nbit` must be one of 1, 2, 4, 8"),
    ("nbit 16", dict(NBIT=16, x="*i16"), "`nbit` must be one of 1, 2, 4, 8"),
    ("float x", dict(x="*fp16"), "`x` must be an integer container tensor"),
    ("int64 x", dict(x="*i64"), "`x` must be an integer container tensor"),
    ("scalar x", dict(CASE="scalar_x"), "`x` must be a block tensor"),
    ("axis out of range", dict(AXIS=1), "`axis` must be an int in [-1, 1)"),
    ("dst int32", dict(DST=tl.int32), "`dst_ty` must be tl.float16, tl.bfloat16 or tl.float32"),
    ("dst fp64", dict(DST=tl.float64), "`dst_ty` must be"),
    ("int scale", dict(s="*i32"), "`scale` must have dtype fp16, bf16 or fp32"),
    ("scale shape", dict(CASE="bad_scale_shape"), "`scale` of shape [4] is not broadcastable to the output shape [128]"),
    ("string shift", dict(CASE="string_shift"), "`shift` must be a float scalar or a tensor"),
    ("signed int", dict(SIGNED=1), "`signed` must be a bool, got 1"),
]


@pytest.mark.parametrize("name,change,message", BAD, ids=[b[0] for b in BAD])
def test_bad_argument_is_named(name, change, message):
    a = {**GOOD, **change}
    with pytest.raises(CompilationError) as e:
        compile_for(_kernel, {"x_ptr": a["x"], "s_ptr": a["s"], "y_ptr": "*fp32"},
                    {k: a[k] for k in ("NBIT", "DST", "AXIS", "SIGNED", "CASE")})
    assert message in str(e.value), str(e.value)


def test_good_arguments_compile():
    compile_for(_kernel, {"x_ptr": "*i32", "s_ptr": "*fp16", "y_ptr": "*fp32"},
                {k: GOOD[k] for k in ("NBIT", "DST", "AXIS", "SIGNED", "CASE")})


def test_outside_a_kernel():
    import os
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter runs builtins eagerly
        with pytest.raises(TypeError, match="`x` must be an integer tensor"):
            triton_dequant.language.dequantize(None, 1.0, 0.0, 4)
    else:
        with pytest.raises(ValueError, match="inside a @triton.jit function"):
            triton_dequant.language.dequantize(None, 1.0, 0.0, 4)


# --- host API: every public function names the bad argument ----------------------------------

import torch  # noqa: E402

from triton_dequant import interop, ops, packing  # noqa: E402

_P4 = torch.tensor([0x76543210, 0x7FFFFFFF], dtype=torch.int32)
_QW = torch.zeros(8, 16, dtype=torch.int32)  # K = 64 int4 codes along K, N = 16
_S, _H = torch.ones(16, dtype=torch.float16), torch.zeros(16, dtype=torch.float16)
_X = torch.zeros(2, 64, dtype=torch.float16)
_ROWS = torch.zeros(5, 3, dtype=torch.int32)
_IDX, _OFF = torch.tensor([0, 1, 2]), torch.tensor([0, 2])
_C8 = packing.pack(torch.tensor([200, 7]), 8, container=torch.uint8)

HOST_BAD = [
    # linear
    ("linear 0-d scale", lambda: ops.linear(_X, _QW, _S[0], _H[0], 4), ValueError, "`scale` must be [N]"),
    ("linear signed str", lambda: ops.linear(_X, _QW, _S, _H, 4, signed="yes"), TypeError, "`signed` must be a bool"),
    ("linear group float", lambda: ops.linear(_X, _QW, _S[None], _H[None], 4, group_size=16.0), TypeError,
     "`group_size` must be an int"),
    ("linear group str", lambda: ops.linear(_X, _QW, _S[None], _H[None], 4, group_size="16"), TypeError,
     "`group_size` must be an int"),
    ("linear group 0", lambda: ops.linear(_X, _QW, _S[None], _H[None], 4, group_size=0), ValueError,
     "`group_size` must be an int >= 1"),
    ("linear per-channel group", lambda: ops.linear(_X, _QW, _S, _H, 4, group_size=32), ValueError,
     "`group_size` must be None or K=64"),
    ("linear x list", lambda: ops.linear([[0.0] * 64], _QW, _S, _H, 4), TypeError, "`x` must be a torch.Tensor"),
    ("linear x fp64", lambda: ops.linear(_X.double(), _QW, _S, _H, 4), TypeError, "`x` must be a fp16, bf16"),
    ("linear scale list", lambda: ops.linear(_X, _QW, [1.0] * 16, _H, 4), TypeError, "`scale` must be a torch.Tensor"),
    ("linear packed_dim bool", lambda: ops.linear(_X, _QW, _S, _H, 4, packed_dim=True), ValueError, "`packed_dim`"),
    ("linear nbit str", lambda: ops.linear(_X, _QW, _S, _H, "4"), TypeError, "`nbit` must be an int"),
    ("linear zero groups", lambda: ops.linear(_X, _QW, torch.zeros(0, 16), torch.zeros(0, 16), 4),
     ValueError, "`scale` must have K / group_size rows"),
    # dequantize / dequantize_rows
    ("dequantize signed", lambda: ops.dequantize(_P4, 1.0, 0.0, 4, signed=1), TypeError, "`signed` must be a bool"),
    ("dequantize dtype fp64", lambda: ops.dequantize(_P4, 1.0, 0.0, 4, dtype=torch.float64), TypeError, "`dtype`"),
    ("dequantize dim float", lambda: ops.dequantize(_P4, 1.0, 0.0, 4, dim=0.0), TypeError, "`dim` must be an int"),
    ("dequantize packed list", lambda: ops.dequantize([1, 2], 1.0, 0.0, 4), TypeError, "`packed` must be a torch"),
    ("dequantize scale bool", lambda: ops.dequantize(_P4, True, 0.0, 4), TypeError, "`scale` must be a Python number"),
    ("rows n_codes float", lambda: ops.dequantize_rows(_ROWS, 4, n_codes=8.0), TypeError, "`n_codes` must be an int"),
    ("rows n_codes big", lambda: ops.dequantize_rows(_ROWS, 4, n_codes=17), ValueError, "`n_codes` must be an int in"),
    ("rows signed", lambda: ops.dequantize_rows(_ROWS, 4, signed=None), TypeError, "`signed` must be a bool"),
    # embedding_bag
    ("eb weights list", lambda: ops.embedding_bag(_ROWS, _IDX, _OFF, 4, per_sample_weights=[1.0] * 3), TypeError,
     "`per_sample_weights` must be a torch.Tensor"),
    ("eb offsets list", lambda: ops.embedding_bag(_ROWS, _IDX, [0, 2], 4), TypeError, "`offsets` must be a torch"),
    ("eb include_last int", lambda: ops.embedding_bag(_ROWS, _IDX, _OFF, 4, include_last_offset=1), TypeError,
     "`include_last_offset` must be a bool"),
    ("eb check_indices", lambda: ops.embedding_bag(_ROWS, _IDX, _OFF, 4, check_indices="no"), TypeError,
     "`check_indices` must be a bool"),
    # packing
    ("unpack wraps int8", lambda: packing.unpack(_C8, 8, dtype=torch.int8), ValueError, "`dtype` torch.int8 cannot hold"),
    ("unpack signed uint8", lambda: packing.unpack(_C8, 4, dtype=torch.uint8, signed=True), ValueError,
     "`dtype` torch.uint8 cannot hold"),
    ("bitunpack n None", lambda: packing.bitunpack(packing.bitpack(torch.ones(3, dtype=torch.bool)), None), TypeError,
     "`n` must be an int"),
    ("pack nbit 0", lambda: packing.pack(torch.zeros(3, dtype=torch.uint8), 0), ValueError, "`nbit` must be one of"),
    ("pack check str", lambda: packing.pack(torch.zeros(3, dtype=torch.uint8), 4, check="yes"), TypeError,
     "`check` must be a bool"),
    ("quantize group short", lambda: packing.quantize(torch.randn(3, 50), 4, group_size=16), ValueError,
     "`group_size` (16) must divide"),
    ("quantize group float", lambda: packing.quantize(torch.randn(3, 48), 4, group_size=16.0), TypeError,
     "`group_size` must be an int"),
    ("pack_rows row_align str", lambda: packing.pack_rows(torch.randn(2, 8), 4, row_align="16"), TypeError,
     "`row_align` must be an int"),
    ("unpack_rows n_codes", lambda: packing.unpack_rows(_ROWS, 4, -1), ValueError, "`n_codes` must be an int in"),
    ("unpack_rows container", lambda: packing.unpack_rows(_ROWS, 4, 8, container="int32"), TypeError, "`container`"),
    # interop
    ("tbe n_codes str", lambda: interop.from_fbgemm_tbe(torch.zeros(2, 16, dtype=torch.uint8), 4, "8"), TypeError,
     "`n_codes` must be an int"),
    ("tbe align float", lambda: interop.to_fbgemm_tbe(packing.pack_rows(torch.randn(2, 8), 4), 4, 8,
                                                      row_alignment=16.0), TypeError, "`row_alignment` must be an int"),
    ("gptq nbit", lambda: interop.from_gptq(_QW, _QW[:1, :2], _S[None].float(), nbit=None), TypeError,
     "`nbit` must be an int"),
]


@pytest.mark.parametrize("name,call,exc,fragment", HOST_BAD, ids=[b[0] for b in HOST_BAD])
def test_host_bad_argument_is_named(name, call, exc, fragment):
    with pytest.raises(exc) as e:
        call()
    assert fragment in str(e.value), str(e.value)


def test_host_empty_inputs_give_empty_results():
    assert ops.linear(_X[:0], _QW, _S, _H, 4).shape == (0, 16)
    assert ops.linear(_X, _QW[:, :0], _S[:0], _H[:0], 4).shape == (2, 0)  # N = 0
    y = ops.linear(_X[:, :0], _QW[:0], _S, _H, 4)  # K = 0: an empty sum
    assert y.shape == (2, 16) and not y.any()
    assert ops.dequantize(_P4[:0], 1.0, 0.0, 4).shape == (0,)
    assert ops.dequantize(torch.zeros(0, 3, dtype=torch.int16), 1.0, 0.0, 2, dim=0).shape == (0, 3)
    assert ops.dequantize_rows(_ROWS[:0], 4).shape == (0, 16)
    assert ops.embedding_bag(_ROWS, _IDX, _OFF[:0], 4).shape == (0, 16)
    assert packing.unpack(packing.pack(torch.zeros(0, dtype=torch.uint8), 3, dense=True), 3, dense=True).shape == (0,)


def test_top_level_dequantize_is_the_host_op():
    assert triton_dequant.dequantize is ops.dequantize
    assert triton_dequant.language.dequantize is tl.dequantize
    y = triton_dequant.dequantize(_P4[:1], 0.5, 0.0, 4)
    assert y.tolist() == [0.5 * q for q in range(8)]


def test_python_numbers_rounded_once():
    """1 + 2**-11 + 2**-30 is just above the fp16 midpoint between 1 and 1 + 2**-10:
    fp16 gives 1 + 2**-10 (rounding through fp32 first gave the tie, then 1.0). An int
    past 2**53 rounds once too (here to fp32)."""
    one = torch.tensor([1], dtype=torch.int32)  # code 1
    assert ops.dequantize(one, 1 + 2 ** -11 + 2 ** -30, 0.0, 4)[0].item() == 1.0009765625
    big = 2 ** 60 + 2 ** 36 + 1  # above the fp32 tie 2**60 + 2**36
    got = ops.dequantize(one, big, 0.0, 4, dtype=torch.float32)[0].item()
    assert got == 2 ** 60 + 2 ** 37
    from triton_dequant import reference as ref
    assert ref.round_scalar(big, ref.FP32) == 2 ** 60 + 2 ** 37
    assert ref.dequantize(one, big, 0, 4, torch.float32)[0].item() == 2 ** 60 + 2 ** 37
