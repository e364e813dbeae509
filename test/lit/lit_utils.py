"""Shared helpers for the lit tests: compile a kernel on the CPU and print IR."""
import argparse

from triton_dequant.testing import compile_for, dequant_asm_blocks  # noqa: F401


def parser(**defaults):
    p = argparse.ArgumentParser()
    p.add_argument("--ir", default="ptx", choices=["ttir", "ttgir", "llir", "ptx", "asm"])
    p.add_argument("--capability", type=int, default=90)
    p.add_argument("--num-warps", type=int, default=4)
    for k, v in defaults.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    return p


def emit(kernel, ir: str) -> None:
    if ir == "asm":  # only the dequant asm blocks
        print("\n".join(dequant_asm_blocks(kernel.asm["ptx"])))
    else:
        print(kernel.asm[ir])
