"""Compile on the CPU for Hopper (sm_90) and Ampere (sm_80); inspect the PTX.

The asm that tl.dequantize put into the compiled PTX is parsed back and run by
the emulator over every code, so a wrong constant in what reaches the GPU
fails here, without a GPU."""
import itertools

import pytest
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

import triton_dequant
from triton_dequant import language, ptx
from triton_dequant.testing import as_jit, compile_for, dequant_asm_blocks, int_to_float_conversions

from dq_cases import DSTS, PAIRS
from test_ptx import check_program

TL = {"fp16": tl.float16, "bf16": tl.bfloat16, "fp32": tl.float32}
PTR = {8: "*u8", 16: "*i16", 32: "*i32"}


@triton.jit
def _kernel(x_ptr, s_ptr, y_ptr, BLOCK: tl.constexpr, PER: tl.constexpr, NBIT: tl.constexpr,
            DST: tl.constexpr, SIGNED: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, BLOCK))
    s = tl.load(s_ptr)
    h = tl.load(s_ptr + 1)
    y = tl.dequantize(x, s, h, NBIT, DST, signed=SIGNED)
    tl.store(y_ptr + tl.arange(0, BLOCK * PER), y)


def _compile(width, nbit, dst, signed=False, capability=90):
    return compile_for(_kernel, {"x_ptr": PTR[width], "s_ptr": "*" + dst, "y_ptr": "*" + dst},
                       {"BLOCK": 256, "PER": width // nbit, "NBIT": nbit, "DST": TL[dst], "SIGNED": signed},
                       capability=capability)


CASES = [(w, n, d, 90) for (w, n), d in itertools.product(PAIRS, DSTS)]
CASES += [(32, 4, "fp16", 80), (32, 8, "bf16", 80), (16, 2, "fp16", 80), (8, 1, "fp32", 80)]


@pytest.mark.parametrize("width,nbit,dst,capability", CASES)
def test_compiled_ptx_is_the_emulated_sequence(width, nbit, dst, capability):
    signed = (width + nbit) % 2 == 0  # a mix of both
    k = _compile(width, nbit, dst, signed, capability)
    text = k.asm["ptx"]
    assert not int_to_float_conversions(text), int_to_float_conversions(text)
    blocks = dequant_asm_blocks(text)
    assert blocks, "no tl.dequantize asm in the PTX"
    variant = ptx.Variant(nbit, width, dst, signed)
    for block in set(blocks):  # each copy Triton made of it
        assert "prmt.b32" in block or "lop3.b32" in block
        bad = check_program(ptx.from_compiled(block, variant))
        assert not bad.any(), f"{int(bad.sum())} wrong outputs from the compiled asm"


@pytest.mark.parametrize("capability", [75])
def test_older_gpus_use_the_portable_lowering(capability):
    k = _compile(32, 4, "fp16", capability=capability)
    assert not dequant_asm_blocks(k.asm["ptx"])


def test_portable_switch():
    language.use_portable(True)
    try:
        k = _compile(32, 4, "fp16")
    finally:
        language.use_portable(None)
    assert not dequant_asm_blocks(k.asm["ptx"])


# --- cache key ---------------------------------------------------------------------

def _uses_tl(x_ptr, y_ptr):
    tl.store(y_ptr + tl.arange(0, 64), tl.dequantize(tl.load(x_ptr + tl.arange(0, 8)), 1.0, 0.0, 4))


def _uses_package(x_ptr, y_ptr):
    tl.store(y_ptr + tl.arange(0, 64), triton_dequant.language.dequantize(tl.load(x_ptr + tl.arange(0, 8)), 1.0, 0.0, 4))


def _uses_neither(x_ptr, y_ptr):
    tl.store(y_ptr + tl.arange(0, 8), tl.load(x_ptr + tl.arange(0, 8)).to(tl.float16))


def _key(fn):
    return JITFunction(fn).cache_key  # a fresh object: cache_key is memoised per function


@pytest.mark.parametrize("fn", [_uses_tl, _uses_package], ids=["tl.dequantize", "triton_dequant.language.dequantize"])
def test_lowering_is_part_of_the_cache_key(fn, monkeypatch):
    before = _key(fn)
    assert _key(fn) == before  # deterministic
    language.use_portable(True)  # a different lowering...
    try:
        assert _key(fn) != before  # ...is a different kernel
    finally:
        language.use_portable(None)
    monkeypatch.setattr(language, "lowering_key", lambda: "another version of ptx.py")
    monkeypatch.setattr(language.dequantize, "__triton_dequant_key__", language.lowering_key)
    assert _key(fn) != before


def test_kernels_without_dequantize_keep_their_key():
    before = _key(_uses_neither)
    language.use_portable(True)
    try:
        assert _key(_uses_neither) == before
    finally:
        language.use_portable(None)


def test_compiled_hash_follows_the_lowering():
    sig = {"x_ptr": "*i32", "y_ptr": "*fp16"}
    h1 = compile_for(JITFunction(_uses_tl), sig).hash
    language.use_portable(True)
    try:
        h2 = compile_for(JITFunction(_uses_tl), sig).hash
    finally:
        language.use_portable(None)
    assert h1 != h2
