"""Layout step for ``tl.dequantize``: no layout conversion between the load of
the packed words, the dequantized tile and its consumer.

Why
---
``tl.dequantize`` lowers (NVIDIA) to one ``tt.elementwise_inline_asm`` per
container element, then a ``tt.join`` tree and a ``tt.reshape`` (plus a
``tt.trans`` for ``axis != -1``). A thread then holds ``PER`` consecutive
outputs per packed word it loaded: after a 16-byte load of int32 words with
int4 codes, 32 consecutive fp16 (64 bytes). Triton's ``Coalesce`` gives a
``tt.store`` at most 16 bytes per thread, so the two layouts differ, both are
anchors for ``RemoveLayoutConversions``, and TTGIR keeps a ``ttg.convert_layout``
through shared memory. Likewise for a tensor loaded in its own coalesced layout
that meets the tile in an elementwise op (a per-output scale, GEMV activations).

What
----
An extra step in Triton's official pipeline, installed through
``triton.knobs.runtime.add_stages_inspection_hook``: the ``"ttgir"`` stage runs
Triton's own ``make_ttgir`` unchanged, then, only for modules that contain a
``tl.dequantize`` asm block (its ``// triton_dequant`` marker), rewrites the
TTGIR text and reruns Triton's own ``remove-layout-conversions``,
``reduce-data-duplication``, canonicalizer and CSE (which rematerialise the
cheap pointer/mask math in the new layouts, so the inserted conversions of
pointers and masks vanish):

1. **leaving the tile** (``ttg.convert_layout`` from a dequantized layout A to
   the layout B of the loads/stores it meets through elementwise ops and
   conversions): if stores from A leave no gaps in a warp's writes (a thread's
   contiguous run is at most 16 bytes and lanes continue it: e.g. axis-0 tiles,
   reductions' outputs), those stores and loads move to A (for #linear layouts
   with the registers reordered so the run is vectorisable: a free
   register-permutation conversion remains). Otherwise (1-D / last-axis tiles
   with wide loads) the default store policy ``"narrow"`` instead retargets the
   *load of the packed words* to the layout whose dequantized tile *is* B
   (``PER`` times fewer words per thread along the unpacked axis): coalesced
   16-byte stores, narrower loads. See :func:`set_store_policy`.
2. **entering the tile** (a ``tt.load`` whose only use converts it into a
   dequantized layout, a slice of one, e.g. the activations ``x[:, None]`` of a
   GEMV, or the layout Triton chose for the packed words): the load is issued
   in that layout directly.

The result is kept only if it has fewer conversions that move data than
Triton's module and no more shared-memory allocations; otherwise (and on any
error) Triton's module is returned untouched. Modules without the marker are
never changed (not even re-parsed): their IR is identical with or without the
step. ``tl.dot`` operands are left to Triton: the tile reaches the dot through
one ``ttg.local_alloc`` (wgmma) or ``local_alloc`` + ``local_load`` (mma.sync),
with no ``convert_layout`` before it.

The Python bindings cannot create ``ttg.convert_layout`` ops nor retype values,
so the rewrite is textual on the printed module (``mod.str()``), with a small
parser of the MLIR text (SSA names with region scoping, ``%v#k`` results,
tensor types with nested encodings, string literals, trailing ``loc(...)``),
re-parsed with ``ir.parse_mlir_module`` in the module's own context.

Measured (H100, Triton 3.6, bench/layout.py, 2**28 fp16 outputs): stock Triton's
conversion through shared memory is nearly free in these DRAM-bound kernels
(1-D stock at 96-99% of a device copy). Storing from the tile's own layout with
gaps ("owned") is 1.05x-5.7x slower than stock; "narrow" is 0-5% slower than
stock (4-byte loads); axis-0 stores: equal; a toy GEMV: int8 slower, int4 equal,
int2 5% faster. So the step removes the conversions, but it is not a speed-up
of these kernels on H100: install it where shared memory or its barriers are
the constraint, or to study layouts.

API
---
``install()`` (idempotent; keeps and calls first any hook already in the slot),
``uninstall()``, ``enable()``, ``disable()``, ``reset()``, ``is_enabled()``,
``is_installed()``, ``is_active()``, ``set_store_policy()``; environment
Off by default; ``TRITON_DEQUANT_LAYOUT=1`` or ``enable()`` turns it on (``enable()``/``disable()`` override the environment).
``cache_tag()`` describes state, policy and version for kernel cache keys
(Triton's key does not cover stage hooks). ``rewrite_ttgir(text)`` is the pure
text transformation, ``conversion_summary(ttgir)`` counts conversions,
``last_report`` tells what the last dequantize compile did.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

__all__ = ["install", "uninstall", "enable", "disable", "reset", "is_enabled", "is_installed", "is_active", "cache_tag",
           "rewrite_ttgir", "conversion_summary", "last_report", "VERSION"]

VERSION = 1
IR_MARKER = 'tt.elementwise_inline_asm "// triton_dequant'
_ENV = "TRITON_DEQUANT_LAYOUT"

_enabled: Optional[bool] = None  # None: follow the environment variable
_policy = "narrow"  # for stores of tiles with gaps: "narrow" | "owned" | "stock" (see set_store_policy)
_installed_hook = None  # our hook function while installed
_previous_hook = None  # the hook that was installed before ours (chained)
last_report: dict = {}  # what the last dequant-bearing compile did (for tests / debugging)


# --- switches -------------------------------------------------------------------------

def enable() -> None:
    """Turn the layout step on (overrides ``TRITON_DEQUANT_LAYOUT``)."""
    global _enabled
    _enabled = True


def disable() -> None:
    """Turn the layout step off: the hook stays installed but returns Triton's module."""
    global _enabled
    _enabled = False


