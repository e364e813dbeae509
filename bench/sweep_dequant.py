"""Tile sweep for the standalone dequant kernel (which BLOCK / num_warps to ship).

    PYTHONPATH=python python3 bench/sweep_dequant.py
"""
import itertools
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import copy_us, make_time_us  # noqa: E402

from triton_dequant.kernels import dequant as kdq  # noqa: E402


def main(n_out=1 << 28):
    time_us = make_time_us()
    gen = torch.Generator(device="cuda").manual_seed(0)
    print(torch.cuda.get_device_name(), flush=True)
    for nbit, container in ((8, torch.int32), (4, torch.int32), (2, torch.int16)):
        width = torch.iinfo(container).bits
        per = width // nbit
        x = torch.randint(-2 ** (width - 1), 2 ** (width - 1) - 1, (1, n_out // per), dtype=container,
                          device="cuda", generator=gen)
        s = torch.tensor([[0.0625]], dtype=torch.float16, device="cuda")
        h = torch.tensor([[-1.5]], dtype=torch.float16, device="cuda")
        nbytes = x.numel() * x.element_size() + n_out * 2
        c = copy_us(time_us, nbytes)
        ref = kdq.dequantize(x, s, h, nbit, torch.float16, 1, False, block=256, num_warps=4)
        for block, warps in itertools.product((128, 256, 512, 1024, 2048, 4096), (2, 4, 8)):
            y = kdq.dequantize(x, s, h, nbit, torch.float16, 1, False, block=block, num_warps=warps)
            assert torch.equal(y, ref)
            t = time_us(lambda: kdq.dequantize(x, s, h, nbit, torch.float16, 1, False, block=block,
                                               num_warps=warps))
            print(f"nbit={nbit} block={block:5d} warps={warps} {t:8.1f} us  {100 * c / t:5.1f}% of copy", flush=True)


if __name__ == "__main__":
    main()
