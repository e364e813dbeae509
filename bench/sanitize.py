#!/usr/bin/env python3
"""Every CUDA op path of triton-dequant once per kernel variant, at small shapes, each
result checked against the CPU reference: the workload of the compute-sanitizer runs
(``bench/gpu_checks.sh``).

    python3 bench/sanitize.py                      # every case (the memcheck run)
    python3 bench/sanitize.py --racecheck          # split-K / atomics / shared-memory kernels only
    python3 bench/sanitize.py --quick              # a handful of cases
    python3 bench/sanitize.py --compile-only -j 8  # only fill TRITON_CACHE_DIR (run it outside the sanitizer)
    python3 bench/sanitize.py --device cpu --dry-run   # the same enumeration, a subset run in Triton's interpreter
    python3 bench/sanitize.py --list               # the cases, not run

**Cases.** The variant axes are those of the compile sweep (``triton_dequant.inspect``:
``DEQUANT_AXES``, ``ROWS_AXES``, ``BAG_AXES``, ``LINEAR_AXES``, ``PREPACKED_AXES``, their
pairwise covering arrays, ``REGRESSIONS`` and ``CONFIG_CASES``), with the architecture axis
fixed to the GPU's, plus explicit split-K configs (partials and fp32 atomics, on the GEMV,
the plain tensor-core kernel and the prepacked one) and, for ``embedding_bag``, the
offsets dtype and ``include_last_offset`` (not sweep axes: assigned in turn). Each sweep
case is mapped to small shapes with tails (odd row counts, K and N not multiples of the
tiles, empty bags) and planned exactly as the op plans it (``inspect.plan_*``, for
``embedding_bag`` the kernel module's own ``_prepare`` on the real tensors); cases whose
plan has the same kernels (launch key) as an earlier case are dropped, so each distinct
kernel runs about once. The count of cases and distinct kernels is printed.

**Checks.** ``dequantize`` / ``dequantize_rows``: bit for bit against
``triton_dequant.reference``. ``embedding_bag``: the tolerance of
``test/python/test_embedding_bag.py`` (fp32 sums: ``1e-5 * sum|terms|``, fp16 output one ulp
more) and exact zeros for empty bags. ``linear``: relative error (norm and max) <= 1e-2
against ``x @ W`` in float64 with ``W`` the exact dequantized weight rounded once to
``x.dtype`` (as ``test_linear.py`` / ``test_mma.py``; 2e-2 for bf16 ``x`` in the interpreter, whose
fp32 -> bf16 casts truncate). On CUDA the public ops run
(``triton_dequant.ops.*``; ``kernels.linear.linear(..., config=...)`` for explicit
configs); with ``--device cpu`` the kernel modules run in Triton's interpreter
(``TRITON_INTERPRET=1``, set before Triton is imported). Prints ``sanitize: N cases, F
failures`` and exits 1 on any failure.

On CUDA the PyTorch caching allocator is off (``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` unless
set; ``--keep-caching`` keeps it), so every tensor is its own allocation and memcheck sees
an access past its end; at exit the package's split-K buffers and torch's caches are freed
so that ``--leak-check full`` reports only real leaks.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import os
import platform
import shutil
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

DRY_RUN_LIMIT = 36   # cases run in the interpreter by --dry-run (spread over the ops)
RACE_LIMIT = 110     # cases of a --racecheck run (split-K first)
SEED = 0


def _parser():
    p = argparse.ArgumentParser(prog="bench/sanitize.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: run the kernels in Triton's interpreter (TRITON_INTERPRET=1)")
    p.add_argument("--dry-run", action="store_true",
                   help=f"a spread subset of the cases (at most --limit, default {DRY_RUN_LIMIT} on the CPU)")
    p.add_argument("--racecheck", action="store_true",
                   help="only split-K / atomic-reduction linear paths and kernels using shared memory")
    p.add_argument("--quick", action="store_true", help="a handful of cases (one per op and kernel)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile every selected kernel (fills TRITON_CACHE_DIR) and exit")
    p.add_argument("-j", "--jobs", type=int, default=0,
                   help="precompile the selected kernels in this many processes first (0: compile at launch)")
    p.add_argument("--list", action="store_true", help="print the selected cases and exit")
    p.add_argument("--ops", default="", help="comma list: dequantize,dequantize_rows,embedding_bag,linear")
    p.add_argument("--limit", type=int, default=None, help="at most this many cases (spread over the list)")
    p.add_argument("--only", type=int, nargs="*", default=None, help="run only these case numbers (1-based, as printed; after the other selections)")
    p.add_argument("--arch", type=int, default=None, help="plan for this compute capability (default: the GPU's; 90 on cpu)")
    p.add_argument("--sms", type=int, default=None, help="plan for this SM count (default: the GPU's; 132 on cpu)")
    p.add_argument("--keep-caching", action="store_true", help="leave PyTorch's CUDA caching allocator on")
    p.add_argument("-v", "--verbose", action="store_true", help="print the kernels of every case")
    return p


ARGS = None  # parsed in main(); the module is also imported by the compile workers


# --- lazy imports (TRITON_INTERPRET must be decided before triton is imported) -----------------

def _mods():
    import torch  # noqa: F401
    from triton_dequant import inspect as tdi, layouts, ops, reference as ref
    from triton_dequant.kernels import _plan, dequant as kdq, embedding_bag as keb, linear as kl
    return dict(tdi=tdi, layouts=layouts, ops=ops, ref=ref, plan=_plan, kdq=kdq, keb=keb, kl=kl)


# --- the cases ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    op: str          # dequantize, dequantize_rows, embedding_bag, linear, linear_prepacked
    p: dict          # small-shape parameters (picklable: plain values)
    origin: str      # "sweep", "regression", "config", "split-k"
    plan: object = None
    keys: tuple = ()
    label: str = ""


def _up(v: int, m: int) -> int:
    return -(-v // m) * m


def sweep_rows(tdi, op: str) -> list:
    """The pairwise covering array of ``op``'s sweep axes without the arch axis."""
    axes = {k: v for k, v in tdi.AXES[op].items() if k != "arch"}
    return tdi.covering_array(axes, 2, SEED)


