"""Shared helpers for the lit tests: compile a kernel on the CPU and print IR."""
import argparse

from triton_dequant.testing import compile_for, dequant_asm_blocks  # noqa: F401


def parser(**defaults):
    p = argparse.ArgumentParser()
    p.add_argument("--ir", default="ptx", choices=["ttir", "ttgir", "llir", "ptx", "asm", "summary"])
    p.add_argument("--capability", type=int, default=90)
    p.add_argument("--num-warps", type=int, default=4)
    for k, v in defaults.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    return p


def summary(block: str, outputs: int) -> str:
    """One line counting the instructions of a dequant asm block (moves excluded)."""
    import re
    ops = re.findall(r"^\s*([a-z0-9]+)[.\s]", block, flags=re.M)
    count = {k: sum(o == k for o in ops) for k in ("prmt", "lop3", "shr", "xor", "fma", "sub", "cvt")}
    total = sum(count.values())
    body = " ".join(f"{k}={v}" for k, v in count.items())
    return f"dequant: outputs={outputs} {body} total={total} per_output={total / outputs:.3f}"


def emit(kernel, ir: str, outputs: int = 0) -> None:
    blocks = dequant_asm_blocks(kernel.asm["ptx"])
    if ir == "asm":  # only the dequant asm blocks
        print("\n".join(blocks))
    elif ir == "summary":
        for b in sorted(set(blocks)):
            print(b.splitlines()[0])
            print(summary(b, outputs))
    else:
        print(kernel.asm[ir])
