"""The benchmark suite: one process, every case against its baselines.

    PYTHONPATH=python python3 bench/run.py --out-dir bench/results          # on the GPU
    PYTHONPATH=python python3 bench/run.py --dry-run                        # CPU smoke test

Writes ``<out-dir>/h100.json`` (schema below; benches dequant, dequant_rows, gemv,
linear, embedding_bag, decode), ``h100_layout.json`` and ``h100_packing.json`` for the
layout and packing studies, and prints one table last. ``bench/plot.py`` turns
the JSON into the PNG and the README table.

Schema: {"device", "torch", "triton", "date", "records": [{"bench", "nbit", "shape",
"impl", "us", ...extra}]}, impl one of ours, naive-triton, torch-compile,
torch-eager, cublas-fp16, copy (copy: a device copy moving the case's bytes),
fp16 (decode: the same model with fp16 nn.Linear layers).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

MAIN = ("dequant", "dequant_rows", "gemv", "linear", "embedding_bag", "decode")
MODULES = ["dequant", "linear", "embedding_bag", "decode", "layout", "packing"]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--only", default=",".join(MODULES), help="comma-separated bench modules")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (interpreter), no timing value")
    p.add_argument("--prefix", default="h100")
    a = p.parse_args()
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton

    device = "cpu" if a.dry_run else "cuda"
    records: list = []

    def record(**r):
        records.append(r)
        extra = {k: v for k, v in r.items() if k not in ("bench", "nbit", "shape", "impl", "us")}
        print(f"  {r['bench']:>14} nbit={r['nbit']} {r['shape']:<40} {r['impl']:<14} {r['us']:10.1f} us {extra}",
              flush=True)

    if a.dry_run:
        def time_us(fn, graph=False):
            t = time.perf_counter()
            fn()
            return 1e6 * (time.perf_counter() - t)
    else:
        from common import make_time_us
        time_us = make_time_us()

    failures = []
    for name in a.only.split(","):
        print(f"== {name}", flush=True)
        t0 = time.time()
        try:
            mod = importlib.import_module(name)
            kwargs = mod.DRY_RUN if a.dry_run and hasattr(mod, "DRY_RUN") else {}
            mod.run(time_us, record, device=device, **kwargs)
        except Exception:  # keep the other benches; the failure is reported and fails the run
            traceback.print_exc()
            failures.append(name)
        print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)

    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
    }
    os.makedirs(a.out_dir, exist_ok=True)
    groups = {a.prefix: [r for r in records if r["bench"] in MAIN]}
    for r in records:
        if r["bench"] not in MAIN:
            key = f"{a.prefix}_{'packing' if r['bench'] in ('pack', 'unpack') else r['bench']}"
            groups.setdefault(key, []).append(r)
    for key, recs in groups.items():
        with open(os.path.join(a.out_dir, f"{key}.json"), "w") as f:
            json.dump({**meta, "records": recs}, f, indent=1)
    from report import table
    print(table(records))
    if failures:
        print("FAILED benches:", ", ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