# explicit split-K configs (REDUCE_PARTIALS = 1, REDUCE_ATOMIC = 2) on every kernel family
_LIN = dict(container="int32", nbit=4, signed=False, dtype="fp16", scale_dtype="fp16", packed_dim=0, bias=False)
SPLIT_K = [
    ("linear", dict(_LIN, M=1, scale="channel", shape="ragged", config=dict(split=4, reduce=1))),
    ("linear", dict(_LIN, M=1, scale="channel", shape="ragged", config=dict(split=4, reduce=2))),
    ("linear", dict(_LIN, M=3, dtype="bf16", scale_dtype="fp32", scale="group", shape="even",
                    config=dict(split=3, reduce=2))),
    ("linear", dict(_LIN, M=2, container="uint8", packed_dim=1, scale="group_rows", shape="even", bias=True,
                    config=dict(split=2, reduce=2))),
    ("linear", dict(_LIN, M=4, container="int16", nbit=2, signed=True, scale="channel_asm", shape="ragged",
                    config=dict(split=3, reduce=1))),
    ("linear", dict(_LIN, M=1, nbit=8, scale="channel", shape="even", config=dict(split=2, reduce=2, prefetch=True))),
    ("linear", dict(_LIN, M=16, scale="channel", shape="ragged", config=dict(split=2, reduce=1))),
    ("linear", dict(_LIN, M=16, scale="channel", shape="even", config=dict(split=4, reduce=2))),
    ("linear", dict(_LIN, M=33, dtype="bf16", scale_dtype="bf16", packed_dim=1, scale="group", shape="ragged",
                    config=dict(split=3, reduce=2))),
    ("linear", dict(_LIN, M=100, container="uint8", nbit=8, signed=True, scale="group_rows", shape="even",
                    bias=True, config=dict(split=2, reduce=1))),
    ("linear_prepacked", dict(nbit=4, signed=True, dtype="fp16", scale_dtype="fp16", scale="channel_asm", M=5,
                              shape="ragged", bias=False, config=dict(split=2, reduce=2))),
    ("linear_prepacked", dict(nbit=4, signed=False, dtype="bf16", scale_dtype="fp32", scale="group", M=17,
                              shape="ragged", bias=True, config=dict(split=3, reduce=1))),
    ("linear_prepacked", dict(nbit=8, signed=False, dtype="fp16", scale_dtype="bf16", scale="channel", M=70,
                              shape="even", bias=False, config=dict(bm=64, num_warps=8, split=2, reduce=1))),
    ("linear_prepacked", dict(nbit=2, signed=False, dtype="fp16", scale_dtype="fp16", scale="group_rows", M=40,
                              shape="even", bias=True, config=dict(split=2, reduce=2))),
    ("linear_prepacked", dict(nbit=4, signed=False, dtype="fp16", scale_dtype="fp16", scale="group", M=130,
                              shape="even", bias=False, config=dict(split=2, reduce=2))),
]


def raw_cases(tdi) -> list:
    """(op, params, origin) before planning: sweep rows, regressions, config cases, split-K."""
    out = []
    for op in ("dequantize", "dequantize_rows", "embedding_bag", "linear", "linear_prepacked"):
        out += [(op, r, "sweep") for r in sweep_rows(tdi, op)]
    out += [(op, dict(r, bias=False), "regression") for op, r in _no_arch_pairs(tdi.REGRESSIONS)]
    out += [(op, dict(r, bias=False), "config") for op, r in _no_arch_pairs(tdi.CONFIG_CASES)]
    out += [(op, dict(r), "split-k") for op, r in SPLIT_K]
    # what no sweep axis varies, assigned in turn: bag offsets dtype / include_last_offset /
    # weight dtype; plain-weight bias; dequantize shift kind
    n_bag = n_lin = n_dq = 0
    res = []
    for op, r, origin in out:
        r = dict(r)
        if op == "embedding_bag":
            r.setdefault("offset_dtype", r["index_dtype"] if n_bag % 3 else
                         {"int32": "int64", "int64": "int32"}[r["index_dtype"]])
            r.setdefault("include_last_offset", n_bag % 2 == 1)
            r.setdefault("weight_dtype", "fp16" if n_bag % 4 == 3 else "fp32")
            n_bag += 1
        elif op == "linear":
            r.setdefault("bias", n_lin % 5 == 4)
            n_lin += 1
        elif op == "dequantize":
            r.setdefault("shift", "number" if (r["scale"] != "number" and n_dq % 4 == 1) else r["scale"])
            n_dq += 1
        res.append((op, r, origin))
    return res


