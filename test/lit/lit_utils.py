"""Shared helpers for the lit tests: compile a kernel on the CPU and print IR."""
import argparse
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import triton_dequant  # noqa: F401  (registers tl.dequantize)
from triton_dequant import ptx


def compile_kernel(fn, signature, constexprs, *, capability=90, num_warps=4, aligned=(0, 1)):
    """Compile ``fn`` for ``cuda:capability`` on the CPU; returns the CompiledKernel."""
    sig = dict(signature)
    for k in constexprs:
        sig[k] = "constexpr"
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})


def dequant_asm_blocks(ptx_text: str) -> list:
    """The inline-asm blocks tl.dequantize emitted, as they appear in the PTX."""
    return re.findall(re.escape(ptx.MARKER) + r"[^\n]*\n\{.*?\n\}", ptx_text, flags=re.S)


def parser(**defaults):
    p = argparse.ArgumentParser()
    p.add_argument("--ir", default="ptx", choices=["ttir", "ttgir", "llir", "ptx", "asm", "summary"])
    p.add_argument("--capability", type=int, default=90)
    p.add_argument("--num-warps", type=int, default=4)
    for k, v in defaults.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    return p


def emit(kernel, ir: str) -> None:
    if ir == "asm":  # only the dequant asm blocks, one per line group
        print("\n".join(dequant_asm_blocks(kernel.asm["ptx"])))
    else:
        print(kernel.asm[ir])
