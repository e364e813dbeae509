"""The layout step in Triton's pipeline: a ``knobs.runtime.add_stages_inspection_hook``
that wraps the ``"ttgir"`` stage, present only while the step is on.

Triton has one hook slot. :func:`follow` (called by :func:`triton_dequant.state.sync`
whenever the state may have changed) keeps it so:

* step on: our hook is reachable from the slot. If it is not (first enable, or a
  user replaced the slot without calling the previous hook), a new one is put into
  the slot, calling first whatever hook was there;
* step off: if our hook is in the slot, the hook it replaced is put back; if a user
  hook was installed on top of ours (and calls it), ours cannot be unlinked and
  becomes a pass-through (it still calls the hook below it), to be reactivated in
  place by the next enable.

The wrapped stage runs Triton's ``make_ttgir`` unchanged, then, only for modules
that contain a ``tl.dequantize`` asm block, the rewrite (:mod:`.rewrite`) and
Triton's own clean-up passes; the result is kept only if it has fewer conversions
that move data (Triton's own check, :func:`.algebra.moving_conversions`), or as
many and fewer conversions in all, and no more shared-memory allocations
(otherwise, and on any error, Triton's module is returned).
"""
from __future__ import annotations

import functools
import os
import tempfile
from typing import Dict, Optional, Tuple

from triton import knobs

from . import algebra, rewrite

last_report: dict = {}  # what the last dequant-bearing compile did (mutated in place; for tests / debugging)


class StageHook:
    """Our ``add_stages_inspection_hook``; ``previous`` is the hook it chains."""

    def __init__(self, previous):
        self.previous = previous
        self.active = True

    def __call__(self, backend, stages, options, language, capability):
        if self.previous is not None:
            self.previous(backend, stages, options, language, capability)
        if self.active:
            _wrap_stages(backend, stages, language)


_hook: Optional[StageHook] = None  # ours, while it may be reachable from the slot
_verified_slot = None  # the slot value last seen to reach an active _hook (saves the walk)


def _slot():
    return knobs.runtime.add_stages_inspection_hook


def _set_slot(value) -> None:
    knobs.runtime.add_stages_inspection_hook = value


def _reachable(hook) -> bool:
    """Is ``hook`` still called: the installed hook, or chained from it (through
    closures, ``__wrapped__``, or our own ``previous``)?"""
    seen, work = set(), [_slot()]
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
        if isinstance(f, StageHook):
            work.append(f.previous)
    return False


def follow(on: bool, force: bool = True) -> bool:
    """Put the hook into the pipeline (``on``) or take it out. Without ``force``,
    only says whether it is where it belongs already (cheap, changes nothing)."""
    global _hook, _verified_slot
    slot = _slot()
    if on and _hook is not None and _hook.active and slot is _verified_slot:
        return True
    if not on and (_hook is None or not _hook.active):  # (an inactive one only passes through)
        return True
    if not force:
        return False
    if on:
        if _hook is not None and _reachable(_hook):
            _hook.active = True  # reactivated where it is
        else:
            _hook = StageHook(slot)
            _set_slot(_hook)
        _verified_slot = _slot()
        return True
    _verified_slot = None
    if slot is _hook:
        _set_slot(_hook.previous)
        _hook = None
    else:  # someone chained on top of us (or dropped us): become transparent
        _hook.active = False
        if not _reachable(_hook):
            _hook = None
    return True


def is_installed() -> bool:
    """Is our hook in the pipeline and active?"""
    return _hook is not None and _hook.active and _reachable(_hook)


def _wrap_stages(backend, stages, language) -> None:
    if getattr(stages.get("ttgir"), "__triton_dequant_layout__", False):
        return  # already wrapped (our hook reached twice through a chain)
    if getattr(getattr(backend, "target", None), "backend", None) != "cuda" or "ttgir" not in stages:
        return
    if str(getattr(language, "name", language)).upper().endswith("GLUON"):
        return  # gluon kernels choose their layouts themselves
    inner = stages["ttgir"]

    def ttgir(src, metadata):
        from .. import state
        mod = inner(src, metadata)
        mode = state.current().layout  # the snapshot that this kernel's cache key holds
        if mode == "off" or _hook is None or not _hook.active:
            return mod
        return rewrite_module(mod, mode)

    ttgir.__triton_dequant_layout__ = True
    stages["ttgir"] = ttgir


# --- module level ----------------------------------------------------------------------

def score(module) -> Tuple[int, int, int]:
    """(layout conversions that move data between threads, all layout conversions,
    shared-memory allocations) in a TTGIR module."""
    counts = {"ttg.convert_layout": 0, "ttg.local_alloc": 0}

    def visit(op):
        name = op.get_name()
        if name in counts:
            counts[name] += 1

    module.walk(visit)
    return algebra.moving_conversions(module), counts["ttg.convert_layout"], counts["ttg.local_alloc"]


@functools.lru_cache(maxsize=1)
def _context():
    from triton._C.libtriton import ir, nvidia
    ctx = ir.context()
    ir.load_dialects(ctx)
    nvidia.load_dialects(ctx)
    return ctx


def conversion_summary(ttgir: str) -> Dict[str, int]:
    """Counts in a TTGIR text: ``moving`` layout conversions (data crosses
    threads: shuffles or shared memory), ``register`` conversions (a permutation
    of a thread's registers, free), ``local_alloc`` (shared-memory buffers)."""
    moving, total, allocs = score(parse(ttgir, _context()))
    return {"moving": moving, "register": total - moving, "local_alloc": allocs}


def _debug() -> bool:
    return os.environ.get("TRITON_DEQUANT_LAYOUT_DEBUG", "0") not in ("", "0")


def rewrite_module(mod, policy: str):
    """Triton's TTGIR module -> the rewritten one (a new module in the same
    context), or ``mod`` itself when there is nothing to do or no gain."""
    text = mod.str()
    if rewrite.IR_MARKER not in text:
        return mod
    last_report.clear()
    last_report.update(edits=[], accepted=False, before=score(mod))
    try:
        new_text, last_report["edits"] = rewrite.rewrite_ttgir(text, policy)
        if not last_report["edits"]:
            return mod
        new = parse_and_fold(new_text, mod.context)
    except Exception as e:  # never break a compile: keep Triton's module
        last_report["error"] = f"{type(e).__name__}: {e}"
        if _debug():
            raise
        return mod
    last_report["after"] = score(new)
    if _debug():
        last_report["text"] = new.str()
    (before_moving, before_all, before_alloc), (after_moving, after_all, after_alloc) = (last_report["before"],
                                                                                       last_report["after"])
    # fewer conversions that move data, or as many and fewer conversions at all; no more shared memory
    if (after_moving, after_all) < (before_moving, before_all) and after_alloc <= before_alloc:
        last_report["accepted"] = True
        return new
    return mod


def parse(text: str, ctx):
    """A TTGIR text -> Triton's ``ir.module`` in ``ctx`` (the bindings parse files only)."""
    from triton._C.libtriton import ir
    fd, path = tempfile.mkstemp(suffix=".ttgir", prefix="triton_dequant_")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        new = ir.parse_mlir_module(path, ctx)
    finally:
        os.unlink(path)
    new.context = ctx
    return new


def parse_and_fold(text: str, ctx):
    """Parse a TTGIR text into ``ctx`` and run Triton's own clean-up passes: the
    inserted pointer/mask conversions fold into rematerialised address math."""
    from triton._C.libtriton import ir, passes
    new = parse(text, ctx)
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