def _no_arch_pairs(pairs):
    out, seen = [], set()
    for op, r in pairs:
        r2 = {k: v for k, v in r.items() if k != "arch"}
        key = (op, repr(sorted(r2.items(), key=lambda kv: kv[0])))
        if key not in seen:
            seen.add(key)
            out.append((op, r2))
    return out


# --- small shapes ----------------------------------------------------------------------------------

BITS = {"int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32, "uint32": 32}
DQ_LAST = {"even": 64, "ragged": 37}          # packed elements along the last dim
DQ_MID = {"even": (3, 8, 16), "ragged": (3, 7, 5)}  # (outer, packed along dim 1, inner)
ROWS_N = {1024: 128, 1000: 45, 96: 96}        # codes per row for the sweep's n_codes
ROWS_R = 5
BAG_N = {128: 128, 512: 512, 100: 37}
BAG_T = 29                                    # table rows


def linear_shape(p: dict, per: int, prepacked: bool) -> tuple:
    """(K, N) of a small linear case: "even" multiples of every tile, "ragged" tails
    (K a multiple of 128 only where groups of 128 need it), "wide" a short K (no
    split-K) and more output tiles."""
    grouped = p["scale"] in ("group", "group_rows")
    kq = per if (not prepacked and p["packed_dim"] == 0) else 1
    nq = per if (not prepacked and p["packed_dim"] == 1) else 1
    kind = p["shape"]
    if kind == "even":
        return 512, 256
    if kind == "ragged":
        K = 384 if grouped else _up(300, kq)
        N = _up(200, nq)
        return K, (N + nq if N % 128 == 0 else N)
    return (256 if grouped else _up(64, kq)), _up(1000, nq)


def linear_call(p: dict, arch: int, sms: int, tdi) -> dict:
    """The ``inspect.plan_linear`` arguments of a small linear case (group_size 0: per channel)."""
    prepacked = "packed_dim" not in p
    per = 32 // p["nbit"] if prepacked else BITS[p["container"]] // p["nbit"]
    K, N = linear_shape(p, per, prepacked)
    call = dict(M=p["M"], K=K, N=N, nbit=p["nbit"], dtype=p["dtype"], scale_dtype=p["scale_dtype"],
                signed=p["signed"], bias=bool(p.get("bias")), arch=arch, num_sms=sms)
    if prepacked:
        call["layout"] = "default"
    else:
        call.update(container=p["container"], packed_dim=p["packed_dim"])
    config = dict(p.get("config") or {})
    if p["scale"] == "channel_asm":
        config["post"] = False
    if config:
        call["config"] = config
    if p["scale"] in ("channel", "channel_asm"):
        call["group_size"] = 0
    elif p["scale"] == "group":
        call["group_size"] = 128
    else:
        call["group_size"] = tdi._rows_group(call)  # a group size the plan takes one scale row per tile row for
    return call


def dequant_call(p: dict, arch: int, sms: int) -> dict:
    per = BITS[p["container"]] // p["nbit"]
    if p["dim"] == "last":
        n = DQ_LAST[p["shape"]]
        shape, dim = (3, n), -1
        kinds = {"number": (), "row": (3, 1), "output": (n * per,)}
    else:
        o, n, i = DQ_MID[p["shape"]]
        shape, dim = (o, n, i), 1
        kinds = {"number": (), "row": (o, 1, i), "output": (n * per, 1)}
    sd = p["dtype"] if p["scale"] == "number" else p["scale_dtype"]      # a number: a 0-d tensor of dtype
    hd = p["dtype"] if p["shift"] == "number" else p["scale_dtype"]
    return dict(shape=shape, nbit=p["nbit"], container=p["container"], dtype=p["dtype"], scale_dtype=sd,
                scale_shape=kinds[p["scale"]], shift_dtype=hd, shift_shape=kinds[p["shift"]], dim=dim,
                signed=p["signed"], arch=arch, num_sms=sms)


def rows_call(p: dict, arch: int, sms: int) -> dict:
    return dict(rows=ROWS_R, n_codes=ROWS_N[p["n_codes"]], nbit=p["nbit"], container=p["container"],
                dtype=p["dtype"], signed=p["signed"], row_align=p["row_align"], arch=arch, num_sms=sms)


def bag_lengths(lookups: int) -> list:
    """Bag lengths with a mean near ``lookups``: empty bags (middle and last), 1, more than 2x."""
    return [lookups, 0, 1, 2 * lookups + 1, max(lookups - 1, 0), 0]


# --- inputs (CPU tensors, deterministic per case) ----------------------------------------------------

def _gen(seed):
    import torch
    return torch.Generator().manual_seed(seed)


def _container(name):
    import torch
    return {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "uint16": torch.uint16,
            "int32": torch.int32, "uint32": torch.uint32}[name]


def _dt(name):
    import torch
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
            "int32": torch.int32, "int64": torch.int64}[name]


def random_words(shape, container: str, g):
    """Random bits filling every element of ``container`` (unsigned views of signed bits)."""
    import torch
    w = BITS[container]
    signed = {8: torch.int8, 16: torch.int16, 32: torch.int32}[w]
    t = torch.randint(-(1 << (w - 1)), 1 << (w - 1), tuple(shape), generator=g, dtype=torch.int64).to(signed)
    return t.view(_container(container))


