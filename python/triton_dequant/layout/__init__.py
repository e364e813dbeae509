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
An extra step in Triton's official pipeline, through
``triton.knobs.runtime.add_stages_inspection_hook`` (only while the step is on:
nothing is installed while it is off): the ``"ttgir"`` stage runs
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
Triton's module (by Triton's own check: a conversion whose minimal conversion
layout involves only registers is free), or as many and fewer conversions in
all, and no more shared-memory allocations; otherwise (and on any error)
Triton's module is returned untouched. Modules without the marker are
never changed (not even re-parsed): their IR is identical with or without the
step. ``tl.dot`` operands are left to Triton: the tile reaches the dot through
one ``ttg.local_alloc`` (wgmma) or ``local_alloc`` + ``local_load`` (mma.sync),
with no ``convert_layout`` before it.

Units: :mod:`.mlir` (the MLIR text parser: the Python bindings cannot create
``ttg.convert_layout`` ops nor retype values, so the rewrite edits the printed
module and parses it back with ``ir.parse_mlir_module`` in the module's own
context), :mod:`.algebra` (layouts as bases: which conversions move data, gaps in
a warp's stores, the narrowed and reordered layouts), :mod:`.rewrite` (the text
transformation), :mod:`.hook` (the pipeline step, the acceptance rule and the
hook slot).

Measured (H100, Triton 3.6, bench/layout.py, 2**28 fp16 outputs): stock Triton's
conversion through shared memory is nearly free in these DRAM-bound kernels
(1-D stock at 96-99% of a device copy). Storing from the tile's own layout with
gaps ("owned") is 1.05x-5.7x slower than stock; "narrow" is 0-5% slower than
stock (4-byte loads); axis-0 stores: equal; a toy GEMV: int8 slower, int4 equal,
int2 5% faster. So the step removes the conversions, but it is not a speed-up
of these kernels on H100: enable it where shared memory or its barriers are
the constraint, or to study layouts.

API
---
Off by default. ``enable()`` / ``disable()`` turn the step on / off (overriding
``TRITON_DEQUANT_LAYOUT=1``); ``reset()`` follows the environment again;
``set_store_policy()``; ``override(enabled=..., policy=...)`` (a context manager
restoring the previous switches); ``is_enabled()``, ``is_installed()``,
``is_active()``, ``store_policy()``. The state is part of the Triton cache key of
every kernel using ``tl.dequantize`` (:mod:`triton_dequant.state`): a kernel
compiled with the step off is never served with it on, in one process or across
processes. ``cache_tag()`` names the state for other caches. ``rewrite_ttgir(text)``
is the pure text transformation, ``conversion_summary(ttgir)`` counts
conversions, ``last_report`` tells what the last dequantize compile did.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
from pathlib import Path

from .. import state as _state
from . import algebra, hook, mlir, rewrite  # noqa: F401
from .hook import conversion_summary, last_report
from .mlir import TensorType
from .rewrite import IR_MARKER, rewrite_ttgir

__all__ = ["enable", "disable", "reset", "set_store_policy", "store_policy", "override", "is_enabled",
           "is_installed", "is_active", "cache_tag", "rewrite_ttgir", "conversion_summary", "last_report",
           "TensorType", "IR_MARKER", "VERSION"]

VERSION = 2  # 2: the hook is in the pipeline only while the step is on; the state is in the cache key


def enable() -> None:
    """Turn the layout step on (overrides ``TRITON_DEQUANT_LAYOUT``); puts its hook into Triton's pipeline."""
    _state.set_layout(True)


def disable() -> None:
    """Turn the layout step off (overrides ``TRITON_DEQUANT_LAYOUT``); takes its hook out of the pipeline."""
    _state.set_layout(False)


def reset() -> None:
    """Forget ``enable()``/``disable()``: follow ``TRITON_DEQUANT_LAYOUT`` again (default off)."""
    _state.set_layout(None)


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
    _state.set_policy(policy)


def store_policy() -> str:
    return _state.switches()[2]


@contextlib.contextmanager
def override(enabled=..., policy=...):
    """``with layout.override(enabled=True, policy="owned"): ...``: set the switches
    for a block (``enabled=None``: follow the environment), then restore them."""
    saved = _state.switches()
    try:
        if policy is not ...:
            set_store_policy(policy)
        if enabled is not ...:
            _state.set_layout(enabled)
        yield
    finally:
        _state.restore(saved)


def is_enabled() -> bool:
    """Will the next compile run the step? (``enable()``/``disable()``, else the environment)"""
    return _state.sync().layout != "off"


def is_installed() -> bool:
    """Is the step's hook in Triton's pipeline (in the slot, or chained from the hook there)?"""
    _state.sync()
    return hook.is_installed()


def is_active() -> bool:
    """Enabled and installed (they differ only if a hook set into the slot since
    the last state change does not call the one it replaced)."""
    return is_enabled() and hook.is_installed()


@functools.lru_cache(maxsize=None)
def _source_hash() -> str:
    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def cache_tag() -> str:
    """State and version of this step, for caches of compiled kernels:
    ``'layout-v2-<source hash>-off'`` or ``...-<store policy>`` while on."""
    return f"layout-v{VERSION}-{_source_hash()}-{_state.sync().layout}"
