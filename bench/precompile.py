"""Compile the bench's package kernels in parallel worker processes before the run (run.py ``--jobs``).

A bench module that can list the kernels it will launch has
``plan_kernels(target, **run_kwargs) -> [Kernel]`` (planned on meta tensors:
no GPU, no data; see ``linear.meta_kernels``): gemv, linear, host. Their
kernels (deduplicated by their launch key) are compiled by ``jobs`` spawned
processes with :func:`triton_dequant.kernels._plan.compile_kernel` for the GPU's
target, which writes Triton's on-disk cache; when the run then launches a
kernel, the same ``triton.compile`` call finds it there (tens of ms instead of
~1 s). Nothing is timed while the workers run (run.py waits for them), so their
CPU load does not disturb the measurements. A kernel the workers miss or fail on
is compiled by the run itself, as without this step: the results do not depend
on it, only the wall time does. Other kernels (dequant, embedding bag, decode,
the baselines' own ``@triton.jit`` kernels, torch.compile) are compiled by the
run as they come.
"""
from __future__ import annotations

import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _path():
    for p in (HERE, os.path.join(os.path.dirname(HERE), "python")):
        if p not in sys.path:
            sys.path.insert(0, p)


def kernels(name: str, target, dry: bool = False) -> list:
    """The unique kernels of module ``name`` (in a fixed order: the same in every process)
    for its real run (``dry``: for its ``DRY_RUN`` arguments)."""
    _path()
    mod = importlib.import_module(name)
    seen, out = set(), []
    for k in mod.plan_kernels(target, **(getattr(mod, "DRY_RUN", {}) if dry else {})):
        if k.key not in seen:
            seen.add(k.key)
            out.append(k)
    return out


def _work(name: str, target: tuple, dry: bool, indices: list) -> tuple:
    """(compiled, [errors], seconds) for kernels ``indices`` of module ``name`` (the
    arguments are plain values: unpickling them imports nothing before the
    interpreter switch is off)."""
    os.environ.pop("TRITON_INTERPRET", None)
    _path()
    from triton_dequant.kernels import _plan
    t0 = time.time()
    ks = kernels(name, _plan.Target(*target), dry)
    done, errors = 0, []
    for i in indices:
        try:
            _plan.compile_kernel(ks[i], _plan.Target(*target))
            done += 1
        except Exception as e:  # the run compiles (and reports) it itself
            errors.append(f"{name}[{i}] {ks[i].name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    return done, errors, time.time() - t0


def precompile(mods: dict, dry: bool, target, jobs: int, timeout_s: float = 240.0, log=print) -> dict:
    """Compile the kernels of every module in ``mods`` with ``plan_kernels`` on ``jobs``
    processes (``dry``: of their ``DRY_RUN`` cases); returns {"kernels", "compiled",
    "errors", "seconds"}."""
    import concurrent.futures as cf
    import multiprocessing as mp

    t0 = time.time()
    tasks = []
    for name, mod in mods.items():
        if not hasattr(mod, "plan_kernels"):
            continue
        n = len(kernels(name, target, dry))
        log(f"  precompile: {name}: {n} kernels")
        tasks += [(name, i) for i in range(n)]
    res = {"kernels": len(tasks), "compiled": 0, "errors": [], "seconds": 0.0}
    if not tasks or jobs < 1:
        return res
    # interleave the modules, then deal the kernels out in chunks of ~2 per worker pass
    chunk = max(1, min(4, len(tasks) // (2 * jobs)))
    by_mod: dict = {}
    for name, i in tasks:
        by_mod.setdefault(name, []).append(i)
    work = []
    for name, idx in by_mod.items():
        for j in range(0, len(idx), chunk):
            work.append((name, idx[j:j + chunk]))
    pool = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"))
    futs = [pool.submit(_work, name, tuple(target), dry, idx) for name, idx in work]
    try:
        for f in cf.as_completed(futs, timeout=timeout_s):
            try:
                done, errors, _ = f.result()
            except Exception as e:  # a worker that died: the run compiles those kernels itself
                res["errors"].append(f"worker: {type(e).__name__}: {e}")
                continue
            res["compiled"] += done
            res["errors"] += errors
    except cf.TimeoutError:
        res["errors"].append(f"timeout after {timeout_s:.0f} s: the rest is compiled by the run")
    pool.shutdown(wait=False, cancel_futures=True)
    res["seconds"] = round(time.time() - t0, 1)
    log(f"  precompile: {res['compiled']} of {res['kernels']} kernels in {res['seconds']:.0f} s on {jobs} "
        f"processes" + (f"; {len(res['errors'])} errors: " + " | ".join(res["errors"][:5]) if res["errors"] else ""))
    return res
