"""The PTX sequences, executed by the emulator over every code of every variant.

This is what catches a wrong magic number, lop3 table or prmt selector on a
machine without a GPU: the emulator runs the exact text that is rendered (and,
in test_compile.py, the text found in compiled PTX)."""
import itertools
import re

import pytest
import torch

from triton_dequant import ptx, reference as ref

from dq_cases import DSTS, PAIRS, as_container, every_code_words

SCALE, SHIFT = -0.3712890625, 5.5


def _variant(width, nbit, dst, signed, mode):
    fmt = ref.float_format(dst)
    bits = lambda v: int(ref.to_bits(ref.round_to(torch.tensor(v, dtype=torch.float64), fmt), fmt))
    if mode == "operand":
        return ptx.Variant(nbit, width, dst, signed)
    if mode == "immediate":
        return ptx.Variant(nbit, width, dst, signed, True, bits(SCALE), bits(SHIFT))
    return ptx.Variant(nbit, width, dst, signed, affine=False)


def check_program(prog: ptx.Program, seed: int = 0) -> torch.Tensor:
    """Emulate ``prog`` over every code; returns a bool mask of mismatches."""
    v = prog.variant
    fmt = ref.float_format(v.dst)
    gen = torch.Generator().manual_seed(seed)
    words = every_code_words(v.width, v.nbit, gen)
    junk = torch.randint(0, 256, words.shape, generator=gen)  # unspecified register bits
    scale, shift = (SCALE, SHIFT) if v.affine else (1.0, 0.0)
    sb = ref.to_bits(ref.round_to(torch.tensor(scale, dtype=torch.float64), fmt), fmt)
    hb = ref.to_bits(ref.round_to(torch.tensor(shift, dtype=torch.float64), fmt), fmt)
    got = torch.stack(ptx.emulate(prog, words, sb, hb, junk=junk), -1).reshape(-1)
    x = as_container(words, {8: torch.int8, 16: torch.int16, 32: torch.int32}[v.width])
    want = ref.dequantize(x, scale, shift, v.nbit, fmt.torch_dtype, signed=v.signed)
    want = ref.to_bits(want.to(torch.float64), fmt).to(torch.int64) & ((1 << fmt.bits) - 1)
    return got != want


CASES = [(w, n, d, s, m) for (w, n), d, s, m in
         itertools.product(PAIRS, DSTS, (False, True), ("operand", "immediate", "codes"))]


@pytest.mark.parametrize("width,nbit,dst,signed,mode", CASES)
def test_emulated_ptx_is_bit_exact(width, nbit, dst, signed, mode):
    v = _variant(width, nbit, dst, signed, mode)
    prog = ptx.parse(ptx.render(ptx.build(v)), v)  # round trip through the text
    bad = check_program(prog)
    assert not bad.any(), f"{int(bad.sum())} wrong outputs"


@pytest.mark.parametrize("width,nbit,dst", [(w, n, d) for (w, n), d in itertools.product(PAIRS, DSTS)])
def test_no_int_to_float_conversion(width, nbit, dst):
    text = ptx.render(ptx.build(ptx.Variant(nbit, width, dst, True)))
    assert not re.search(r"cvt\.\w+\.(f16|bf16|f32)\.[su](8|16|32|64)", text)
    assert "prmt.b32" in text or "lop3.b32" in text


# (variant, instruction budget per output): the sequence lengths we promise
BUDGET = {
    (4, 32, "fp16"): 2.0, (8, 32, "fp16"): 1.5, (2, 16, "fp16"): 2.0, (1, 8, "fp16"): 2.0,
    (4, 32, "bf16"): 2.125, (8, 32, "bf16"): 3.0, (4, 32, "fp32"): 3.125, (8, 32, "fp32"): 3.0,
}


@pytest.mark.parametrize("key", sorted(BUDGET), ids=str)
def test_instruction_budget(key):
    nbit, width, dst = key
    prog = ptx.build(ptx.Variant(nbit, width, dst))
    assert sum(prog.count().values()) / prog.variant.per == BUDGET[key]


def _mutations(text):
    """Each significant constant of the asm, corrupted in turn."""
    m = re.search(r"0x64(\w\w)64(\w\w)", text)  # fp16 magic exponent (with sign bits)
    yield "magic", text.replace(m.group(0), m.group(0).replace("64", "65"), 1)
    m = re.search(r"prmt\.b32 (\w+), (\S+), (\S+), 0x(\w+);", text)
    sel = int(m.group(4), 16)
    yield "prmt selector", text.replace(m.group(0), m.group(0).replace(m.group(4), f"{sel ^ 0x1:04x}"), 1)
    yield "lop3 table", text.replace("0x6a;", "0xea;", 1)
    m = re.search(r"mov\.b32 (\w+), (0x\w+);", text)
    yield "lop3 mask", text.replace(m.group(0), f"mov.b32 {m.group(1)}, 0x{int(m.group(2), 16) ^ 0x10000:08x};", 1)
    fix = re.search(r"fma\.rn\.f16x2 (\w+), (\w+), (\w+), (\w+);", text)
    yield "fix-up operand", text.replace(fix.group(0), f"fma.rn.f16x2 {fix.group(1)}, {fix.group(2)}, {fix.group(4)}, {fix.group(3)};", 1)


@pytest.mark.parametrize("name", ["magic", "prmt selector", "lop3 table", "lop3 mask", "fix-up operand"])
def test_emulator_catches_corrupted_constants(name):
    v = ptx.Variant(4, 32, "fp16", signed=True)
    text = ptx.render(ptx.build(v))
    mutated = dict(_mutations(text))[name]
    assert mutated != text
    assert check_program(ptx.parse(mutated, v)).any(), f"corrupted {name} went unnoticed"