def make_dequantize(p, call, seed):
    import torch
    g = _gen(seed)
    packed = random_words(call["shape"], p["container"], g)

    def val(kind, shape, dtype, is_scale):
        if kind == "number":
            return 0.37 if is_scale else -1.25
        t = torch.rand(shape, generator=g) * 1.5 + 0.25 if is_scale else torch.randn(shape, generator=g) * 2
        return t.to(_dt(dtype))
    scale = val(p["scale"], call["scale_shape"], call["scale_dtype"], True)
    shift = val(p["shift"], call["shift_shape"], call["shift_dtype"], False)
    return dict(packed=packed, scale=scale, shift=shift)


def make_rows(container: str, R: int, E: int, g):
    """``[R, E]`` row-fused rows: random fp16 scale/shift header (formats: 4 bytes, scale
    first, little endian), random data bits."""
    import torch
    w = BITS[container]
    head = torch.randn(R, 2, generator=g).half()                # finite, both signs
    hdr = head.view(torch.uint8).reshape(R, 4)
    data = random_words((R, E - 32 // w), container, g)
    hdr = hdr.view(torch.int8).view(_container(container)) if w == 8 else \
        hdr.contiguous().view({16: torch.int16, 32: torch.int32}[w]).view(_container(container))
    return torch.cat([hdr, data], 1).contiguous()


def make_bag(p, seed, tdi):
    import torch
    g = _gen(seed)
    n_codes = BAG_N[p["n_codes"]]
    E = tdi._row_elems(n_codes, p["nbit"], _container(p["container"]), p["row_align"])
    rows = make_rows(p["container"], BAG_T, E, g)
    lens = torch.tensor(bag_lengths(p["lookups"]))
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)])
    offsets = (starts if p["include_last_offset"] else starts[:-1]).to(_dt(p["offset_dtype"]))
    indices = torch.randint(0, BAG_T, (int(lens.sum()),), generator=g).to(_dt(p["index_dtype"]))
    mode = "sum" if p["mode"] == "weighted" else p["mode"]
    w = (torch.rand(indices.numel(), generator=g) * 2 - 0.5).to(_dt(p["weight_dtype"])) \
        if p["mode"] == "weighted" else None
    return dict(rows=rows, indices=indices, offsets=offsets, nbit=p["nbit"], mode=mode, per_sample_weights=w,
                n_codes=n_codes, dtype=_dt(p["dtype"]), include_last_offset=p["include_last_offset"],
                signed=p["signed"])


