"""Every plan the ops can choose compiles for sm_80 and sm_90 (on this CPU).

The sweep (``triton_dequant.inspect.sweep``) crosses each op's axes -- for linear:
container x nbit x signed x x dtype x scale dtype x scale mode (per channel after
the reduction or inside the asm, per group, per group row) x M in {1, 2, 3, 4, 5, 16,
64, 128} x packed dim x shape x arch -- maps every case through the op's own plan
function and compiles each distinct kernel once. CI compiles a pairwise covering
array (every value of every axis and every pair of values of two axes at least
once) plus the calls that once failed; ``python -m triton_dequant.inspect sweep
--full`` compiles the whole product, ``--strength 3`` every triple."""
import itertools
import json
import os
import subprocess
import sys

import pytest

from triton_dequant import inspect as tdi

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _pairs_covered(axes, rows):
    names = list(axes)
    for a, b in itertools.combinations(names, 2):
        seen = {(r[a], r[b]) for r in rows}
        want = set(itertools.product(axes[a], axes[b]))
        assert want <= seen, (a, b, sorted(want - seen, key=str)[:5])


@pytest.mark.parametrize("op", tdi.SWEEP_OPS)
def test_sweep_is_a_pairwise_covering_array(op):
    axes = tdi.AXES[op]
    rows = [c for o, c in tdi.sweep_cases((op,)) if o == op]
    _pairs_covered(axes, rows)
    assert len(rows) * 10 < len(list(itertools.product(*axes.values())))  # far fewer than the product


def test_covering_array_strength_3():
    axes = dict(a=[0, 1, 2], b=[0, 1], c=[0, 1, 2], d=[0, 1])
    rows = tdi.covering_array(axes, strength=3)
    for g in itertools.combinations(axes, 3):
        assert {tuple(r[k] for k in g) for r in rows} == set(itertools.product(*(axes[k] for k in g)))
    assert len(rows) < 36 and tdi.covering_array(axes, strength=3) == rows  # smaller than the product; deterministic


def test_sweep_realizes_the_modes():
    """Each case plans to the kernel variant it names (unique_kernels checks the
    scale mode of linear and PER_OUTPUT of dequantize) and the regression calls
    take the GEMV with raw codes and a small XSHIFT (the asm that did not compile)."""
    items, planned = tdi.unique_kernels(tdi.sweep_cases())
    assert planned >= len(items) > 100
    names = {it[3] for it in items}
    assert {"gemv_kernel", "mm_kernel", "mma_prepacked_kernel", "_dequant_last", "_dequant_mid", "_dequant_rows",
            "_embedding_bag_kernel"} <= names
    for op, case in tdi.REGRESSIONS:
        plan, _ = tdi.plan_of(op, **tdi._case_call(op, case))
        c = plan.kernels[0].constexprs
        assert plan.kernels[0].name == "gemv_kernel" and c["SCALE"] == 0 and c["XSHIFT"] in (1, 2, 3)


def test_config_cases_select_their_option():
    want = [("gemv_kernel", "REDUCE", 2), ("mm_kernel", "REDUCE", 2), ("gemv_kernel", "MODE", 0),
            ("gemv_kernel", "PREFETCH", True), ("mm_kernel", "BM", 16)]
    got = []
    for op, case in tdi.CONFIG_CASES[::2]:  # one per architecture pair
        k = tdi.plan_of(op, **tdi._case_call(op, case))[0].kernels[0]
        got.append(k)
    assert [(k.name, k.constexprs[c]) for k, (_, c, _) in zip(got, want)] == [(n, v) for n, _, v in want]
    assert all(k.constexprs["SPLIT"] > 1 for k in got[:2])  # split-K, where REDUCE matters


def test_every_plan_compiles():
    """The CI sweep: every distinct kernel of the pairwise covering array, compiled
    for its architecture in a process without TRITON_INTERPRET (2 workers)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "triton_dequant.inspect", "sweep", "-j", "2"], capture_output=True,
                       text=True, env=env, timeout=1800)
    assert r.stdout, r.stderr[-4000:]
    res = json.loads(r.stdout)
    assert not res["failed"], json.dumps(res["failed"][:5], indent=1)
    assert r.returncode == 0
    assert res["compiled"] == res["unique_kernels"] > 100
    for op in tdi.SWEEP_OPS:
        assert res["per_op"][op]["kernels"] > 0
    print(f"\nsweep: {res['cases']} cases, {res['unique_kernels']} kernels compiled in {res['wall_s']} s "
          f"({res['compile_s']} s of compiles)")