def reset() -> None:
    """Forget ``enable()``/``disable()``: follow ``TRITON_DEQUANT_LAYOUT`` again (default off)."""
    global _enabled
    _enabled = None


def set_store_policy(policy: str) -> None:
    """What to do when storing the dequantized tile in the layout it is born in
    would leave gaps in a warp's writes (a thread holding more than 16 contiguous
    bytes: 1-D and last-axis tiles with 16-byte loads of packed words):

    * ``"narrow"`` (default): load the packed words narrower, so that the tile
      is born in Triton's coalesced store layout (no conversion, no gaps);
    * ``"stock"``: keep Triton's conversion through shared memory;
    * ``"owned"``: store from the layout it is born in, gaps and all (measured
      much slower on an H100: bench/layout.py, kept for that comparison).
    """
    global _policy
    if policy not in ("narrow", "stock", "owned"):
        raise ValueError(f"store policy must be 'narrow', 'stock' or 'owned', got {policy!r}")
    _policy = policy


def is_enabled() -> bool:
    if _enabled is not None:
        return _enabled
    # Off unless asked for: on the H100 the conversions it removes cost nothing
    # measurable in our kernels and the rewritten forms were 0-5% slower
    # (bench/results/h100_layout.json); the IR contract is there for those who want it.
    return os.environ.get(_ENV, "0").strip().lower() not in ("", "0", "false", "off", "no")


def is_installed() -> bool:
    """Is the step in Triton's pipeline (our hook installed, or chained from the
    installed one, and not uninstalled)?"""
    return (_installed_hook is not None and not getattr(_installed_hook, "__triton_dequant_disabled__", False)
            and _reachable(_installed_hook))


def cache_tag() -> str:
    """State and version of this step, for kernel cache keys: kernels compiled
    with the step on and off (or by another version of it) must not share a
    cache entry. ``'layout-v1-<source hash>-on'`` / ``...-off``."""
    return f"layout-v{VERSION}-{_source_hash()}-{_policy if is_active() else 'off'}"


def is_active() -> bool:
    """Will the next compile run the step? (installed and enabled)"""
    return is_installed() and is_enabled()


@functools.lru_cache(maxsize=None)
def _source_hash() -> str:
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def install() -> None:
    """Add the step to Triton's pipeline (idempotent). A hook that is already in
    ``knobs.runtime.add_stages_inspection_hook`` is kept and called first."""
    global _installed_hook, _previous_hook
    from triton import knobs
    if _installed_hook is not None:
        if knobs.runtime.add_stages_inspection_hook is _installed_hook or _reachable(_installed_hook):
            _installed_hook.__triton_dequant_disabled__ = False  # (re)activate where it is
            return
        _installed_hook = None  # ours was dropped by whoever replaced the hook: install anew
    previous = knobs.runtime.add_stages_inspection_hook

    def hook(backend, stages, options, language, capability):
        if previous is not None:
            previous(backend, stages, options, language, capability)
        _wrap_stages(backend, stages, options, language, capability)

    hook.__triton_dequant_layout__ = True
    _previous_hook = previous
    _installed_hook = hook
    knobs.runtime.add_stages_inspection_hook = hook


def uninstall() -> None:
    """Remove the step, restoring the hook that was there before ``install()``.
    If another hook was installed on top of ours, ours is left in place but made
    a pass-through (its chained predecessor still runs)."""
    global _installed_hook, _previous_hook
    from triton import knobs
    if _installed_hook is None:
        return
    if knobs.runtime.add_stages_inspection_hook is _installed_hook:
        knobs.runtime.add_stages_inspection_hook = _previous_hook
        _installed_hook = None
        _previous_hook = None
    else:  # someone chained on top of us: become transparent
        _installed_hook.__triton_dequant_disabled__ = True


def _reachable(hook) -> bool:
    """Is ``hook`` still called: the installed hook, or chained from it through
    closures (how hooks, ours included, usually call the previous one)?"""
    from triton import knobs
    seen, work = set(), [knobs.runtime.add_stages_inspection_hook]
    while work:
        f = work.pop()
        if f is None or id(f) in seen:
            continue
        if f is hook:
            return True
        seen.add(id(f))
        for cell in getattr(f, "__closure__", None) or ():
            try:
                v = cell.cell_contents
            except ValueError:
                continue
            if callable(v):
                work.append(v)
        work.append(getattr(f, "__wrapped__", None))
    return False