def make_linear(p, call, seed, m):
    """x, weight (plain containers or prepacked), scale, shift, bias, and the reference operands."""
    import torch
    g = _gen(seed)
    M, K, N, nbit = call["M"], call["K"], call["N"], call["nbit"]
    xd, sd = _dt(call["dtype"]), _dt(call["scale_dtype"])
    gs = call["group_size"] or K
    groups = K // gs
    sshape = (N,) if groups == 1 else (groups, N)
    s = torch.rand(sshape, generator=g) * 0.02 + 0.005
    mid = 0.0 if call["signed"] else (1 << (nbit - 1))
    h = -s * mid * (1 + 0.1 * torch.randn(sshape, generator=g)) + 0.01 * torch.randn(sshape, generator=g)
    x = torch.randn(M, K, generator=g).to(xd)
    bias = (torch.randn(N, generator=g) * 0.5).to(xd) if call["bias"] else None
    d = dict(x=x, scale=s.to(sd), shift=h.to(sd), bias=bias, group_size=gs, grouped=groups > 1)
    if "layout" in call:
        lay = m["layouts"].default_layout(call["arch"], nbit)
        lo, hi = (-(1 << (nbit - 1)), 1 << (nbit - 1)) if call["signed"] else (0, 1 << nbit)
        codes = torch.randint(lo, hi, (K, N), generator=g)
        d.update(qweight=lay.prepack_codes(codes), layout=lay,
                 ref_q=codes.to(torch.int8 if call["signed"] else torch.uint8), ref_nbit=8, packed_dim=0)
    else:
        per = BITS[call["container"]] // nbit
        shape = (K // per, N) if call["packed_dim"] == 0 else (K, N // per)
        qw = random_words(shape, call["container"], g)
        d.update(qweight=qw, layout=None, ref_q=qw, ref_nbit=nbit, packed_dim=call["packed_dim"])
    return d


# --- planning ----------------------------------------------------------------------------------------

def plan_case(c: Case, arch: int, sms: int, m: dict):
    """Fill ``c.plan`` / ``c.keys`` / ``c.label`` (and the concrete call in ``c.p["call"]``)."""
    tdi = m["tdi"]
    p = c.p
    if c.op in ("linear", "linear_prepacked"):
        call = linear_call(p, arch, sms, tdi)
        plan, _ = tdi.plan_linear(**call)
        route = getattr(plan, "route", "kernel")
        cfg = plan.config
        k0 = plan.kernels[0]
        ce = k0.constexprs
        what = (f"{k0.name} SPLIT={ce.get('SPLIT')} REDUCE={ce.get('REDUCE')} SCALE={ce.get('SCALE')}"
                if route != "dequant" else "dequant+matmul")
        lay = "prepacked" if "layout" in call else f"{p['container']} packed_dim={p['packed_dim']}"
        c.label = (f"M={call['M']} K={call['K']} N={call['N']} {call['nbit']}b {lay} signed={int(p['signed'])} "
                   f"x={p['dtype']} s={p['scale_dtype']} {p['scale']} g={call['group_size'] or '-'} "
                   f"bias={int(call['bias'])}{' cfg=' + str(p['config']) if p.get('config') else ''} -> {what}")
        p["call"] = call
        p["explicit"] = cfg if p.get("config") or p["scale"] == "channel_asm" else None
        c.keys = (route,) + tuple(k.key for k in plan.kernels)
    elif c.op == "dequantize":
        call = dequant_call(p, arch, sms)
        plan, _ = tdi.plan_dequantize(**call)
        p["call"] = call
        c.label = (f"{p['container']} {p['nbit']}b signed={int(p['signed'])} -> {p['dtype']} shape={call['shape']} "
                   f"dim={call['dim']} scale={p['scale']}/{call['scale_dtype']} shift={p['shift']}")
        c.keys = tuple(k.key for k in plan.kernels)
    elif c.op == "dequantize_rows":
        call = rows_call(p, arch, sms)
        plan, _ = tdi.plan_dequantize_rows(**call)
        p["call"] = call
        c.label = (f"{p['container']} {p['nbit']}b signed={int(p['signed'])} -> {p['dtype']} rows={ROWS_R} "
                   f"n_codes={call['n_codes']} row_align={p['row_align']}")
        c.keys = tuple(k.key for k in plan.kernels)
    else:
        d = make_bag(p, 1, tdi)
        keb, target = m["keb"], m["plan"].cuda_target(arch, sms)
        call, *_ = keb._prepare(d["rows"], d["indices"], d["offsets"], d["nbit"], d["mode"],
                                d["per_sample_weights"], d["n_codes"], d["dtype"], d["include_last_offset"],
                                d["signed"])
        plan = keb.plan_embedding_bag(call, target)
        c.label = (f"{p['container']} {p['nbit']}b signed={int(p['signed'])} {p['mode']} -> {p['dtype']} "
                   f"n_codes={d['n_codes']} E={d['rows'].shape[1]} lookups~{p['lookups']} idx={p['index_dtype']} "
                   f"off={p['offset_dtype']} last={int(p['include_last_offset'])}"
                   f"{' w=' + p['weight_dtype'] if p['mode'] == 'weighted' else ''}")
        c.keys = tuple(k.key for k in plan.kernels)
    c.plan = plan


def enumerate_cases(arch: int, sms: int, m: dict, log=print) -> list:
    cases, skipped = [], []
    for op, p, origin in raw_cases(m["tdi"]):
        c = Case(op, dict(p), origin)
        try:
            plan_case(c, arch, sms, m)
        except (ValueError, AssertionError) as e:  # a combination the op refuses (reported, not run)
            skipped.append(f"{op} {p}: {type(e).__name__}: {str(e)[:200]}")
            continue
        cases.append(c)
    seen, unique = set(), []
    for c in cases:
        if c.keys not in seen:
            seen.add(c.keys)
            unique.append(c)
    kernels = {k for c in unique for k in c.keys if not isinstance(k, str)}
    log(f"# cases: {len(cases)} planned from the sweep axes + regressions + configs + split-K, "
        f"{len(unique)} after dedupe by launch key, {len(kernels)} distinct kernels; "
        f"{len(skipped)} combinations refused by the planner")
    for s in skipped:
        log(f"#   refused: {s}")
    return unique


def uses_split(c: Case) -> bool:
    return c.op.startswith("linear") and any(k.constexprs.get("SPLIT", 1) > 1 for k in c.plan.kernels
                                            if "SPLIT" in k.constexprs)


def shared_bytes(c: Case, arch: int, sms: int, m: dict):
    """Shared memory of the case's kernels (compiled, from TRITON_CACHE_DIR when warm); None without a compiler."""
    try:
        target = m["plan"].cuda_target(arch, sms)
        return max(m["plan"].compile_kernel(k, target).metadata.shared for k in c.plan.kernels)
    except Exception:
        return None


def select(cases: list, a, arch: int, sms: int, m: dict, interp: bool) -> list:
    if a.ops:
        want = set(a.ops.split(","))
        cases = [c for c in cases if c.op in want or (c.op == "linear_prepacked" and "linear" in want)]
    if a.racecheck:
        split = [c for c in cases if uses_split(c)]
        ids = {id(c) for c in split}
        rest = []
        for c in cases:
            if id(c) in ids:
                continue
            if interp:  # no compiler under the interpreter: the kernels known to stage through shared memory
                if any(k.name in ("mm_kernel", "mma_prepacked_kernel") for k in c.plan.kernels):
                    rest.append(c)
            else:
                sh = shared_bytes(c, arch, sms, m)
                if sh is None or sh > 0:
                    rest.append(c)
        by_op = {}
        for c in rest:  # round robin over the ops, so that a cap keeps some of each
            by_op.setdefault(c.op, []).append(c)
        queues = list(by_op.values())
        rest = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]
        cases = split + rest
        cases = cases[:RACE_LIMIT] if a.limit is None else cases
    if a.quick:
        seen, q = set(), []
        for c in cases:
            tag = (c.op, tuple(k.name for k in c.plan.kernels), uses_split(c),
                   max((k.constexprs.get("REDUCE", 1) for k in c.plan.kernels), default=1) if uses_split(c) else 1)
            if tag not in seen:
                seen.add(tag)
                q.append(c)
        cases = q
    limit = a.limit if a.limit is not None else (DRY_RUN_LIMIT if a.dry_run else None)
    if limit is not None and len(cases) > limit:  # spread: every op keeps cases
        step = len(cases) / limit
        cases = [cases[int(i * step)] for i in range(limit)]
    if a.only:
        cases = [cases[i - 1] for i in a.only if 1 <= i <= len(cases)]
    return cases


