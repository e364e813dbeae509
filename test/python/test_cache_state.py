"""The lowering state (layout step on/off, store policy, portable switch, and the
environment variables behind them) is part of Triton's kernel cache key at every
compile: no kernel compiled in one state is served in another, in one process or
across processes sharing TRITON_CACHE_DIR (triton_dequant.state).

Each compile is checked by its IR: the stock kernel keeps one ``ttg.convert_layout``,
the layout step removes it, the portable lowering has no ``tt.elementwise_inline_asm``.
Compiled on the CPU for sm_90: in this process through ``triton.compile(ASTSource)``
(``compile_for``); in subprocesses (no interpreter) also through ``kernel.warmup``,
the path of ``kernel[grid](...)``, with a compile-only driver.
"""
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs
from triton.runtime.jit import JITFunction

import triton_dequant  # noqa: F401
from triton_dequant import language, layout, state
from triton_dequant.testing import compile_for

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
SIG = {"x_ptr": "*i32", "y_ptr": "*fp16", "n": "i32"}
CONST = {"BLOCK": 1024, "NBIT": 4, "PER": 8}


def _dq_store(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    y = tl.dequantize(x, 0.5, -8.0, NBIT)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + o, y, mask=o < n * PER)


def _unpack(x, NBIT: tl.constexpr):
    return tl.dequantize(x, 0.5, -8.0, NBIT)


_unpack_jit = JITFunction(_unpack)  # (JITFunction objects even where @triton.jit makes interpreter ones)


