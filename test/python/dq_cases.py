"""Shared test data: every (container, nbit) pair and inputs that put every
code at every position."""
import itertools

import torch

WIDTHS = (8, 16, 32)
NBITS = (1, 2, 4, 8)
DSTS = ("fp16", "bf16", "fp32")
TORCH_DST = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CONTAINERS = {8: (torch.uint8, torch.int8), 16: (torch.int16, torch.uint16), 32: (torch.int32, torch.uint32)}
PAIRS = [(w, n) for w, n in itertools.product(WIDTHS, NBITS) if w % n == 0]


def every_code_words(width: int, nbit: int, gen: torch.Generator, n_random: int = 512) -> torch.Tensor:
    """int64 bit patterns: all 2**width values for narrow containers; for 32-bit
    ones every code at every position (other positions random) plus random words."""
    if width <= 16:
        return torch.arange(1 << width, dtype=torch.int64)
    per, mask = width // nbit, (1 << nbit) - 1
    rows = []
    for j in range(per):
        for c in range(1 << nbit):
            rnd = int(torch.randint(0, 1 << 32, (1,), generator=gen))
            rows.append((rnd & ~(mask << (j * nbit)) & 0xFFFFFFFF) | (c << (j * nbit)))
    rnd = torch.randint(0, 1 << 32, (n_random,), generator=gen, dtype=torch.int64)
    return torch.cat([torch.tensor(rows, dtype=torch.int64), rnd, torch.tensor([0, 0xFFFFFFFF])])


def as_container(bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret int64 bit patterns as a container dtype."""
    width = torch.iinfo(dtype).bits
    b = bits & ((1 << width) - 1)
    if dtype.is_signed:
        b = torch.where(b >= 1 << (width - 1), b - (1 << width), b)
        return b.to(dtype)
    signed = {8: torch.int8, 16: torch.int16, 32: torch.int32}[width]
    b = torch.where(b >= 1 << (width - 1), b - (1 << width), b)
    return b.to(signed).view(dtype)