# --- compile workers ---------------------------------------------------------------------------------

def _compile_worker(item):
    """(op, params, arch, sms) -> (ok, seconds, message): plan the case again, compile its kernels."""
    op, p, arch, sms = item
    t0 = time.perf_counter()
    try:
        m = _mods()
        c = Case(op, dict(p), "")
        plan_case(c, arch, sms, m)
        target = m["plan"].cuda_target(arch, sms)
        for k in c.plan.kernels:
            m["plan"].compile_kernel(k, target)
        return True, time.perf_counter() - t0, ""
    except Exception as e:
        return False, time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:500]}"


def precompile(cases: list, arch: int, sms: int, jobs: int) -> int:
    import concurrent.futures as cf
    import multiprocessing as mp
    items = [(c.op, {k: v for k, v in c.p.items() if k not in ("call", "explicit")}, arch, sms) for c in cases]
    t0 = time.perf_counter()
    bad = 0
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max(1, jobs), mp_context=ctx) as ex:
        for i, (c, (ok, sec, msg)) in enumerate(zip(cases, ex.map(_compile_worker, items, chunksize=1))):
            if not ok:
                bad += 1
                print(f"# compile FAILED [{i}] {c.op} {c.label}: {msg}", flush=True)
    print(f"# precompiled {len(cases)} cases in {time.perf_counter() - t0:.1f} s with {jobs} processes, "
          f"{bad} failures", flush=True)
    return bad


# --- running and checking ------------------------------------------------------------------------------

class Mismatch(AssertionError):
    pass


def _bits(t):
    import torch
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def check_exact(got, want, what: str):
    import torch
    got = got.cpu()
    if got.shape != want.shape or got.dtype != want.dtype:
        raise Mismatch(f"{what}: got {got.dtype} {list(got.shape)}, want {want.dtype} {list(want.shape)}")
    bad = _bits(got) != _bits(want)
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise Mismatch(f"{what}: {int(bad.sum())} of {bad.numel()} outputs differ in bits; first at {i}: "
                       f"got {got[tuple(i)].item()} want {want[tuple(i)].item()}")
    return torch.tensor(0)


def check_bag(got, d, ref):
    """test/python/test_embedding_bag.py's tolerance: ``1e-5 * sum|terms|`` (+ one fp16 ulp of the
    result for fp16 output); empty bags exactly 0."""
    import torch
    rows, indices, offsets, nbit = d["rows"], d["indices"], d["offsets"], d["nbit"]
    w, dim, mode = d["per_sample_weights"], d["n_codes"], d["mode"]
    exact = ref.embedding_bag(rows, indices, offsets, nbit, mode=mode, per_sample_weights=w, n_codes=dim,
                              dtype=torch.float64, include_last_offset=d["include_last_offset"], signed=d["signed"])
    table = ref.dequantize_rows(rows, nbit, torch.float16, n_codes=dim, signed=d["signed"]).double().abs()
    offs = offsets.tolist() + ([] if d["include_last_offset"] else [indices.numel()])
    absterm = torch.zeros_like(exact)
    for b in range(len(offs) - 1):
        lo, hi = offs[b], offs[b + 1]
        if hi > lo:
            v = table[indices[lo:hi].long()]
            if w is not None:
                v = v * w[lo:hi, None].double().abs()
            absterm[b] = v.sum(0) / ((hi - lo) if mode == "mean" else 1)
    if got.dtype != d["dtype"] or tuple(got.shape) != tuple(exact.shape):
        raise Mismatch(f"embedding_bag: got {got.dtype} {list(got.shape)}, want {d['dtype']} {list(exact.shape)}")
    gd = got.cpu().double()
    tol = 1e-5 * absterm
    if d["dtype"] == torch.float16:
        e = torch.floor(torch.log2(exact.abs().clamp(min=2.0 ** -14)))
        tol = tol + torch.exp2(e - 10)
    bad = ~((gd - exact).abs() <= tol)
    if bad.any():
        raise Mismatch(f"embedding_bag: {int(bad.sum())} of {bad.numel()} outputs off; first at "
                       f"{bad.nonzero()[0].tolist()}: got {gd[bad][0].item()} want {exact[bad][0].item()}")
    empty = [b for b in range(len(offs) - 1) if offs[b + 1] <= offs[b]]
    if not (gd[empty] == 0).all():
        raise Mismatch("embedding_bag: an empty bag is not all zeros")
    return ((gd - exact).abs() / tol.clamp(min=1e-30)).max()


