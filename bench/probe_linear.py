"""Where does GEMV time go? Eager vs CUDA-graph replay (host overhead), ours vs
the shared lop3 split-K probe and cuBLAS, L2 flushed between repetitions.

    PYTHONPATH=python python3 bench/probe_linear.py
"""
import sys
import time

import torch
from triton.testing import do_bench

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from triton_dequant.kernels import linear as kl  # noqa: E402
from linear import _problem  # noqa: E402
from common import cuda_graph as graph_of  # noqa: E402
from naive import unpack as naive_unpack  # noqa: E402  (the shift/mask twin: same kernel, plain unpack)


def main():
    med = lambda f: 1e3 * do_bench(f, warmup=25, rep=100, return_mode="median")
    for K in (4096, 8192):
        for nbit in (8, 4, 2):
            x, qw, s, h = _problem(1, K, K, nbit, "cuda", torch.Generator(device="cuda").manual_seed(0))
            cfg = kl.default_config(1, K, K, nbit, 32, 0, torch.float16)
            ours = lambda: kl.linear(x, qw, s, h, nbit, K, 0, False, config=cfg)
            if "--once" in sys.argv:  # for ncu: one launch of each
                ours()
                kl.linear(x, qw, s, h, nbit, K, 0, False, config=cfg, unpack=naive_unpack)
                torch.cuda.synchronize()
                continue
            w16 = torch.randn(K, K, device="cuda").half()
            naive = lambda: kl.linear(x, qw, s, h, nbit, K, 0, False, config=cfg, unpack=naive_unpack)
            cub = lambda: x @ w16
            ours()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(200):
                ours()
            host = (time.perf_counter() - t) / 200 * 1e6
            torch.cuda.synchronize()
            g_ours, g_cub = graph_of(ours), graph_of(cub)
            print(f"K=N={K} int{nbit} {cfg.short()}: eager {med(ours):7.1f} us  graph {med(g_ours):7.1f} us  "
                  f"host/call {host:6.1f} us | naive graph {med(graph_of(naive)):7.1f} | cuBLAS eager {med(cub):6.1f} "
                  f"graph {med(g_cub):6.1f}", flush=True)


if __name__ == "__main__":
    main()
