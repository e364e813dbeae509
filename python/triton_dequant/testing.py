"""Compile-and-inspect helpers: build a kernel for an NVIDIA target on any
machine (no GPU or driver needed) and look at what ``tl.dequantize`` emitted."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import Counter

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import ptx
from .kernels._plan import jit_function as as_jit  # noqa: F401  (one home; the old name)
from .state import lowering_state

_INT_TO_FLOAT = re.compile(r"cvt\.\w+\.(f16|bf16|f32|f64)(x2)?\.[su](8|16|32|64)\b")

# cuobjdump / nvdisasm ship in the triton wheel
NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


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


# --- SASS ------------------------------------------------------------------------------------

def _cuobjdump(cubin: bytes, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([os.path.join(NVIDIA_BIN, "cuobjdump"), *flags, path], capture_output=True,
                              text=True, check=True).stdout


def sass_of(cubin: bytes) -> str:
    """The SASS of a cubin (``cuobjdump -sass``)."""
    return _cuobjdump(cubin, "-sass")


def resource_usage(cubin: bytes) -> dict:
    """``cuobjdump -res-usage`` of a one-kernel cubin: ``registers`` per thread,
    ``stack`` and ``local`` bytes per thread (local memory = register spills and
    local arrays: what Triton reports as ``n_spills``), static ``shared`` bytes."""
    text = _cuobjdump(cubin, "-res-usage")
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", text)
    if m is None:
        raise ValueError(f"no resource usage in cuobjdump's output:\n{text}")
    reg, stack, shared, local = (int(v) for v in m.groups())
    return dict(registers=reg, stack=stack, shared=shared, local=local)


_INS = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);")


def instructions(sass: str) -> list:
    """``(address, text)`` of every SASS instruction."""
    out = []
    for line in sass.splitlines():
        m = _INS.match(line)
        if m:
            out.append((int(m.group(1), 16), m.group(2).strip()))
    return out


def main_loop(sass: str) -> list:
    """Instruction texts of the largest backward-branch loop (the main loop)."""
    ins = instructions(sass)
    best = []
    for addr, text in ins:
        b = re.search(r"BRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", text)
        if b and b.group(1) and int(b.group(1), 16) < addr:
            body = [t for a_, t in ins if int(b.group(1), 16) <= a_ <= addr]
            best = max(best, body, key=len)
    return best


def op(text: str) -> str:
    """The opcode of one SASS instruction text, modifiers included (``LDG.E.128``), predicate dropped."""
    return re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]


def opcode_counts(texts, modifiers: bool = False) -> dict:
    """Instructions per opcode (``LDG`` or, with ``modifiers``, ``LDG.E.128``), most frequent first."""
    c = Counter(op(t) if modifiers else op(t).split(".")[0] for t in texts)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))