def check_linear(y, d, call, ref, tol=1e-2):
    import torch
    x = d["x"]
    w = ref.linear_weight(d["ref_q"], d["scale"], d["shift"], d["ref_nbit"], dtype=x.dtype,
                          group_size=d["group_size"], packed_dim=d["packed_dim"], signed=call["signed"]).double()
    want = x.double() @ w
    if d["bias"] is not None:
        want = want + d["bias"].double()
    got = y.cpu().double()
    if y.dtype != x.dtype or got.shape != want.shape:
        raise Mismatch(f"linear: got {y.dtype} {list(got.shape)}, want {x.dtype} {list(want.shape)}")
    if not torch.isfinite(got).all():
        raise Mismatch("linear: non-finite outputs")
    err = ((got - want).norm() / want.norm()).item()
    err_max = ((got - want).abs().max() / want.abs().max()).item()
    if not (err <= tol and err_max <= tol):
        raise Mismatch(f"linear: relative error {err:.3g} (norm), {err_max:.3g} (max) > {tol}")
    return torch.tensor(max(err, err_max))


def run_case(c: Case, dev, m: dict):
    """Run the op on ``dev`` (CUDA: the public op; CPU: the kernel module in the interpreter) and
    check it; returns a figure of merit (max error ratio or relative error), raises Mismatch."""
    import torch
    ops, ref, kdq, keb, kl = m["ops"], m["ref"], m["kdq"], m["keb"], m["kl"]
    cuda = dev.type == "cuda"
    p, seed = c.p, zlib.crc32(c.label.encode()) & 0xFFFF
    to = (lambda t: None if t is None else t.to(dev)) if cuda else (lambda t: t)
    if c.op == "dequantize":
        call = p["call"]
        d = make_dequantize(p, call, seed)
        s = to(d["scale"]) if isinstance(d["scale"], torch.Tensor) else d["scale"]
        h = to(d["shift"]) if isinstance(d["shift"], torch.Tensor) else d["shift"]
        dt = _dt(p["dtype"])
        if cuda:
            y = ops.dequantize(to(d["packed"]), s, h, p["nbit"], dt, call["dim"], p["signed"])
        else:
            packed = d["packed"]
            y = kdq.dequantize(packed, ops._as_tensor("scale", s, dev, dt), ops._as_tensor("shift", h, dev, dt),
                               p["nbit"], dt, call["dim"] % packed.dim(), p["signed"])
        want = ref.dequantize(d["packed"], d["scale"], d["shift"], p["nbit"], dt, axis=call["dim"], signed=p["signed"])
        return check_exact(y, want, "dequantize")
    if c.op == "dequantize_rows":
        call = p["call"]
        E = m["tdi"]._row_elems(call["n_codes"], p["nbit"], _container(p["container"]), p["row_align"])
        rows = make_rows(p["container"], ROWS_R, E, _gen(seed))
        dt = _dt(p["dtype"])
        fn = ops.dequantize_rows if cuda else kdq.dequantize_rows
        y = fn(to(rows), p["nbit"], dt, call["n_codes"], p["signed"])
        want = ref.dequantize_rows(rows, p["nbit"], dt, n_codes=call["n_codes"], signed=p["signed"])
        return check_exact(y, want, "dequantize_rows")
    if c.op == "embedding_bag":
        d = make_bag(p, 1, m["tdi"])
        args = (to(d["rows"]), to(d["indices"]), to(d["offsets"]), d["nbit"], d["mode"], to(d["per_sample_weights"]),
                d["n_codes"], d["dtype"], d["include_last_offset"], d["signed"])
        y = ops.embedding_bag(*args) if cuda else keb.embedding_bag(*args)
        return check_bag(y, d, ref)
    call = p["call"]
    d = make_linear(p, call, seed, m)
    x, qw, s, h, b = (to(d[k]) for k in ("x", "qweight", "scale", "shift", "bias"))
    gs = d["group_size"]
    if cuda and p["explicit"] is None:
        y = ops.linear(x, qw, s, h, call["nbit"], gs if d["grouped"] else None, d["packed_dim"], call["signed"],
                       layout=d["layout"], bias=b)
    else:
        y = kl.linear(x, qw, s, h, call["nbit"], gs, d["packed_dim"], call["signed"], config=p["explicit"],
                      layout=d["layout"], bias=b)
    if cuda:
        torch.cuda.synchronize()
    # Triton 3.6's interpreter casts fp32 to bf16 by truncation (toward zero), not to nearest
    # as the GPU does: up to 1 ulp of bf16 more per rounding (the bf16 scale, the output);
    # bf16 linear at 2-bit codes measured 0.9-1.4% there, <= 0.5% when simulated with RNE
    tol = 2e-2 if (not cuda and call["dtype"] == "bf16") else 1e-2
    return check_linear(y, d, call, ref, tol)


# --- header and main ----------------------------------------------------------------------------------------