def _dq_caller(x_ptr, y_ptr, n, BLOCK: tl.constexpr, NBIT: tl.constexpr, PER: tl.constexpr):
    """tl.dequantize only through a jit helper: the caller's key must follow too."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n)
    o = tl.program_id(0) * BLOCK * PER + tl.arange(0, BLOCK * PER)
    tl.store(y_ptr + o, _unpack_jit(x, NBIT), mask=o < n * PER)


def facts(kernel) -> dict:
    ttgir = kernel.asm["ttgir"]
    return {"cvt": len(re.findall(r"\bttg\.convert_layout\b", ttgir)),
            "asm": "tt.elementwise_inline_asm" in ttgir, "hash": kernel.hash}


def expected(portable: bool, mode: str) -> dict:
    """What the IR of these kernels shows in each state (sm_90, 1024 int4 words, 4 warps)."""
    if portable:
        return {"cvt": 1, "asm": False}  # plain tl ops (the layout step only acts on the asm marker)
    return {"cvt": 0 if mode == "narrow" else 1, "asm": True}  # ("stock" keeps this 1-D store's conversion)


_OURS = (state.ENV_LAYOUT, state.ENV_PORTABLE, "TRITON_ALWAYS_COMPILE")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A fresh cache directory, the switches following an environment without
    our variables; everything restored afterwards. Compiles are recorded as cache
    hits or misses (Triton's compilation listener)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    env = {var: os.environ.pop(var, None) for var in _OURS}
    saved = state.switches()
    state.restore((None, None, "narrow"))
    hits = []
    listener = knobs.compilation.listener
    knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    yield hits
    knobs.compilation.listener = listener
    for var, value in env.items():
        os.environ.pop(var, None) if value is None else os.environ.__setitem__(var, value)
    monkeypatch.undo()
    state.restore(saved)


# (action, then the state: portable, layout) -- each action is applied, then the kernel compiled
STEPS = [("nothing", False, "off"), ("layout.enable", False, "narrow"), ("layout.disable", False, "off"),
         ("layout.enable", False, "narrow"), ("use_portable(True)", True, "narrow"),
         ("use_portable(None)", False, "narrow"), ("layout.reset", False, "off"),
         ("env TRITON_DEQUANT_PORTABLE=1", True, "off"), ("env TRITON_DEQUANT_LAYOUT=1", True, "narrow"),
         ("env TRITON_DEQUANT_PORTABLE=0", False, "narrow"), ("set_store_policy(stock)", False, "stock"),
         ("set_store_policy(narrow)", False, "narrow")]


def apply(action: str) -> None:
    if action.startswith("layout."):
        getattr(layout, action.split(".")[1])()
    elif action.startswith("use_portable("):
        language.use_portable({"True": True, "False": False, "None": None}[action[13:-1]])
    elif action.startswith("set_store_policy("):
        layout.set_store_policy(action[17:-1])
    elif action.startswith("env "):
        name, value = action[4:].split("=")
        os.environ[name] = value
    else:
        assert action == "nothing"


@pytest.mark.parametrize("kernel", [_dq_store, _dq_caller], ids=["direct", "through-a-helper"])
def test_state_in_one_process(fresh, kernel):
    fn = JITFunction(kernel)  # one object: Triton memoises its cache key on first use
    keys = {}
    for action, portable, mode in STEPS:
        apply(action)
        k = facts(compile_for(fn, SIG, CONST, aligned=(0, 1, 2)))
        assert {"cvt": k["cvt"], "asm": k["asm"]} == expected(portable, mode), f"after {action}: {k}"
        assert language.lowering_state() == state.LoweringState(portable, mode)
        assert keys.setdefault((portable, mode), k["hash"]) == k["hash"], action  # one key per state...
    assert len(set(keys.values())) == len(keys) == 5  # ...and a different one for each state
    first = [(p, m) not in {(q, n) for _, q, n in STEPS[:i]} for i, (_, p, m) in enumerate(STEPS)]
    assert fresh == [not f for f in first]  # compiled once per state, from the cache when it comes back
    assert fn in state.tracked() and (kernel is _dq_store or _unpack_jit in state.tracked())


def test_registry_is_weak_and_sparse(fresh):
    fn = JITFunction(_dq_caller)
    plain = JITFunction(_plain)
    fn.cache_key, plain.cache_key
    assert fn in state.tracked() and _unpack_jit in state.tracked() and plain not in state.tracked()
    assert fn.pre_run_hooks == [state._pre_run]  # the launch path refreshes the state
    before = fn.cache_key
    layout.enable()
    assert fn.hash is None and fn.cache_key != before  # reset, recomputed with the new state
    ref = weakref.ref(fn)
    del fn
    gc.collect()  # (a JITFunction sits in reference cycles)
    assert ref() is None and all(f.__name__ != "_dq_caller" for f in state.tracked())


def test_sources_in_the_key():
    mods = state.lowering_modules()
    for m in ("language", "ptx", "reference", "state", "layout", "layout.rewrite", "layout.hook"):
        assert f"triton_dequant.{m}" in mods
    assert not any(m.startswith(("triton_dequant.kernels", "triton_dequant.ops")) for m in mods)


def _plain(x_ptr, y_ptr):
    tl.store(y_ptr + tl.arange(0, 8), tl.load(x_ptr + tl.arange(0, 8)))


# --- across processes --------------------------------------------------------------------------

WORKER = textwrap.dedent('''
    import json, os, re, sys
    import torch, triton, triton.language as tl
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    slot_before = knobs.runtime.add_stages_inspection_hook
    import triton_dequant
    from triton_dequant import layout
    sys.path.insert(0, sys.argv[1])
    import test_cache_state as t

    class CompileOnly:  # enough of a driver for JITFunction.warmup to compile for sm_90 on a CPU
        def get_current_target(self): return GPUTarget("cuda", 90, 32)
        def get_current_device(self): return 0
        def get_current_stream(self, device=None): return 0
    driver.set_active(CompileOnly())
    hits = []
    knobs.compilation.listener = lambda **kw: hits.append(kw["cache_hit"])
    out = {"hook_at_import": knobs.runtime.add_stages_inspection_hook is not None and slot_before is None,
           "steps": []}
    ast_fn, jit_fn = triton.JITFunction(t._dq_store), triton.JITFunction(t._dq_caller)
    x, y = torch.empty(1024, dtype=torch.int32), torch.empty(8192, dtype=torch.float16)
    for action in json.loads(sys.argv[2]):
        t.apply(action)
        a = t.facts(t.compile_for(ast_fn, t.SIG, t.CONST, aligned=(0, 1, 2)))
        j = t.facts(jit_fn.warmup(x, y, 1024, grid=(1,), **t.CONST))
        out["steps"].append({"action": action, "state": list(triton_dequant.language.lowering_state()),
                             "ast": a, "jit": j, "hits": hits[-2:]})
    print(json.dumps(out))
''')


def _spawn(actions, cache_dir, env_extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", state.ENV_LAYOUT, state.ENV_PORTABLE, "TRITON_ALWAYS_COMPILE")}
    env.update(TRITON_CACHE_DIR=cache_dir, PYTHONPATH=os.path.join(ROOT, "python"), **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", WORKER, os.path.dirname(__file__), json.dumps(actions)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


def _check(run, first_on):
    """Every compile of a worker run reflects the state it was made in."""
    by_state = {}
    mode, portable = "narrow" if first_on else "off", False
    for step in run["steps"]:
        action = step["action"]
        mode = {"layout.enable": "narrow", "layout.disable": "off"}.get(action, mode)
        portable = {"use_portable(True)": True, "use_portable(None)": False}.get(action, portable)
        assert step["state"] == [portable, mode], step
        for path in ("ast", "jit"):
            k = step[path]
            assert {"cvt": k["cvt"], "asm": k["asm"]} == expected(portable, mode), f"{path} after {action}: {k}"
            assert by_state.setdefault((path, portable, mode), k["hash"]) == k["hash"], f"{path} after {action}"
    return by_state


def test_state_across_processes(tmp_path):
    """Two processes compile the same kernels in different orders of the states at
    the same time into one fresh cache directory (the second starts with
    TRITON_DEQUANT_LAYOUT=1); then a third, which must get every kernel from the
    cache, each the one of its state."""
    cache = str(tmp_path / "cache")
    seq_a = ["nothing", "layout.enable", "layout.disable", "use_portable(True)", "use_portable(None)"]
    seq_b = ["nothing", "layout.disable", "use_portable(True)", "use_portable(None)", "layout.enable"]
    a, b = _spawn(seq_a, cache), _spawn(seq_b, cache, {state.ENV_LAYOUT: "1"})
    run_a, run_b = _result(a), _result(b)
    assert not run_a["hook_at_import"] and run_b["hook_at_import"]  # the hook only while the step is on
    keys_a, keys_b = _check(run_a, first_on=False), _check(run_b, first_on=True)
    assert keys_a == keys_b  # the same key for the same state in both processes
    assert len(set(keys_a.values())) == len(keys_a) == 6  # (2 paths x 3 states with a kernel of their own)
    run_c = _result(_spawn(seq_a, cache))
    assert _check(run_c, first_on=False) == keys_a
    assert all(step["hits"] == [True, True] for step in run_c["steps"])


# --- the interpreter's leftovers (conftest.restore_triton_language) ------------------------------

@triton.jit
def _interpreted_sum(x_ptr, y_ptr, N: tl.constexpr):
    tl.store(y_ptr, tl.sum(tl.load(x_ptr + tl.arange(0, N)), axis=0))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter runs only on CPU machines here")
def test_compiles_after_an_interpreted_tl_sum(fresh):
    from conftest import restore_triton_language
    x, y = torch.arange(16, dtype=torch.float32), torch.empty(1)
    _interpreted_sum[(1,)](x, y, N=16)
    assert float(y) == 120.0
    restore_triton_language()  # what the conftest fixture does between tests
    assert facts(compile_for(JITFunction(_dq_store), SIG, CONST, aligned=(0, 1, 2)))["cvt"] == 1