def _wrap_stages(backend, stages, options, language, capability):
    if getattr(_installed_hook, "__triton_dequant_disabled__", False):
        return
    if getattr(stages.get("ttgir"), "__triton_dequant_layout__", False):
        return  # already wrapped (our hook reached twice through a chain)
    target = getattr(backend, "target", None)
    if getattr(target, "backend", None) != "cuda" or "ttgir" not in stages:
        return
    if str(getattr(language, "name", language)).upper().endswith("GLUON"):
        return  # gluon kernels choose their layouts themselves
    inner = stages["ttgir"]

    def ttgir(src, metadata):
        mod = inner(src, metadata)
        if not is_enabled():
            return mod
        return _rewrite_module(mod)

    ttgir.__triton_dequant_layout__ = True
    stages["ttgir"] = ttgir


# --- module level ----------------------------------------------------------------------

def _score(text: str) -> Tuple[int, int]:
    """(layout conversions that move data between threads, shared-memory allocations)."""
    aliases = _alias_map(text.split("\n"))
    moving = 0
    for m in re.finditer(r"ttg\.convert_layout [^\n]*", text):
        code, _ = _split_loc(m.group(0))
        tys = _split_top(_split_top(code, " : ")[-1], " -> ")
        a, b = (TensorType.parse(t) for t in tys) if len(tys) == 2 else (None, None)
        if a is None or b is None or not _register_permutation(a.encoding, b.encoding, aliases):
            moving += 1
    return moving, len(re.findall(r"\bttg\.local_alloc\b", text))


def conversion_summary(ttgir: str) -> Dict[str, int]:
    """Counts in a TTGIR text: ``moving`` layout conversions (data crosses
    threads: shuffles or shared memory), ``register`` conversions (a permutation
    of a thread's registers, free), ``local_alloc`` (shared-memory buffers)."""
    total = len(re.findall(r"\bttg\.convert_layout\b", ttgir))
    moving, allocs = _score(ttgir)
    return {"moving": moving, "register": total - moving, "local_alloc": allocs}


def _linear_parts(enc: str, aliases: Dict[str, str]) -> Optional[Tuple[List[List[int]], str]]:
    full = _resolve(enc, aliases)
    m = re.match(r"^#ttg\.linear<\{register = (\[.*?\]\]|\[\]), (lane = .*)$", full)
    if not m:
        return None
    return [_int_list(b) for b in re.findall(r"\[[-\d, ]*\]", m.group(1)[1:-1])], m.group(2)


def _register_permutation(a: str, b: str, aliases: Dict[str, str]) -> bool:
    """Two linear layouts that differ only in the order of a thread's registers:
    converting between them moves no data (register renaming)."""
    pa, pb = _linear_parts(a, aliases), _linear_parts(b, aliases)
    return pa is not None and pb is not None and pa[1] == pb[1] and sorted(pa[0]) == sorted(pb[0])


def _rewrite_module(mod):
    """Triton's TTGIR module -> the rewritten one (a new module in the same
    context), or ``mod`` itself when there is nothing to do or no gain."""
    global last_report
    text = mod.str()
    if IR_MARKER not in text:
        return mod
    report = {"edits": [], "accepted": False, "before": _score(text)}
    last_report = report
    try:
        new_text, report["edits"] = rewrite_ttgir(text)
        if not report["edits"]:
            return mod
        new = _parse_and_fold(new_text, mod.context)
    except Exception as e:  # never break a compile: keep Triton's module
        report["error"] = f"{type(e).__name__}: {e}"
        if _debug():
            raise
        return mod
    out = new.str()
    report["after"] = _score(out)
    if _debug():
        report["text"] = out
    (before_moving, before_alloc), (after_moving, after_alloc) = report["before"], report["after"]
    if after_moving < before_moving and after_alloc <= before_alloc:
        report["accepted"] = True
        return new
    return mod


def _debug() -> bool:
    return os.environ.get("TRITON_DEQUANT_LAYOUT_DEBUG", "0") not in ("", "0")


def _parse_and_fold(text: str, ctx):
    """Parse a TTGIR text into ``ctx`` and run Triton's own clean-up passes: the
    inserted pointer/mask conversions fold into rematerialised address math."""
    from triton._C.libtriton import ir, passes
    fd, path = tempfile.mkstemp(suffix=".ttgir", prefix="triton_dequant_")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        new = ir.parse_mlir_module(path, ctx)
    finally:
        os.unlink(path)
    new.context = ctx
    pm = ir.pass_manager(ctx)
    pm.enable_debug()
    passes.ttgpuir.add_remove_layout_conversions(pm)
    passes.ttgpuir.add_reduce_data_duplication(pm)
    passes.common.add_canonicalizer(pm)
    passes.ttir.add_loop_aware_cse(pm)
    passes.common.add_symbol_dce(pm)
    passes.common.add_canonicalizer(pm)
    pm.run(new, "triton_dequant_layout")
    return new


# --- MLIR text helpers -----------------------------------------------------------------

_OPEN, _CLOSE = "<([{", ">)]}"
_NAME = r"%[A-Za-z0-9_$.\-]+"
_USE_RE = re.compile(r"(%[A-Za-z0-9_$.\-]+)(?:#(\d+))?")


def _mask_strings(s: str) -> str:
    """``s`` with the contents of string literals replaced by spaces (same length)."""
    out, i, n = [], 0, len(s)
    while i < n:
        c = s[i]
        if c == '"':
            j = i + 1
            while j < n and s[j] != '"':
                j += 2 if s[j] == "\\" else 1
            out.append('"' + " " * (min(j, n) - i - 1) + ('"' if j < n else ""))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)[:n]


