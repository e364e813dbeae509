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