def header(dev) -> list:
    import torch
    import triton
    out = [f"# bench/sanitize.py {' '.join(sys.argv[1:])}",
           f"# date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
           f"# host: {platform.node()} kernel {platform.release()}, python {platform.python_version()}",
           f"# torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton.__version__}",
           f"# TRITON_CACHE_DIR={os.environ.get('TRITON_CACHE_DIR', '(default)')} "
           f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')} "
           f"PYTORCH_NO_CUDA_MEMORY_CACHING={os.environ.get('PYTORCH_NO_CUDA_MEMORY_CACHING', '0')}"]
    if dev.type == "cuda":
        pr = torch.cuda.get_device_properties(dev)
        out.append(f"# gpu: {pr.name}, sm_{pr.major}{pr.minor}, {pr.multi_processor_count} SMs, "
                   f"{pr.total_memory / 2 ** 30:.0f} GiB")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            out.append(f"# nvidia-smi: {r.stdout.strip() or r.stderr.strip()}")
        except Exception as e:  # the header is informative only
            out.append(f"# nvidia-smi: {e}")
    else:
        out.append("# nvidia-smi: not found")
    return out


def main(argv=None) -> int:
    global ARGS
    a = ARGS = _parser().parse_args(argv)
    interp = a.device == "cpu"
    if interp:
        if a.compile_only or a.jobs:
            raise SystemExit("--compile-only / -j compile for the GPU: run them without --device cpu")
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (the @triton.jit decorators read it)
    else:
        os.environ.pop("TRITON_INTERPRET", None)
        if not a.keep_caching:
            os.environ.setdefault("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    import torch
    m = _mods()
    if interp:
        dev = torch.device("cpu")
        arch, sms = a.arch or 90, a.sms or 132
    elif (a.compile_only or a.list) and not torch.cuda.is_available():  # plan/compile for sm_90 without a GPU
        dev = torch.device("cpu")
        arch, sms = a.arch or 90, a.sms or 132
    else:
        if not torch.cuda.is_available():
            print("bench/sanitize.py: no CUDA device (use --device cpu --dry-run)", file=sys.stderr)
            return 2
        dev = torch.device("cuda", torch.cuda.current_device())
        t = m["plan"].target_of(dev)
        arch, sms = a.arch or t.arch, a.sms or t.num_sms
    for line in header(dev):
        print(line, flush=True)
    mode = "racecheck" if a.racecheck else "quick" if a.quick else "all"
    print(f"# selection: {mode}{' (dry run)' if a.dry_run else ''}, device {dev}, planned for sm_{arch} "
          f"with {sms} SMs", flush=True)
    t0 = time.perf_counter()
    cases = enumerate_cases(arch, sms, m)
    cases = select(cases, a, arch, sms, m, interp)
    n_kernels = len({k for c in cases for k in c.keys if not isinstance(k, str)})
    by_op = {}
    for c in cases:
        by_op[c.op] = by_op.get(c.op, 0) + 1
    print(f"# selected {len(cases)} cases, {n_kernels} distinct kernels "
          f"({', '.join(f'{k} {v}' for k, v in by_op.items())}); planning took {time.perf_counter() - t0:.1f} s",
          flush=True)
    if a.list:
        for i, c in enumerate(cases):
            print(f"[{i + 1}] {c.op} ({c.origin}) {c.label}")
            if a.verbose:
                for k in c.plan.kernels:
                    print(f"      {k!r}")
        return 0
    if a.compile_only or a.jobs:
        bad = precompile(cases, arch, sms, max(1, a.jobs))
        if a.compile_only:
            print(f"sanitize: compiled {len(cases)} cases, {bad} failures", flush=True)
            return 1 if bad else 0
    failures, ran = [], 0
    for i, c in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {c.op} ({c.origin}) {c.label} ...", end=" ", flush=True)
        if a.verbose:
            print("\n      " + "\n      ".join(repr(k) for k in c.plan.kernels), end=" ", flush=True)
        t1 = time.perf_counter()
        try:
            merit = run_case(c, dev, m)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            ran += 1
            print(f"ok ({float(merit):.2g}, {time.perf_counter() - t1:.2f} s)", flush=True)
        except Mismatch as e:
            ran += 1
            failures.append((i, c, str(e)))
            print(f"FAILED: {e}", flush=True)
        except Exception as e:  # noqa: BLE001 (a crash is a failure of the case; CUDA errors end the run)
            ran += 1
            failures.append((i, c, f"{type(e).__name__}: {e}"))
            print(f"FAILED: {type(e).__name__}: {str(e)[:1000]}", flush=True)
            if dev.type == "cuda" and ("CUDA" in str(e) or "cuda" in type(e).__name__.lower()
                                       or type(e).__name__ == "AcceleratorError"):
                print("# a CUDA error leaves the context unusable: stopping here", flush=True)
                break
    if dev.type == "cuda":  # free what the run holds, so that a leak check sees only real leaks
        try:
            torch.cuda.synchronize()
            m["kl"]._BUFFERS.clear()
            gc.collect()
            torch.cuda.empty_cache()
            if hasattr(torch._C, "_cuda_clearCublasWorkspaces"):
                torch._C._cuda_clearCublasWorkspaces()
        except Exception as e:  # noqa: BLE001
            print(f"# cleanup: {type(e).__name__}: {e}", flush=True)
    for i, c, msg in failures:
        print(f"# FAILED [{i + 1}] {c.op} {c.label}: {msg[:300]}")
    not_run = len(cases) - ran
    print(f"sanitize: {len(cases)} cases, {len(failures)} failures"
          f"{f', {not_run} not run' if not_run else ''} ({n_kernels} distinct kernels, {mode}, "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failures or not_run else 0


if __name__ == "__main__":
    sys.exit(main())