def _split_top(s: str, sep: str) -> List[str]:
    """Split ``s`` at ``sep`` occurring outside brackets and string literals."""
    m = _mask_strings(s)
    parts, depth, start, i = [], 0, 0, 0
    while i < len(m):
        c = m[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE and not (c == ">" and i > 0 and m[i - 1] == "-"):
            depth -= 1
        elif depth == 0 and m.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _split_loc(line: str) -> Tuple[str, str]:
    """``(op text, ' loc(...)')`` for a line ending in a location."""
    m = _mask_strings(line)
    end = len(m.rstrip())
    if not m[:end].endswith(")"):
        return line, ""
    depth = 0
    for i in range(end - 1, -1, -1):
        if m[i] == ")":
            depth += 1
        elif m[i] == "(":
            depth -= 1
            if depth == 0:
                if m[max(0, i - 4):i] == " loc" or m[max(0, i - 3):i] == "loc":
                    k = i - 3
                    while k > 0 and m[k - 1] == " ":
                        k -= 1
                    return line[:k], line[k:end]
                return line, ""
    return line, ""


@dataclass
class TensorType:
    shape: List[int]
    elem: str
    encoding: str

    @staticmethod
    def parse(s: str) -> Optional["TensorType"]:
        s = s.strip()
        if not (s.startswith("tensor<") and s.endswith(">")):
            return None
        body = s[len("tensor<"):-1]
        parts = _split_top(body, ",")
        if len(parts) != 2:
            return None
        m = re.match(r"^((?:\d+x)*)(.+)$", parts[0].strip())
        if not m:
            return None
        dims = [int(d) for d in m.group(1).split("x") if d]
        return TensorType(dims, m.group(2).strip(), parts[1].strip())

    def with_(self, elem: Optional[str] = None, encoding: Optional[str] = None) -> "TensorType":
        return TensorType(list(self.shape), elem or self.elem, encoding or self.encoding)

    def __str__(self) -> str:
        dims = "".join(f"{d}x" for d in self.shape)
        return f"tensor<{dims}{self.elem}, {self.encoding}>"


def _tensor_types(s: str) -> List[Tuple[int, int]]:
    """Spans of the ``tensor<...>`` types in ``s``."""
    m = _mask_strings(s)
    spans, i = [], 0
    while True:
        i = m.find("tensor<", i)
        if i < 0:
            return spans
        depth, j = 0, i + len("tensor")
        while j < len(m):
            if m[j] == "<":
                depth += 1
            elif m[j] == ">" and m[j - 1] != "-":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        spans.append((i, j + 1))
        i = j + 1


@dataclass
class Op:
    index: int  # line number in the module text
    indent: str
    results: List[str]  # SSA names (with '%'), one per result group
    counts: List[int]  # number of results per group (``%y:8`` -> 8)
    name: str
    body: str  # text after the op name, without the location
    loc: str
    operands: List[str] = field(default_factory=list)  # uses, e.g. '%y#3'
    dq: bool = False  # derives from a tl.dequantize result
    result_type: Optional[TensorType] = None

    def type_section(self) -> str:
        parts = _split_top(self.body, " : ")
        return parts[-1] if len(parts) > 1 else ""


_OP_RE = re.compile(r"^(\s*)(?:(%[^=]+?)\s*=\s*)?(\"?[A-Za-z_][\w.]*\"?)(.*)$")
# ops through which a value still "is" the dequantized tile (same data, new view or elementwise)
_VIEW_OPS = {"tt.join", "tt.reshape", "tt.trans", "ttg.convert_layout", "tt.bitcast", "tt.fp_to_fp",
             "tt.elementwise_inline_asm", "tt.extern_elementwise", "tt.clampf", "tt.precise_sqrt",
             "tt.precise_divf", "tt.mulhiui", "arith.select"}


def _is_elementwise(name: str) -> bool:
    if name in _VIEW_OPS:
        return True
    if name.startswith("math."):
        return True
    if name.startswith("arith.") and name not in ("arith.constant",):
        return True
    return False


def _parse_op(index: int, line: str) -> Optional[Op]:
    text, loc = _split_loc(line)
    m = _OP_RE.match(text)
    if not m or text.strip().startswith(("}", "^", "#", "//")):
        return None
    indent, res, name, body = m.group(1), m.group(2), m.group(3), m.group(4)
    results, counts = [], []
    if res:
        for r in res.split(","):
            r = r.strip()
            mm = re.fullmatch(r"(%[A-Za-z0-9_$.\-]+)(?::(\d+))?", r)
            if not mm:
                return None
            results.append(mm.group(1))
            counts.append(int(mm.group(2) or 1))
    op = Op(index, indent, results, counts, name.strip('"'), body, loc)
    masked = _mask_strings(body)
    op.operands = [u.group(0) for u in _USE_RE.finditer(masked)]
    spans = _tensor_types(op.type_section())
    if spans and results:
        ts = op.type_section()
        op.result_type = TensorType.parse(ts[spans[-1][0]:spans[-1][1]])
    return op


def _base(use: str) -> str:
    return use.split("#", 1)[0]


_OPERANDS_RE = re.compile(r"^\s*(" + _NAME + r"(?:#\d+)?(?:\s*,\s*" + _NAME + r"(?:#\d+)?)*)(.*)$", re.S)


def _operands_and_attrs(s: str) -> Tuple[List[str], str]:
    """``'%a, %b, %c cacheModifier = cs'`` -> ``(['%a', '%b', '%c'], ' cacheModifier = cs')``."""
    m = _OPERANDS_RE.match(s)
    if not m:
        return [], ""
    args = [a.strip() for a in m.group(1).split(",")]
    rest = m.group(2).rstrip()
    return args, (" " + rest.strip()) if rest.strip() else ""


def _alias_map(lines: List[str]) -> Dict[str, str]:
    """``#name = <attribute>`` definitions at the top of a module."""
    out = {}
    for line in lines:
        m = re.match(r"^(#[A-Za-z_][\w]*) = (.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
        elif line.startswith("module"):
            break
    return out


def _resolve(enc: str, aliases: Dict[str, str]) -> str:
    return aliases.get(enc, enc)


def _int_list(s: str) -> List[int]:
    return [int(v) for v in re.findall(r"-?\d+", s)]


def _contiguous_dim(enc: str, rank: int, aliases: Dict[str, str]) -> int:
    """The fastest-varying dimension of a (blocked) layout; the last one otherwise."""
    m = re.search(r"order = \[([\d, ]*)\]", _resolve(enc, aliases))
    if m and _resolve(enc, aliases).startswith("#ttg.blocked"):
        order = _int_list(m.group(1))
        if order:
            return order[0]
    return rank - 1


def _store_order(enc: str, store_enc: str, rank: int, aliases: Dict[str, str]) -> str:
    """The layout a store of a value in ``enc`` should use: ``enc`` itself, or for a
    linear layout whose first register bases do not run along the memory-contiguous
    dimension (dequantize along a non-minor axis), the same layout with the register
    bases reordered so that they do. Only the order of a thread's registers changes
    (same lanes, warps), so the conversion costs no data movement, and the store can
    use vectors."""
    parts = _linear_parts(enc, aliases)
    if parts is None:
        return enc
    regs, rest_text = parts
    if not regs or any(len(b) != rank for b in regs):
        return enc
    d = _contiguous_dim(store_enc, rank, aliases)
    along = [b for b in regs if b[d] and not any(v for k, v in enumerate(b) if k != d)]
    along.sort(key=lambda b: b[d])
    rest = [b for b in regs if b not in along]
    new = along + rest
    if new == regs:
        return enc
    text = ", ".join("[" + ", ".join(str(v) for v in b) + "]" for b in new)
    return f"#ttg.linear<{{register = [{text}], {rest_text}"


def _unpermuted(enc: str, aliases: Dict[str, str]) -> str:
    """Inverse helper for :func:`_store_order` comparisons: an alias whose
    definition equals ``enc`` (permuted layouts are written inline)."""
    for k, v in aliases.items():
        if v == enc:
            return k
    return enc


# --- store shapes: gaps and the narrow-load alternative --------------------------------

SECTOR = 32  # bytes: the unit of a global memory transaction
VECTOR = 16  # bytes: the widest access of one thread


def _blocked_parts(enc: str, aliases: Dict[str, str]) -> Optional[Dict[str, List[int]]]:
    full = _resolve(enc, aliases)
    if not full.startswith("#ttg.blocked<"):
        return None
    out = {}
    for key in ("sizePerThread", "threadsPerWarp", "warpsPerCTA", "order"):
        m = re.search(key + r" = \[([\d, ]*)\]", full)
        if not m:
            return None
        out[key] = _int_list(m.group(1))
    return out


def _bases(enc: str, aliases: Dict[str, str]) -> Optional[Tuple[List[List[int]], List[List[int]]]]:
    """(register bases, lane bases) of a blocked, linear or slice layout, in the
    order a thread's registers / a warp's lanes enumerate them (for blocked
    layouts without the repetition and broadcast bases, which come last)."""
    full = _resolve(enc, aliases)
    m = re.match(r"^#ttg\.slice<\{dim = (\d+), parent = (.*)\}>$", full)
    if m:
        k = int(m.group(1))
        parent = _bases(m.group(2), aliases)
        if parent is None:
            return None
        drop = lambda bs: [b[:k] + b[k + 1:] for b in bs if any(v for i, v in enumerate(b) if i != k)]  # noqa
        return drop(parent[0]), drop(parent[1])
    bl = _blocked_parts(enc, aliases)
    if bl is not None:
        rank = len(bl["order"])
        regs, lanes = [], []
        for d in bl["order"]:
            for bit in range(max(0, bl["sizePerThread"][d].bit_length() - 1)):
                regs.append([(1 << bit) if i == d else 0 for i in range(rank)])
            for bit in range(max(0, bl["threadsPerWarp"][d].bit_length() - 1)):
                lanes.append([(bl["sizePerThread"][d] << bit) if i == d else 0 for i in range(rank)])
        return regs, lanes
    parts = _linear_parts(enc, aliases)
    if parts is None:
        return None
    regs, rest = parts
    m = re.search(r"lane = (\[.*?\]\]|\[\])", rest)
    lanes = [_int_list(b) for b in re.findall(r"\[[-\d, ]*\]", m.group(1)[1:-1])] if m else []
    return regs, lanes


def _run_and_lanes(enc: str, d: int, aliases: Dict[str, str]) -> Optional[Tuple[int, int]]:
    """Along dimension ``d`` of a layout: (elements a thread holds contiguously
    in its first registers, lanes that continue that run side by side)."""
    bases = _bases(enc, aliases)
    if bases is None:
        return None
    regs, lanes = bases

    def along(b, v):
        return d < len(b) and b[d] == v and not any(x for k, x in enumerate(b) if k != d)

    run = 1
    for b in regs:  # registers in order: the vectorisable run
        if not along(b, run):
            break
        run *= 2
    nl = 1
    for b in lanes:
        if not along(b, run * nl):
            break
        nl *= 2
    return run, nl


def _gap_free(enc: str, shape: List[int], d: int, elem_bytes: int, aliases: Dict[str, str]) -> bool:
    """Does a warp's store instruction in layout ``enc`` write whole sectors?
    (Coalesce caps stores at 16 bytes per thread for this reason: a thread that
    owns a longer contiguous run writes it as 16-byte pieces, and each
    instruction then touches 16 of every run*bytes: partial sectors, which the
    H100 measurably pays for; see bench/layout.py.)"""
    rl = _run_and_lanes(enc, d, aliases)
    if rl is None:
        return False
    run, lanes = rl
    if run * elem_bytes > VECTOR:
        return False
    return run * elem_bytes * lanes >= SECTOR or run * lanes >= shape[d]


def _narrow_layout(store_enc: str, axis: int, per: int, aliases: Dict[str, str]) -> Optional[str]:
    """The layout of the packed words whose dequantized tile lands exactly in
    the (blocked, coalesced) store layout: PER times fewer words per thread
    along the unpacked axis, which must be the store's contiguous one."""
    full = _resolve(store_enc, aliases)
    bl = _blocked_parts(store_enc, aliases)
    if bl is None or bl["order"][0] != axis or bl["sizePerThread"][axis] % per:
        return None
    spt = list(bl["sizePerThread"])
    spt[axis] //= per
    return re.sub(r"sizePerThread = \[[\d, ]*\]", "sizePerThread = [" + ", ".join(map(str, spt)) + "]", full,
                  count=1)


def _opens_region(code: str) -> bool:
    return _mask_strings(code).rstrip().endswith("{")


def _encoding_aliases(enc: str) -> List[str]:
    return re.findall(r"#[A-Za-z_][\w]*", enc)


# --- the rewrite -----------------------------------------------------------------------

def _parse_function_ops(lines: List[str]):
    """Parse the op lines of a module; returns (ops, lookup) where ``lookup(op, use)``
    finds the op defining ``use`` as seen from ``op`` (MLIR region scoping)."""
    stack: List[Dict[str, Op]] = [{}]
    chains: Dict[int, Tuple[Dict[str, Op], ...]] = {}
    ops: List[Op] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "//")):
            continue
        code, _ = _split_loc(line)
        code_s = code.strip()
        if code_s.startswith("}"):
            if len(stack) > 1:
                stack.pop()
            if _opens_region(code):
                stack.append({})
            continue
        if code_s.startswith("^"):
            continue
        op = _parse_op(i, line)
        if op is not None:
            chains[i] = tuple(stack)
            ops.append(op)
            for r in op.results:
                stack[-1][r] = op
        if _opens_region(code):
            stack.append({})

    def lookup(op: Op, use: str) -> Optional[Op]:
        name = _base(use)
        for d in reversed(chains[op.index]):
            if name in d:
                return d[name]
        return None

    return ops, lookup


