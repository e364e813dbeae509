"""What does my call compile to on sm_90, without a GPU?

``python -m triton_dequant.inspect OP [call arguments] [--arch 80|90] [--dump DIR]``
plans the call exactly as the CUDA path of ``triton_dequant.ops.OP`` does (the same
plan functions, fed with meta tensors of the given shapes and dtypes), compiles
every kernel of the plan on this machine for ``sm_<arch>`` (no GPU, no driver) and
prints JSON, one entry per kernel: name, grid, num_warps, num_stages, signature and
constexprs, registers, spills (local memory bytes per thread), shared memory bytes,
and SASS opcode counts of the whole kernel and of its main loop. ``--dump DIR``
writes each kernel's ``.ttgir``, ``.ptx``, ``.cubin`` and ``.sass`` into ``DIR``.
OP is ``dequantize``, ``dequantize_rows``, ``embedding_bag`` or ``linear``;
``python -m triton_dequant.inspect OP --help`` lists its arguments. In Python:
:func:`inspect` (``inspect("linear", M=1, K=4096, N=4096, nbit=4, arch=90)``).

``python -m triton_dequant.inspect sweep [--full] [-j N]`` compiles every plan of a
sweep over the ops' variants for sm_80 and sm_90 (see :func:`sweep_cases`): by default a
pairwise covering subset (every value of every axis and every pair of values of two
axes at least once: what CI runs), with ``--full`` the whole product. Plans that lower
to the same kernel (same launch key) are compiled once.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from typing import Optional

import torch

__all__ = ["inspect", "plan_of", "report", "sweep_cases", "sweep", "covering_array"]

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CONTAINERS = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "uint16": torch.uint16,
              "int32": torch.int32, "uint32": torch.uint32}
INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}
_BITS = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.uint16: 16, torch.int32: 32, torch.uint32: 32}
OPS = ("dequantize", "dequantize_rows", "embedding_bag", "linear")


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _pick(table: dict, name: str, value):
    if isinstance(value, torch.dtype) and value in table.values():
        return value
    if value not in table:
        raise ValueError(f"`{name}` must be one of {', '.join(table)}, got {value!r}")
    return table[value]


def _check_nbit(nbit, container) -> int:
    width = _BITS[container]
    if nbit not in (1, 2, 4, 8) or width % nbit:
        raise ValueError(f"`nbit` must be 1, 2, 4 or 8 (dividing the {width}-bit container), got {nbit!r}")
    return width // nbit


def _target(arch: int, num_sms: Optional[int]):
    from .kernels import _plan
    return _plan.cuda_target(arch, num_sms)


# --- one planner per op: a call description -> (plan, target) --------------------------------

def plan_dequantize(shape=(4096, 1024), nbit=4, container="int32", dtype="fp16", scale_dtype="fp16",
                    scale_shape=(), shift_dtype=None, shift_shape=None, dim=-1, signed=False, arch=90,
                    num_sms=None, block=None, num_warps=8):
    """``ops.dequantize`` of a packed ``shape`` tensor; ``scale_shape``/``shift_shape``
    broadcast to the output (``()``: a number)."""
    from .kernels import dequant
    cont = _pick(CONTAINERS, "container", container)
    per = _check_nbit(nbit, cont)
    shape = tuple(shape)
    if not shape:
        raise ValueError("`shape` must have at least one dimension")
    dim = dim % len(shape)
    out = list(shape)
    out[dim] *= per
    sd = _pick(DTYPES, "scale_dtype", scale_dtype)
    hd = _pick(DTYPES, "shift_dtype", shift_dtype if shift_dtype is not None else scale_dtype)
    ss = tuple(scale_shape)
    hs = tuple(shift_shape) if shift_shape is not None else ss
    for name, s in (("scale_shape", ss), ("shift_shape", hs)):
        try:
            torch.broadcast_shapes(s, tuple(out))
        except RuntimeError:
            raise ValueError(f"`{name}` {list(s)} is not broadcastable to the output {out}") from None
    call, *_ = dequant._prepare_dequantize(_meta(shape, cont), _meta(ss, sd), _meta(hs, hd), nbit,
                                           _pick(DTYPES, "dtype", dtype), dim, signed, block, num_warps)
    target = _target(arch, num_sms)
    return dequant.plan_dequantize(call, target), target


def _row_elems(n_codes, nbit, container, row_align) -> int:
    """Elements per row of ``packing.pack_rows(x [R, n_codes], nbit, container, row_align)``."""
    width = _BITS[container]
    per = width // nbit
    elems = 32 // width + -(-n_codes // per)
    per_row = math.lcm(row_align, width // 8) // (width // 8)
    return -(-elems // per_row) * per_row


def plan_dequantize_rows(rows=4096, n_codes=1024, nbit=4, container="int32", dtype="fp16", signed=False,
                         row_align=1, elems=None, arch=90, num_sms=None, block=None, num_warps=8):
    """``ops.dequantize_rows`` of ``rows`` row-fused rows of ``n_codes`` codes
    (``elems`` elements per row; default: as ``packing.pack_rows(..., row_align)`` makes them)."""
    from .kernels import dequant
    cont = _pick(CONTAINERS, "container", container)
    _check_nbit(nbit, cont)
    E = elems if elems is not None else _row_elems(n_codes, nbit, cont, row_align)
    call, _ = dequant._prepare_rows(_meta((rows, E), cont), nbit, _pick(DTYPES, "dtype", dtype), n_codes, signed,
                                    block, num_warps)
    target = _target(arch, num_sms)
    return dequant.plan_dequantize_rows(call, target), target


def plan_embedding_bag(rows=1 << 20, n_codes=128, nbit=4, container="int32", bags=65536, lookups=32, mode="sum",
                       weighted=False, weight_dtype="fp32", dtype="fp32", index_dtype="int64",
                       offset_dtype="int64", include_last_offset=False, signed=False, row_align=1, elems=None,
                       arch=90, num_sms=None, block_l=None, block_w=None, num_warps=None, head_in=None):
    """``ops.embedding_bag`` over ``rows`` row-fused rows of ``n_codes`` codes, ``bags`` bags
    of ``lookups`` lookups each."""
    from .kernels import embedding_bag as eb
    cont = _pick(CONTAINERS, "container", container)
    _check_nbit(nbit, cont)
    if mode not in ("sum", "mean"):
        raise ValueError(f"`mode` must be 'sum' or 'mean', got {mode!r}")
    if weighted and mode != "sum":
        raise ValueError("per-sample weights need mode='sum'")
    out = _pick(DTYPES, "dtype", dtype)
    if out not in (torch.float16, torch.float32):
        raise ValueError("`dtype` must be fp16 or fp32")
    E = elems if elems is not None else _row_elems(n_codes, nbit, cont, row_align)
    n_idx = bags * lookups
    idx = _meta((n_idx,), _pick(INDEX_DTYPES, "index_dtype", index_dtype))
    off = _meta((bags + int(include_last_offset),), _pick(INDEX_DTYPES, "offset_dtype", offset_dtype))
    w = _meta((n_idx,), _pick(DTYPES, "weight_dtype", weight_dtype)) if weighted else None
    call, *_ = eb._prepare(_meta((rows, E), cont), idx, off, nbit, mode, w, n_codes, out, include_last_offset, signed,
                           block_l, block_w, num_warps, head_in)
    target = _target(arch, num_sms)
    return eb.plan_embedding_bag(call, target), target


def plan_linear(M=1, K=4096, N=4096, nbit=4, group_size=0, dtype="fp16", scale_dtype=None, container="int32",
                signed=False, packed_dim=0, layout=None, bias=False, bias_dtype=None, arch=90, num_sms=None,
                config=None):
    """``ops.linear`` of ``x [M, K]`` and a ``[K, N]`` weight of ``nbit`` codes in
    ``container`` packed along K (``packed_dim=0``) or N, or prepacked (``layout``:
    "default" -- the default :class:`~triton_dequant.layouts.MmaLayout` of the
    architecture for ``nbit`` --, a layout name or object); ``group_size`` 0:
    per-channel scale/shift; ``bias``: a ``[N]`` bias of ``bias_dtype`` (default
    ``dtype``). ``config``: a :class:`~triton_dequant.kernels.linear.Config` or a dict
    of fields replacing those of the default config (e.g. ``{"post": False}``)."""
    from . import layouts
    from .kernels import linear as kl
    xd = _pick(DTYPES, "dtype", dtype)
    if xd not in (torch.float16, torch.bfloat16):
        raise ValueError("`dtype` must be fp16 or bf16")
    sd = _pick(DTYPES, "scale_dtype", scale_dtype if scale_dtype is not None else dtype)
    target = _target(arch, num_sms)
    lay = None
    if layout is not None:
        lay = (layouts.default_layout("sm90" if arch >= 90 else "sm80", nbit) if layout == "default"
               else layouts.as_layout(layout))
        if lay.nbit != nbit:
            raise ValueError(f"`nbit` ({nbit}) must be the layout's ({lay.nbit}, {lay.name})")
        cont, per, packed_dim = torch.int32, lay.per, 0
    else:
        cont = _pick(CONTAINERS, "container", container)
        per = _check_nbit(nbit, cont)
        if packed_dim not in (0, 1):
            raise ValueError(f"`packed_dim` must be 0 or 1, got {packed_dim!r}")
        if (K if packed_dim == 0 else N) % per:
            raise ValueError(f"{'K' if packed_dim == 0 else 'N'} must be a multiple of the {per} codes per "
                             f"container")
    g = group_size or K
    if K % g or (g < K and lay is None and packed_dim == 0 and g % per):
        raise ValueError(f"`group_size` {group_size} must divide K={K} (and be a multiple of {per} along K)")
    if lay is not None and g < K:
        lay.check_group_size(g)
    groups = K // g
    if isinstance(config, dict):
        base = (kl.prepacked_config(M, K, N, lay, xd, target.num_sms) if lay is not None
                else kl.default_config(M, K, N, nbit, _BITS[cont], packed_dim, xd, target.num_sms))
        config = dataclasses.replace(base, **config)
    if lay is not None:
        qshape = lay.shape(K, N)
    else:
        qshape = (K // per, N) if packed_dim == 0 else (K, N // per)
    sshape = (N,) if groups == 1 else (groups, N)
    b = _meta((N,), _pick(DTYPES, "bias_dtype", bias_dtype if bias_dtype is not None else dtype)) if bias else None
    call, *_ = kl._prepare(_meta((M, K), xd), _meta(qshape, cont), _meta(sshape, sd), _meta(sshape, sd), nbit, g,
                           packed_dim, signed, config, None, lay, b)
    return kl.plan(call, target), target


PLANNERS = {"dequantize": plan_dequantize, "dequantize_rows": plan_dequantize_rows,
            "embedding_bag": plan_embedding_bag, "linear": plan_linear}


def plan_of(op: str, **call):
    """``(plan, target)`` of a call of ``op`` described by keyword arguments (see the
    ``plan_*`` functions of this module for each op's arguments and defaults)."""
    if op == "linear_prepacked":  # (a sweep name: linear on prepacked weights)
        op = "linear"
    if op not in PLANNERS:
        raise ValueError(f"`op` must be one of {', '.join(OPS)}, got {op!r}")
    return PLANNERS[op](**call)


# --- compile and report --------------------------------------------------------------------

def report(kernel, compiled, target, modifiers: bool = False) -> dict:
    """What one compiled kernel is: launch parameters and SASS statistics."""
    from . import testing
    cubin = compiled.asm["cubin"]
    sass = testing.sass_of(cubin)
    res = testing.resource_usage(cubin)
    ins = [t for _, t in testing.instructions(sass)]
    loop = testing.main_loop(sass)
    d = kernel.describe()
    return dict(name=kernel.name, arch=target.arch, grid=d["grid"], num_warps=kernel.num_warps,
                num_stages=kernel.num_stages, registers=res["registers"], spills=res["local"], stack=res["stack"],
                shared=compiled.metadata.shared, instructions=len(ins),
                sass=testing.opcode_counts(ins, modifiers),
                main_loop=dict(instructions=len(loop), sass=testing.opcode_counts(loop, modifiers)),
                signature=d["signature"], divisibility_16=d["divisibility_16"], constexprs=d["constexprs"])


def _dump(directory: str, stem: str, compiled, sass: Optional[str] = None) -> list:
    from . import testing
    os.makedirs(directory, exist_ok=True)
    paths = []
    for ext in ("ttgir", "ptx", "cubin", "sass"):
        path = os.path.join(directory, f"{stem}.{ext}")
        if ext == "cubin":
            data = compiled.asm["cubin"]
        elif ext == "sass":
            data = (sass if sass is not None else testing.sass_of(compiled.asm["cubin"])).encode()
        else:
            data = compiled.asm[ext].encode()
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths


def inspect(op: str, *, dump: Optional[str] = None, modifiers: bool = False, **call) -> list:
    """Compile, on this machine, the kernels the CUDA path of ``ops.<op>`` launches for
    the call described by ``call`` (see :func:`plan_of`); one dict per kernel (see
    :func:`report`). ``dump``: a directory for each kernel's ``.ttgir``, ``.ptx``,
    ``.cubin``, ``.sass`` (``<name>.<ext>``, ``<i>-<name>.<ext>`` for several kernels)."""
    from .kernels import _plan
    plan, target = plan_of(op, **call)
    out = []
    for i, k in enumerate(plan.kernels):
        ck = _plan.compile_kernel(k, target)
        r = report(k, ck, target, modifiers)
        if dump:
            stem = k.name if len(plan.kernels) == 1 else f"{i}-{k.name}"
            r["files"] = _dump(dump, stem, ck)
        out.append(r)
    return out


# --- the compile sweep -----------------------------------------------------------------------

def covering_array(axes: dict, strength: int = 2, seed: int = 0, tries: int = 16) -> list:
    """Rows (dicts axis -> value) in which every combination of values of any
    ``strength`` axes appears at least once (``strength=2``: every value of every axis
    and every pair of values of two axes); greedy, deterministic for a seed."""
    names = list(axes)
    vals = [list(axes[n]) for n in names]
    n = len(names)
    t = min(strength, n)
    groups = list(itertools.combinations(range(n), t))
    uncovered = {(g, combo) for g in groups for combo in itertools.product(*(range(len(vals[i])) for i in g))}
    by_axis = {k: [g for g in groups if k in g] for k in range(n)}
    rng = random.Random(seed)
    rows = []

    def gain(row, k, v):
        """Uncovered combinations completed by setting axis k to v, the other axes of
        the combination already set in row."""
        row[k] = v
        c = 0
        for g in by_axis[k]:
            if all(i in row for i in g) and (g, tuple(row[i] for i in g)) in uncovered:
                c += 1
        del row[k]
        return c

    while uncovered:
        g0, combo0 = min(uncovered)
        best, best_score = None, -1
        for _ in range(tries):
            row = dict(zip(g0, combo0))
            order = [k for k in range(n) if k not in row]
            rng.shuffle(order)
            for k in order:
                row[k] = max((gain(row, k, v), rng.random(), v) for v in range(len(vals[k])))[2]
            score = sum((g, tuple(row[i] for i in g)) in uncovered for g in groups)
            if score > best_score:
                best, best_score = row, score
        for g in groups:
            uncovered.discard((g, tuple(best[i] for i in g)))
        rows.append({names[k]: vals[k][best[k]] for k in range(n)})
    return rows


# The axes of the sweep per op. Shapes: "even" (multiples of every tile), "ragged"
# (tails: masked loads/stores, no 16-divisibility), and for linear "wide" (enough
# output tiles that no split-K is chosen).
LINEAR_AXES = dict(container=list(CONTAINERS), nbit=[1, 2, 4, 8], signed=[False, True], dtype=["fp16", "bf16"],
                   scale_dtype=["fp16", "bf16", "fp32"], scale=["channel", "channel_asm", "group", "group_rows"],
                   M=[1, 2, 3, 4, 5, 16, 64, 128, 256], packed_dim=[0, 1], shape=["even", "ragged", "wide"],
                   arch=[80, 90])
# prepacked weights (the default layout of each architecture)
PREPACKED_AXES = dict(nbit=[2, 4, 8], signed=[False, True], dtype=["fp16", "bf16"], scale_dtype=["fp16", "bf16", "fp32"],
                      scale=["channel", "channel_asm", "group", "group_rows"], M=[1, 2, 5, 16, 64, 128, 256],
                      shape=["even", "ragged", "wide"], bias=[False, True], arch=[80, 90])
DEQUANT_AXES = dict(container=list(CONTAINERS), nbit=[1, 2, 4, 8], signed=[False, True],
                    dtype=["fp16", "bf16", "fp32"], scale_dtype=["fp16", "bf16", "fp32"],
                    scale=["number", "row", "output"], dim=["last", "middle"], shape=["even", "ragged"], arch=[80, 90])
ROWS_AXES = dict(container=list(CONTAINERS), nbit=[1, 2, 4, 8], signed=[False, True], dtype=["fp16", "bf16", "fp32"],
                 n_codes=[1024, 1000, 96], row_align=[1, 16], arch=[80, 90])
BAG_AXES = dict(container=list(CONTAINERS), nbit=[1, 2, 4, 8], signed=[False, True], mode=["sum", "mean", "weighted"],
                dtype=["fp16", "fp32"], index_dtype=["int32", "int64"], n_codes=[128, 512, 100], row_align=[1, 16],
                lookups=[1, 8, 32], arch=[80, 90])
AXES = {"linear": LINEAR_AXES, "linear_prepacked": PREPACKED_AXES, "dequantize": DEQUANT_AXES,
        "dequantize_rows": ROWS_AXES, "embedding_bag": BAG_AXES}
SWEEP_OPS = ("dequantize", "dequantize_rows", "embedding_bag", "linear", "linear_prepacked")

_LINEAR_SHAPES = {"even": (4096, 4096), "ragged": (4224, 4000), "wide": (4096, 65536)}


def _case_call(op: str, case: dict) -> dict:
    """The ``plan_of`` arguments of a sweep case (a dict of axis values)."""
    c = dict(case)
    arch = c.pop("arch")
    if op in ("linear", "linear_prepacked"):
        K, N = _LINEAR_SHAPES[c.pop("shape")]
        scale = c.pop("scale")
        config = dict(c.pop("config", None) or {})
        call = dict(c, K=K, N=N, arch=arch)
        if op == "linear_prepacked":
            call["layout"] = "default"
        if scale == "channel_asm":
            config["post"] = False
        if config:
            call["config"] = config
        if scale in ("channel", "channel_asm"):
            return dict(call, group_size=0)
        if scale == "group":
            return dict(call, group_size=128)
        return dict(call, group_size=_rows_group(call))
    if op == "dequantize":
        n = 1024 if c.pop("shape") == "even" else 1000
        dim, scale = c.pop("dim"), c.pop("scale")
        per = _BITS[CONTAINERS[c["container"]]] // c["nbit"]
        if dim == "last":
            shape, d = (64, n), -1
            sshape = {"number": (), "row": (64, 1), "output": (n * per,)}[scale]
        else:
            shape, d = (4, n // 8, 96), 1
            sshape = {"number": (), "row": (4, 1, 96), "output": (n // 8 * per, 1)}[scale]
        return dict(c, shape=shape, dim=d, scale_shape=sshape, arch=arch)
    if op == "dequantize_rows":
        return dict(c, rows=4096, arch=arch)
    mode = c.pop("mode")
    return dict(c, rows=1 << 20, bags=65536, mode="sum" if mode == "weighted" else mode,
                weighted=mode == "weighted", arch=arch)


def _rows_group(call: dict) -> int:
    """A group size for which the plan takes one scale row per tile row (``SCALE_GROUP_ROWS``)."""
    from .kernels.linear import _common
    for g in (8, 16, 32, 64):
        try:
            plan, _ = plan_linear(**dict(call, group_size=g))
        except ValueError:  # not a group size these weights take
            continue
        if plan.route == "dequant" or plan.kernels[0].constexprs["SCALE"] == _common.SCALE_GROUP_ROWS.value:
            return g
    raise AssertionError(f"no per-row group size for {call}")


_SCALE_WANTED = {"channel_asm": "SCALE_CHANNEL", "group": "SCALE_GROUP", "group_rows": "SCALE_GROUP_ROWS"}


def _check_case(op: str, case: dict, plan) -> None:
    """The plan realizes the case's mode axes (a sweep that silently fell back to
    another mode would not test what it claims)."""
    if op in ("linear", "linear_prepacked") and case["scale"] in _SCALE_WANTED and plan.route != "dequant":
        from .kernels.linear import _common
        want = getattr(_common, _SCALE_WANTED[case["scale"]]).value
        got = plan.kernels[0].constexprs["SCALE"]
        if got != want:
            raise AssertionError(f"case {case}: SCALE={got}, expected {_SCALE_WANTED[case['scale']]}")
    if op == "dequantize" and plan.kernels:
        want = case["scale"] == "output"
        if plan.kernels[0].constexprs["PER_OUTPUT"] != want:
            raise AssertionError(f"case {case}: PER_OUTPUT={not want}")


# calls that once failed to compile (issue 9: the GEMV's XSHIFT of 1 and 2 for
# nbit=1 codes in 8-bit containers and signed nbit=2 codes, fp16 x, per channel,
# packed along K), always in the sweep
REGRESSIONS = [
    ("linear", dict(container=c, nbit=nb, signed=sg, dtype="fp16", scale_dtype="fp16", scale="channel", M=m,
                    packed_dim=0, shape="even", arch=arch))
    for c, nb, sg in (("uint8", 1, False), ("int8", 1, True), ("uint8", 2, True), ("int16", 2, True))
    for m in (1, 4) for arch in (80, 90)
]

# plans that once needed more shared memory than the SM has (8-bit codes in 8-bit
# containers, 3 pipelined stages at bm >= 64: 294912 B on sm_90), always in the sweep
SHARED_REGRESSIONS = [
    ("linear", dict(container=c, nbit=8, signed=False, dtype="fp16", scale_dtype="fp16", scale=sc, M=m,
                    packed_dim=0, shape="even", arch=arch))
    for c in ("uint8", "int8") for sc, m in (("group_rows", 128), ("group", 64)) for arch in (80, 90)
] + [
    ("linear", dict(container="uint8", nbit=nb, signed=False, dtype=dt, scale_dtype="fp32", scale="group_rows",
                    M=m, packed_dim=0, shape="even", arch=arch))
    for nb in (8, 4) for dt in ("fp16", "bf16") for m in (64, 128) for arch in (80, 90)
] + [
    ("linear", dict(container=c, nbit=nb, signed=False, dtype="fp16", scale_dtype="fp32", scale="group_rows",
                    M=m, packed_dim=0, shape="even", arch=arch))
    for c, nb in (("int16", 4), ("int32", 8), ("int32", 4)) for m in (64, 128) for arch in (80, 90)
]


# launch options only a config override selects (kernels.linear.Config), each once
# per architecture: fp32 atomics for split-K, fp32 products for fp16 x, the register
# double buffer for 8 codes per container, the tensor-core kernel for a decode call
_CONFIGS = [(dict(M=1, scale="channel"), {"reduce": 2}), (dict(M=16, scale="group"), {"reduce": 2}),
            (dict(M=2, scale="channel"), {"dot16": False}), (dict(M=1, scale="group"), {"prefetch": True}),
            (dict(M=1, scale="channel"), {"kernel": "mm", "bm": 16, "bk": 64, "bn": 64})]
CONFIG_CASES = [
    ("linear", dict(dict(container="int32", nbit=4, signed=False, dtype="fp16", scale_dtype="fp16", packed_dim=0,
                         shape="even", arch=arch), **case, config=cfg))
    for case, cfg in _CONFIGS for arch in (80, 90)
]


def sweep_cases(ops=SWEEP_OPS, full: bool = False, strength: int = 2, seed: int = 0) -> list:
    """``(op, case)`` for every case of the sweep: the product of each op's axes
    (``full``) or a covering array of them of the given ``strength`` (2: pairwise),
    plus :data:`REGRESSIONS` and :data:`SHARED_REGRESSIONS` (calls that once failed) and :data:`CONFIG_CASES`
    (launch options that only a config override selects)."""
    out = []
    for op in ops:
        axes = AXES[op]
        if full:
            rows = [dict(zip(axes, v)) for v in itertools.product(*axes.values())]
        else:
            rows = covering_array(axes, strength, seed)
        out += [(op, r) for r in rows]
    return out + [(op, r) for op, r in REGRESSIONS + SHARED_REGRESSIONS + CONFIG_CASES if op in ops]


def unique_kernels(cases) -> tuple:
    """Dedupe the kernels of the cases' plans by launch key (kernel key and arch):
    ``([(op, case, kernel index, kernel name), ...], planned kernels)``."""
    seen = {}
    total = 0
    for op, case in cases:
        plan, target = plan_of(op, **_case_call(op, case))
        _check_case(op, case, plan)
        for i, k in enumerate(plan.kernels):
            total += 1
            seen.setdefault((k.key, target.arch), (op, case, i, k.name))
    return list(seen.values()), total


def split_k_contract(kernel, ptx: str) -> None:
    """A split-K linear kernel fences every thread's partial (``fence.acq_rel.gpu``)
    before the one-thread release of its tile counter (see ``kernels/linear/_common.py``)."""
    if kernel.constexprs.get("SPLIT", 1) <= 1 or "REDUCE" not in kernel.constexprs:
        return
    fence, counter = ptx.find("fence.acq_rel.gpu"), ptx.find("atom.global.gpu.acq_rel.add")
    if counter < 0 or not 0 <= fence < counter:
        raise RuntimeError(f"{kernel.name}: split-K partials not fenced before the tile counter "
                           f"(fence at {fence}, counter at {counter} in the PTX)")


def _compile_one(item) -> tuple:
    """Worker: compile one kernel of a sweep case; ``(ok, seconds, message)``."""
    op, case, i, _ = item
    from .kernels import _plan
    t0 = time.perf_counter()
    try:
        plan, target = plan_of(op, **_case_call(op, case))
        ck = _plan.compile_kernel(plan.kernels[i], target)
        if not ck.asm.get("cubin"):
            raise RuntimeError("no cubin")
        split_k_contract(plan.kernels[i], ck.asm["ptx"])
        return True, time.perf_counter() - t0, ""
    except Exception as e:  # reported, not raised: the sweep lists every failure
        return False, time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:2000]}"


def sweep(ops=SWEEP_OPS, full: bool = False, jobs: int = 1, strength: int = 2, seed: int = 0, log=None) -> dict:
    """Compile every unique kernel of the sweep (see :func:`sweep_cases`) with ``jobs``
    processes. Returns counts, wall and compile seconds, and the failures."""
    from .kernels import _plan
    if _plan._interpret_env():
        raise RuntimeError("the sweep compiles for NVIDIA targets: run it without TRITON_INTERPRET=1")
    t0 = time.perf_counter()
    cases = sweep_cases(ops, full, strength, seed)
    items, planned = unique_kernels(cases)
    t_plan = time.perf_counter() - t0
    results = []
    if jobs > 1:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as ex:
            for n, (item, res) in enumerate(zip(items, ex.map(_compile_one, items, chunksize=1))):
                results.append((item, res))
                if log and (not res[0] or (n + 1) % 50 == 0):
                    print(f"[{n + 1}/{len(items)}] {'ok' if res[0] else 'FAILED'} {item[0]} {item[1]}", file=log,
                          flush=True)
    else:
        for n, item in enumerate(items):
            res = _compile_one(item)
            results.append((item, res))
            if log and (not res[0] or (n + 1) % 50 == 0):
                print(f"[{n + 1}/{len(items)}] {'ok' if res[0] else 'FAILED'} {item[0]} {item[1]}", file=log,
                      flush=True)
    failed = [dict(op=it[0], case=it[1], kernel=it[3], error=r[2]) for it, r in results if not r[0]]
    per_op = {}
    for (op, _, _, _), (ok, sec, _) in results:
        d = per_op.setdefault(op, dict(kernels=0, compile_s=0.0))
        d["kernels"] += 1
        d["compile_s"] = round(d["compile_s"] + sec, 1)
    for op in ops:
        per_op.setdefault(op, dict(kernels=0, compile_s=0.0))["cases"] = sum(o == op for o, _ in cases)
    return dict(full=full, strength=None if full else strength, cases=len(cases), planned_kernels=planned, unique_kernels=len(items),
                compiled=sum(r[0] for _, r in results), failed=failed, per_op=per_op, jobs=jobs,
                plan_s=round(t_plan, 2), wall_s=round(time.perf_counter() - t0, 1),
                compile_s=round(sum(r[1] for _, r in results), 1))


# --- command line ----------------------------------------------------------------------------

def _shape(text: str) -> tuple:
    text = text.strip()
    return tuple(int(v) for v in text.split(",") if v.strip()) if text else ()


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0/1, got {text!r}")


def _config(text: str) -> dict:
    """``post=0,split=4`` -> {"post": False, "split": 4} (fields of kernels.linear.Config)."""
    from .kernels.linear import Config
    types = {f.name: f.type for f in dataclasses.fields(Config)}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        k, _, v = item.partition("=")
        if k not in types:
            raise argparse.ArgumentTypeError(f"unknown config field {k!r} (one of {', '.join(types)})")
        t = types[k] if not isinstance(types[k], str) else {"int": int, "bool": bool, "str": str}[types[k]]
        out[k] = _bool(v) if t is bool else t(v)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m triton_dequant.inspect",
                                description="Compile, without a GPU, the kernels an op launches for a call.")
    sub = p.add_subparsers(dest="op", required=True)

    def common(q):
        q.add_argument("--arch", type=int, default=90, choices=[80, 86, 89, 90], help="compute capability")
        q.add_argument("--sms", type=int, default=None, help="SM count (default: that of an A100 / H100)")
        q.add_argument("--dump", metavar="DIR", help="write each kernel's .ttgir .ptx .cubin .sass here")
        q.add_argument("--modifiers", action="store_true", help="count opcodes with modifiers (LDG.E.128)")

    q = sub.add_parser("dequantize", help="ops.dequantize")
    q.add_argument("--shape", type=_shape, default=(4096, 1024), help="packed tensor shape, e.g. 4096,1024")
    q.add_argument("--dim", type=int, default=-1)
    q.add_argument("--nbit", type=int, default=4)
    q.add_argument("--container", default="int32", choices=list(CONTAINERS))
    q.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    q.add_argument("--scale-dtype", default="fp16", choices=list(DTYPES))
    q.add_argument("--scale-shape", type=_shape, default=(), help="broadcastable to the output; empty: a number")
    q.add_argument("--shift-dtype", default=None, choices=list(DTYPES))
    q.add_argument("--shift-shape", type=_shape, default=None)
    q.add_argument("--signed", action="store_true")
    q.add_argument("--block", type=int, default=None)
    q.add_argument("--num-warps", type=int, default=8)
    common(q)

    q = sub.add_parser("dequantize_rows", help="ops.dequantize_rows")
    q.add_argument("--rows", type=int, default=4096)
    q.add_argument("--n-codes", type=int, default=1024, help="codes per row")
    q.add_argument("--nbit", type=int, default=4)
    q.add_argument("--container", default="int32", choices=list(CONTAINERS))
    q.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    q.add_argument("--signed", action="store_true")
    q.add_argument("--row-align", type=int, default=1, help="row padding in bytes (as packing.pack_rows)")
    q.add_argument("--elems", type=int, default=None, help="elements per row (default: from n-codes, row-align)")
    q.add_argument("--block", type=int, default=None)
    q.add_argument("--num-warps", type=int, default=8)
    common(q)

    q = sub.add_parser("embedding_bag", help="ops.embedding_bag")
    q.add_argument("--rows", type=int, default=1 << 20, help="table rows")
    q.add_argument("--n-codes", type=int, default=128, help="codes per row")
    q.add_argument("--nbit", type=int, default=4)
    q.add_argument("--container", default="int32", choices=list(CONTAINERS))
    q.add_argument("--bags", type=int, default=65536)
    q.add_argument("--lookups", type=int, default=32, help="lookups per bag")
    q.add_argument("--mode", default="sum", choices=["sum", "mean"])
    q.add_argument("--weighted", action="store_true", help="per-sample weights")
    q.add_argument("--weight-dtype", default="fp32", choices=list(DTYPES))
    q.add_argument("--dtype", default="fp32", choices=["fp16", "fp32"])
    q.add_argument("--index-dtype", default="int64", choices=list(INDEX_DTYPES))
    q.add_argument("--offset-dtype", default="int64", choices=list(INDEX_DTYPES))
    q.add_argument("--include-last-offset", action="store_true")
    q.add_argument("--signed", action="store_true")
    q.add_argument("--row-align", type=int, default=1, help="row padding in bytes (as packing.pack_rows)")
    q.add_argument("--elems", type=int, default=None)
    q.add_argument("--block-l", type=int, default=None)
    q.add_argument("--block-w", type=int, default=None)
    q.add_argument("--num-warps", type=int, default=None)
    common(q)

    q = sub.add_parser("linear", help="ops.linear")
    q.add_argument("--M", type=int, default=1)
    q.add_argument("--K", type=int, default=4096)
    q.add_argument("--N", type=int, default=4096)
    q.add_argument("--nbit", type=int, default=4)
    q.add_argument("--group-size", type=int, default=0, help="0: per-channel scale/shift")
    q.add_argument("--dtype", default="fp16", choices=["fp16", "bf16"])
    q.add_argument("--scale-dtype", default=None, choices=list(DTYPES), help="default: --dtype")
    q.add_argument("--container", default="int32", choices=list(CONTAINERS))
    q.add_argument("--signed", action="store_true")
    q.add_argument("--packed-dim", type=int, default=0, choices=[0, 1], help="0: codes packed along K, 1: along N")
    q.add_argument("--layout", default=None,
                   help="prepacked weights: 'default' (the arch's layout for nbit) or a layout name "
                        "(mma_sm90_4b_n128k64w4...)")
    q.add_argument("--bias", action="store_true", help="a [N] bias")
    q.add_argument("--config", type=_config, default=None,
                   help="override fields of the default launch config, e.g. post=0,split=4")
    common(q)

    q = sub.add_parser("sweep", help="compile every plan of the sweep (CI: a pairwise covering subset)")
    q.add_argument("--full", action="store_true", help="the whole product of the axes (~10^5 kernels: days)")
    q.add_argument("--strength", type=int, default=2, help="covering strength: 2 pairwise (CI), 3 triples...")
    q.add_argument("--ops", default=",".join(SWEEP_OPS))
    q.add_argument("-j", "--jobs", type=int, default=1)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--count", action="store_true", help="only count cases and unique kernels (no compile)")
    return p


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if "triton_dequant.kernels" not in sys.modules:
        # this command compiles for NVIDIA targets: the kernels must be JITFunctions,
        # which TRITON_INTERPRET=1 (read when they are defined) would prevent
        os.environ.pop("TRITON_INTERPRET", None)
    if a.op == "sweep":
        ops = tuple(o for o in a.ops.split(",") if o)
        bad = [o for o in ops if o not in SWEEP_OPS]
        if bad:
            raise SystemExit(f"unknown op(s) {bad}; one of {', '.join(SWEEP_OPS)}")
        if a.count:
            cases = sweep_cases(ops, a.full, a.strength, a.seed)
            items, planned = unique_kernels(cases)
            by_op = {o: sum(it[0] == o for it in items) for o in ops}
            print(json.dumps(dict(full=a.full, cases=len(cases), planned_kernels=planned, unique_kernels=len(items),
                                  per_op=by_op), indent=1))
            return 0
        res = sweep(ops, a.full, a.jobs, a.strength, a.seed, log=sys.stderr)
        print(json.dumps(res, indent=1))
        return 1 if res["failed"] else 0
    call = {k: v for k, v in vars(a).items() if k not in ("op", "dump", "modifiers", "sms")}
    call["num_sms"] = a.sms
    try:
        plan_of(a.op, **call)
    except (ValueError, TypeError) as e:  # a bad call description
        print(f"python -m triton_dequant.inspect {a.op}: {e}", file=sys.stderr)
        return 2
    try:
        res = inspect(a.op, dump=a.dump, modifiers=a.modifiers, **call)
    except ValueError as e:  # the compile step refused the plan (e.g. past the SM's shared memory)
        print(f"python -m triton_dequant.inspect {a.op}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
