"""Compile-and-inspect helpers: build a kernel for an NVIDIA target on any
machine (no GPU or driver needed) and look at what ``tl.dequantize`` emitted."""
from __future__ import annotations

import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from . import ptx
from .state import lowering_state

_INT_TO_FLOAT = re.compile(r"cvt\.\w+\.(f16|bf16|f32|f64)(x2)?\.[su](8|16|32|64)\b")


def as_jit(fn) -> JITFunction:
    """A compilable JITFunction even when ``TRITON_INTERPRET=1`` made ``@triton.jit``
    return an interpreter object."""
    if isinstance(fn, JITFunction):
        return fn
    return JITFunction(getattr(fn, "fn", fn))


def compile_for(fn, signature: dict, constexprs: dict | None = None, *, capability: int = 90,
                num_warps: int = 4, num_stages: int = 3, aligned=(0, 1)):
    """Compile ``fn`` for ``cuda:capability`` on the CPU; returns the CompiledKernel
    (``.asm`` holds ``ttir``, ``ttgir``, ``llir``, ``ptx``, ``cubin``).

    ``signature`` maps argument names to Triton types (``"*i32"``, ``"fp32"``...);
    ``constexprs`` gives the constexpr arguments; arguments at ``aligned``
    positions are marked 16-byte aligned, as Triton does for torch tensors."""
    constexprs = dict(constexprs or {})
    sig = dict(signature)
    for k in constexprs:
        sig[k] = "constexpr"
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    lowering_state()  # environment changes since the last compile take effect (triton_dequant.state)
    src = ASTSource(fn=as_jit(fn), signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def dequant_asm_blocks(ptx_text: str) -> list[str]:
    """The inline-asm blocks emitted by ``tl.dequantize``, as they appear in PTX."""
    return re.findall(re.escape(ptx.MARKER) + r"[^\n]*\n\{.*?\n\}", ptx_text, flags=re.S)


def int_to_float_conversions(ptx_text: str) -> list[str]:
    """Integer-to-float ``cvt`` instructions in a PTX text."""
    return [m.group(0) for m in _INT_TO_FLOAT.finditer(ptx_text)]