def _family(enc: str, layouts: set, names: set) -> bool:
    """``enc`` is one of the dequantized layouts, or built on one (a slice of it)."""
    return enc in layouts or bool(set(_encoding_aliases(enc)) & names)


def _elem_bytes(elem: str) -> int:
    m = re.fullmatch(r"[a-z]*?(\d+)", elem.strip())
    bits = int(m.group(1)) if m else 32
    return max(1, bits // 8)


def _pointee(ptr_elem: str) -> Optional[str]:
    m = re.fullmatch(r"!tt\.ptr<([^,<>]+)(?:,\s*\d+)?>", ptr_elem.strip())
    return m.group(1).strip() if m else None


def rewrite_ttgir(text: str) -> Tuple[str, List[str]]:
    """Rewrite the loads/stores around ``tl.dequantize`` results in a TTGIR module
    text (see the module docstring). Returns ``(new text, list of edits)``; the
    new text still needs ``remove-layout-conversions`` to fold the inserted
    conversions (of pointers, masks, and between the old and new layouts)."""
    if IR_MARKER not in text:
        return text, []
    lines = text.split("\n")
    aliases = _alias_map(lines)
    ops, lookup = _parse_function_ops(lines)

    # The dequantize family: values computed from a marked asm block through
    # views (join, reshape, trans), elementwise ops and reductions. Their layouts
    # (not the asm's own, which is the packed input's) are the dequantized layouts.
    layouts: set = set()
    entry: set = set()
    users: Dict[int, List[Op]] = {}  # defining op (line) -> ops using one of its results
    for op in ops:
        defs = [(u, lookup(op, u)) for u in op.operands]
        for _, d in defs:
            if d is not None and op not in users.setdefault(d.index, []):
                users[d.index].append(op)
        if op.name == "tt.elementwise_inline_asm" and '"// triton_dequant' in op.body:
            op.dq = True
            for _, d in defs:  # the packed words (and scale/shift) come in these layouts
                if d is not None and d.result_type is not None:
                    entry.add(d.result_type.encoding)
        elif op.results and op.name != "ttg.convert_layout" and (
                _is_elementwise(op.name) or op.name == "tt.reduce"):
            # (not through conversions: their targets are the layouts of others)
            op.dq = any(d is not None and d.dq for _, d in defs)
            if op.dq and op.result_type is not None:
                layouts.add(op.result_type.encoding)
    if not layouts:
        return text, []
    names = {a for enc in layouts for a in _encoding_aliases(enc) if a in aliases}

    def family(enc: str) -> bool:
        return _family(enc, layouts, names)

    def types_of(cvt: Op):
        tys = _split_top(cvt.type_section(), " -> ")
        if len(tys) != 2:
            return None, None
        return TensorType.parse(tys[0]), TensorType.parse(tys[1])

    existing = set(re.findall(r"%__tdq_\d+", text))
    counter = [0]

    def fresh() -> str:
        while True:
            name = f"%__tdq_{counter[0]}"
            counter[0] += 1
            if name not in existing:
                return name

    insert_before: Dict[int, List[str]] = {}
    insert_after: Dict[int, List[str]] = {}
    replace: Dict[int, Optional[str]] = {}
    edits: List[str] = []

    def convert(indent: str, src: str, ty: TensorType, enc: str, loc: str) -> Tuple[str, str]:
        name = fresh()
        return name, f"{indent}{name} = ttg.convert_layout {src} : {ty} -> {ty.with_(encoding=enc)}{loc}"

    def memory_op(op: Op):
        """(operands, attributes text, pointer type, pointee) of a tt.load / tt.store."""
        head = _split_top(op.body, " : ")
        if len(head) != 2:
            return None
        args, attrs = _operands_and_attrs(head[0])
        ptr_ty = TensorType.parse(head[1].strip())
        if ptr_ty is None or not args or _pointee(ptr_ty.elem) is None:
            return None
        return args, attrs, ptr_ty, _pointee(ptr_ty.elem)

    def retarget_store(op: Op, enc: str) -> bool:
        """tt.store %p, %v, %m : P<B>  ->  tt.store cvt(%p), cvt(%v), cvt(%m) : P<enc>."""
        mo = memory_op(op)
        if mo is None or len(mo[0]) < 2 or op.index in replace:
            return False
        args, attrs, ptr_ty, elem = mo
        val_ty = ptr_ty.with_(elem=elem)
        value, new_lines = args[1], []
        d = lookup(op, value)
        if d is not None and d.name == "ttg.convert_layout" and d.operands:
            src_ty, _ = types_of(d)
            if src_ty is not None and src_ty.encoding in (enc, _unpermuted(enc, aliases)):
                value, val_ty = d.operands[0], src_ty  # skip the conversion back and forth
        if val_ty.encoding != enc:
            value, ln = convert(op.indent, value, val_ty, enc, op.loc)
            new_lines.append(ln)
        new_args = [None, value]
        p, ln = convert(op.indent, args[0], ptr_ty, enc, op.loc)
        new_lines.append(ln)
        new_args[0] = p
        if len(args) > 2:
            m, ln = convert(op.indent, args[2], ptr_ty.with_(elem="i1"), enc, op.loc)
            new_lines.append(ln)
            new_args.append(m)
        insert_before.setdefault(op.index, []).extend(new_lines)
        replace[op.index] = (f"{op.indent}tt.store {', '.join(new_args)}{attrs} : "
                             f"{ptr_ty.with_(encoding=enc)}{op.loc}")
        edits.append(f"store line {op.index + 1}: {ptr_ty.encoding} -> {enc}")
        return True

    def retarget_load(ld: Op, enc: str, result: Optional[str] = None) -> bool:
        """%L = tt.load %p, %m, %o : P<B>  ->  %t = tt.load cvt(%p), cvt(%m), cvt(%o) : P<enc>;
        %L = convert %t to B (or, with ``result``, name the new load ``result``)."""
        mo = memory_op(ld)
        if mo is None or ld.index in replace or len(ld.results) != 1:
            return False
        args, attrs, ptr_ty, elem = mo
        val_ty = ptr_ty.with_(elem=elem)
        new_lines, new_args = [], []
        for k, a in enumerate(args):
            ty = ptr_ty if k == 0 else ptr_ty.with_(elem="i1") if k == 1 else val_ty
            name, ln = convert(ld.indent, a, ty, enc, ld.loc)
            new_lines.append(ln)
            new_args.append(name)
        insert_before.setdefault(ld.index, []).extend(new_lines)
        tmp = result or fresh()
        replace[ld.index] = (f"{ld.indent}{tmp} = tt.load {', '.join(new_args)}{attrs} : "
                             f"{ptr_ty.with_(encoding=enc)}{ld.loc}")
        if result is None:
            insert_after.setdefault(ld.index, []).append(
                f"{ld.indent}{ld.results[0]} = ttg.convert_layout {tmp} : {val_ty.with_(encoding=enc)} -> "
                f"{val_ty}{ld.loc}")
        edits.append(f"load line {ld.index + 1}: {ptr_ty.encoding} -> {enc}")
        return True

    def narrow_packed_loads(exit_cvt: Op, dst_ty: TensorType) -> None:
        """Retarget the loads of packed words feeding the dequantize asm blocks
        behind ``exit_cvt`` so that the unpacked tile is born in ``dst_ty``'s layout."""
        asms, work, seen = [], [lookup(exit_cvt, exit_cvt.operands[0])], set()
        while work:
            d = work.pop()
            if d is None or d.index in seen or not d.dq:
                continue
            seen.add(d.index)
            if d.name == "tt.elementwise_inline_asm" and '"// triton_dequant' in d.body:
                asms.append(d)
                continue
            work.extend(lookup(d, u) for u in d.operands)
        for asm in asms:
            per = sum(asm.counts)
            words = lookup(asm, asm.operands[0]) if asm.operands else None
            if words is not None and words.name == "ttg.convert_layout":  # Triton moved the words already
                words = lookup(words, words.operands[0])
            if words is None or words.name != "tt.load" or words.result_type is None:
                continue
            in_shape = words.result_type.shape
            axes = [k for k, (i, o) in enumerate(zip(in_shape, dst_ty.shape)) if o == i * per and o != i]
            if len(in_shape) != len(dst_ty.shape) or len(axes) != 1:
                continue
            enc = _narrow_layout(dst_ty.encoding, axes[0], per, aliases)
            if enc is not None:
                retarget_load(words, enc)

    for op in ops:
        if op.name != "ttg.convert_layout" or not op.results or not op.operands:
            continue
        src_ty, dst_ty = types_of(op)
        if src_ty is None or dst_ty is None or src_ty.shape != dst_ty.shape:
            continue
        if family(src_ty.encoding) and not family(dst_ty.encoding):
            # A dequantized value leaves its layout A for B (the layout of the
            # loads/stores it meets). Move those loads and stores to A instead:
            # the ones connected to it through elementwise ops and conversions.
            a, shape = src_ty.encoding, dst_ty.shape

            def same_shape(o: Op) -> bool:
                return o.result_type is not None and o.result_type.shape == shape

            comp, work, seen = [], [op], set()
            while work:
                cur = work.pop()
                if cur.index in seen:
                    continue
                seen.add(cur.index)
                if cur.name == "tt.load":
                    comp.append(cur)
                    continue
                for u in users.get(cur.index, []):
                    if u.name == "tt.store":
                        mo = memory_op(u)
                        if mo and len(mo[0]) > 1 and lookup(u, mo[0][1]) is cur and mo[2].shape == shape:
                            comp.append(u)
                    elif _is_elementwise(u.name) and same_shape(u) and not u.dq:
                        work.append(u)
                        for v in u.operands:
                            d = lookup(u, v)
                            if (d is not None and d.index not in seen and same_shape(d) and not d.dq
                                    and (d.name == "tt.load" or _is_elementwise(d.name))):
                                work.append(d)
            plans = []
            for m in comp:
                mo = memory_op(m)
                if mo is None or m.index in replace:
                    continue
                enc = _store_order(a, mo[2].encoding, len(shape), aliases)
                plans.append((m, enc, mo))
            stores = [(m, enc, mo) for m, enc, mo in plans if m.name == "tt.store"]
            if all(_gap_free(enc, shape, _contiguous_dim(mo[2].encoding, len(shape), aliases),
                             _elem_bytes(mo[3]), aliases) for _, enc, mo in stores) or _policy == "owned":
                # each thread stores what it holds without gaps in a warp's writes
                for m, enc, _ in plans:
                    (retarget_store if m.name == "tt.store" else retarget_load)(m, enc)
            elif _policy == "narrow" and stores:
                # it would not: load the packed words narrower instead, so that
                # the dequantized tile comes out in the coalesced store layout
                narrow_packed_loads(op, dst_ty)
        elif (family(dst_ty.encoding) or dst_ty.encoding in entry) and not family(src_ty.encoding):
            # A load converted into a dequantized layout (or a slice of one, e.g.
            # the activations x[:, None] of a GEMV), or into the layout that
            # Triton chose for the packed words: load it there directly.
            ld = lookup(op, op.operands[0])
            if (ld is None or ld.name != "tt.load" or len(users.get(ld.index, [])) != 1
                    or sum(_base(u) == ld.results[0] for u in op.operands) != 1):
                continue
            if retarget_load(ld, dst_ty.encoding, result=op.results[0]):
                replace[op.index] = None
    if not edits:
        return text, []
    out: List[str] = []
    for i, line in enumerate(lines):
        out.extend(insert_before.get(i, []))
        if i not in replace:
            out.append(line)
        elif replace[i] is not None:
            out.append(replace[i])
        out.extend(insert_after.get(i, []))
    return "\n".join(out), edits
