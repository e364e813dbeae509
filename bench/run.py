"""The benchmark suite: one process, every case against its baselines.

    PYTHONPATH=python python3 bench/run.py --prefix h200 --out-dir bench/results --budget-s 470   # on the GPU
    PYTHONPATH=python python3 bench/run.py --dry-run --out-dir /tmp/b                             # CPU smoke test

Modules run in priority order (``MODULES``): ceiling (device copy and cuBLAS
fp16: measured first), dequant, gemv, linear, embedding_bag, decode, host, then
the studies layout and packing (low priority). ``--only a,b`` picks modules
(still run in that priority order). ``--budget-s S``: a low-priority module is
skipped when its estimate (``ESTIMATE_S`` of the module) would end it past S
seconds; any module is skipped once S has passed; a module's optional parts
(later shapes of gemv / linear) are skipped when the time left is what the
modules after it are estimated to need (:func:`common.past_soft_deadline`).
What is skipped is printed and listed in the JSON (``"skipped"``). ``--jobs N``:
first, N processes compile the package kernels of gemv / linear / host
(bench/precompile.py; Triton's disk cache), nothing timed meanwhile; the
modules' estimates then drop by their ``COMPILE_S``.

Writes ``<out-dir>/<prefix>.json`` (benches ``MAIN``), ``<prefix>_layout.json`` and
``<prefix>_packing.json`` for the studies, rewritten after every module (a run
cut short keeps what finished), and prints one table last (``report.table``:
per case ours in us, % of copy or speedup over cuBLAS fp16 / the fp16 model, and
each target of ``report.TARGETS`` MET or MISSED with its margin).
``bench/plot.py`` turns the JSON into the PNG and the README table.

Schema: {"device", "torch", "triton", "date", "elapsed_s", "skipped", "failed",
"module_s", "records": [{"bench", "nbit", "shape", "impl", "us", ...extra}]};
impl one of ours, ours-prepacked (gemv: the tensor-core kernel on prepacked
weights at M = 1; host: ops.linear on prepacked weights), ours-plain (linear,
decode: plain weights, the launch table's route), naive-triton, torch-compile,
torch-eager, cublas-fp16, dequant-cublas, copy (a device copy moving the case's
bytes), fp16 (decode: the same model with fp16 nn.Linear layers), and for bench
"host" torch-matmul, f-linear, nn-linear, quantized-linear. Bench "ceiling":
impl copy (extra gbps) and cublas-fp16 (extra tflops).
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

T_START = time.monotonic()

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

MAIN = ("ceiling", "dequant", "dequant_rows", "gemv", "linear", "embedding_bag", "decode", "host")
MODULES = ["ceiling", "dequant", "gemv", "linear", "embedding_bag", "decode", "host", "layout", "packing"]
LOW_PRIORITY = ("layout", "packing")
DEFAULT_BUDGET_S = 470  # the lead's one GPU call is <= ~540 s wall, process start and JSON writing included


def _write(out_dir, prefix, records, meta):
    os.makedirs(out_dir, exist_ok=True)
    groups = {prefix: [r for r in records if r["bench"] in MAIN]}
    for r in records:
        if r["bench"] not in MAIN:
            key = f"{prefix}_{'packing' if r['bench'] in ('pack', 'unpack') else r['bench']}"
            groups.setdefault(key, []).append(r)
    for key, recs in groups.items():
        path = os.path.join(out_dir, f"{key}.json")
        with open(path + ".tmp", "w") as f:
            json.dump({**meta, "records": recs}, f, indent=1)
        os.replace(path + ".tmp", path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--only", default=",".join(MODULES), help="comma-separated bench modules")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (interpreter), no timing value")
    p.add_argument("--prefix", default="h200")
    p.add_argument("--jobs", type=int, default=None,
                   help="processes that compile the package kernels of gemv / linear / host before the run "
                        "(bench/precompile.py; default: CPU count - 2, at most 14, on a GPU; 0 in --dry-run; 0: off; "
                        "in --dry-run N > 0 compiles the dry-run cases for sm_90, a test of the step)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"time budget of the run in s (default {DEFAULT_BUDGET_S} on a GPU, none in --dry-run; "
                        f"0: none)")
    a = p.parse_args()
    if a.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton

    import common

    budget = a.budget_s if a.budget_s is not None else (0 if a.dry_run else DEFAULT_BUDGET_S)
    end = T_START + budget if budget > 0 else float("inf")
    device = "cpu" if a.dry_run else "cuda"
    records: list = []

    def record(**r):
        records.append(r)
        extra = {k: v for k, v in r.items() if k not in ("bench", "nbit", "shape", "impl", "us", "runs", "configs")}
        print(f"  {r['bench']:>14} nbit={r['nbit']} {r['shape']:<40} {r['impl']:<16} {r['us']:10.1f} us {extra}",
              flush=True)

    if a.dry_run:
        def time_us(fn, graph=False):
            t = time.perf_counter()
            fn()
            return 1e6 * (time.perf_counter() - t)
    else:
        time_us = common.make_time_us()

    wanted = [m.strip() for m in a.only.split(",") if m.strip()]
    unknown = [m for m in wanted if m not in MODULES]
    if unknown:
        p.error(f"--only: unknown modules {unknown}; known: {','.join(MODULES)}")
    names = [m for m in MODULES if m in wanted]
    mods = {name: importlib.import_module(name) for name in names}
    est = {name: getattr(mods[name], "ESTIMATE_S", 30) for name in names}
    print(f"modules: {', '.join(f'{n} (~{est[n]} s)' for n in names)}; estimated {sum(est.values())} s on the GPU; "
          f"budget {budget or 'none'} s", flush=True)
    meta = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.date.today().isoformat(),
    }
    jobs = a.jobs if a.jobs is not None else (0 if a.dry_run else max(0, min(14, (os.cpu_count() or 2) - 2)))
    if jobs > 0:
        from precompile import precompile
        from triton_dequant.kernels import _plan
        # (in --dry-run: compiled for sm_90 on the CPU, a test of the step; the interpreter runs the kernels)
        target = _plan.cuda_target(90, 132) if a.dry_run else _plan.target_of(torch.device("cuda"))
        print(f"== precompile (at {time.monotonic() - T_START:.0f} s)", flush=True)
        try:
            pc = meta["precompile"] = precompile(mods, a.dry_run, target, jobs)
            if pc["kernels"] and pc["compiled"] >= 0.9 * pc["kernels"]:
                for n in names:  # their compiles are done: the budget counts the rest
                    est[n] -= getattr(mods[n], "COMPILE_S", 0)
                print("estimates after precompile: " + ", ".join(f"{n} ~{est[n]} s" for n in names), flush=True)
        except Exception:  # the run compiles everything itself then
            traceback.print_exc()
    failures, skipped, module_s = [], [], {}
    for i, name in enumerate(names):
        now = time.monotonic()
        later = sum(est[n] for n in names[i + 1:] if n not in LOW_PRIORITY)
        if now > end or (name in LOW_PRIORITY and now + est[name] > end):
            why = (f"{now - T_START:.0f} s elapsed of the {budget:.0f} s budget, estimate {est[name]} s")
            print(f"== {name} SKIPPED ({why})", flush=True)
            skipped.append(name)
            continue
        # optional parts of this module stop where the modules after it still need their estimate
        common.set_soft_deadline(end - later - est[name] / 2)
        print(f"== {name} (at {now - T_START:.0f} s)", flush=True)
        t0 = time.monotonic()
        try:
            mod = mods[name]
            kwargs = mod.DRY_RUN if a.dry_run and hasattr(mod, "DRY_RUN") else {}
            mod.run(time_us, record, device=device, **kwargs)
        except Exception:  # keep the other benches; the failure is reported and fails the run
            traceback.print_exc()
            failures.append(name)
        module_s[name] = round(time.monotonic() - t0, 1)
        print(f"== {name} done in {module_s[name]:.0f} s (estimate {est[name]} s)", flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()
        _write(a.out_dir, a.prefix, records,
               {**meta, "elapsed_s": round(time.monotonic() - T_START, 1), "skipped": skipped,
                "failed": failures, "module_s": module_s})
    _write(a.out_dir, a.prefix, records,
           {**meta, "elapsed_s": round(time.monotonic() - T_START, 1), "skipped": skipped, "failed": failures,
            "module_s": module_s})
    print("module times (s): " + ", ".join(f"{n} {t:.0f} (est {est[n]})" for n, t in module_s.items())
          + f"; total {time.monotonic() - T_START:.0f} s", flush=True)
    if skipped:
        print("SKIPPED modules (budget):", ", ".join(skipped))
    if failures:
        print("FAILED benches:", ", ".join(failures))
    from report import table
    print(table(records), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
