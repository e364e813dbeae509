"""One launch of a case, for Nsight Compute (what limits a kernel):

    ncu --section SpeedOfLight --section WarpStateStats --section Occupancy \\
        -k regex:gemv_kernel -c 1 python3 bench/ncu_case.py linear 1 8192 4
"""
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])

import triton_dequant  # noqa: E402
from triton_dequant.kernels import linear as kl  # noqa: E402


def main(case: str, *a):
    gen = torch.Generator(device="cuda").manual_seed(0)
    if case == "linear":
        from linear import _problem
        M, K, nbit = int(a[0]), int(a[1]), int(a[2])
        x, qw, s, h = _problem(M, K, K, nbit, "cuda", gen)
        kl.linear(x, qw, s, h, nbit, K, 0, False)
    elif case == "embedding_bag":
        D = int(a[0])
        T, B, L = 1 << 20, 1 << 16, 32
        rows = torch.randint(-2 ** 31, 2 ** 31 - 1, (T, 1 + D // 8), dtype=torch.int32, device="cuda", generator=gen)
        idx = torch.randint(0, T, (B * L,), device="cuda", generator=gen, dtype=torch.int32)
        offs = torch.arange(0, B * L, L, device="cuda", dtype=torch.int32)
        rows[:, 0] = (torch.rand(T, 2, device="cuda", generator=gen) - 0.5).half().view(torch.int32).view(-1)
        triton_dequant.embedding_bag(rows, idx, offs, 4, n_codes=D, dtype=torch.float16, check_indices=False)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(*sys.argv[1:])
