"""The lowering state of ``tl.dequantize`` and Triton's kernel caches.

What ``tl.dequantize`` emits depends on

* the package's own sources (:mod:`.language`, :mod:`.ptx`, :mod:`.layout`, ...),
* the portable switch: :func:`triton_dequant.use_portable` / ``TRITON_DEQUANT_PORTABLE``,
* the layout step: :func:`triton_dequant.layout.enable` / ``disable`` / ``reset`` /
  ``TRITON_DEQUANT_LAYOUT`` and :func:`~triton_dequant.layout.set_store_policy`.

Triton 3.6 keys a compiled kernel on its ``JITFunction.cache_key`` (a hash of the
sources of the function and of the ``@triton.jit`` functions it calls), the
signature, constexprs, options and backend. It knows nothing of the above, and it
*memoises* ``cache_key`` on first use; its in-process cache (``device_caches``) is
keyed on the specialisation and options only. So this module

1. mixes :func:`lowering_key` (sources + state) into the ``cache_key`` of every
   function that references ``dequantize`` (``tl.dequantize``,
   ``triton_dequant.dequantize`` or a bare imported name) and of every function
   that calls such a function (see :func:`install`);
2. keeps a weak registry of those functions; whenever the state changes it resets
   their memoised ``cache_key`` and clears their in-process kernel caches, so the
   next launch or ``triton.compile`` recomputes the key with the new state;
3. holds one *snapshot* of the state that every compile uses (the builtin and the
   layout hook read the snapshot, not the switches), so the key a kernel is stored
   under always describes how it was lowered, in one process and across processes
   sharing ``TRITON_CACHE_DIR``.

The snapshot is refreshed (:func:`sync`) at these points: import; every switch call
(``use_portable``, ``layout.enable/disable/reset/set_store_policy``); every
launch of a registered kernel through ``kernel[grid](...)`` / ``kernel.warmup``
(a Triton pre-run hook); the start of every ``cache_key`` computation; every
public query (:func:`lowering_state`, :func:`lowering_key`, ``layout.is_enabled``,
``layout.cache_tag``...). An environment variable changed in-process therefore
takes effect at the next of these points; before it, compiles consistently use
the previous state. Code that calls ``triton.compile(ASTSource(fn, ...))`` itself
should call :func:`lowering_state` first (and put its value into any cache of
compiled kernels it keeps): ``triton_dequant.testing.compile_for`` does.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import os
import sys
import threading
import warnings
import weakref
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Optional

_PKG = __name__.rsplit(".", 1)[0]  # triton_dequant

__all__ = ["LoweringState", "lowering_state", "lowering_key", "sync", "install", "tracked"]

ENV_PORTABLE = "TRITON_DEQUANT_PORTABLE"
ENV_LAYOUT = "TRITON_DEQUANT_LAYOUT"
POLICIES = ("narrow", "stock", "owned")


class LoweringState(NamedTuple):
    """What decides the lowering of ``tl.dequantize`` besides the package sources."""
    portable: bool  # the plain-``tl`` lowering forced on every backend
    layout: str  # "off", or the store policy of the active layout step ("narrow", "stock", "owned")


# the switches (None: follow the environment)
_portable_override: Optional[bool] = None
_layout_override: Optional[bool] = None
_policy = "narrow"

_lock = threading.RLock()
_current: Optional[LoweringState] = None  # the snapshot every compile uses (set by install())
_tracked: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def _flag(value: Optional[str]) -> bool:
    """An on/off environment value: unset, '', '0', 'false', 'off', 'no' are off."""
    return value is not None and value.strip().lower() not in ("", "0", "false", "off", "no")


# The state is refreshed at every launch, so reading the two variables must be cheap:
# os.environ.get costs microseconds (it encodes the key and decodes the value each
# time); the dict behind it (CPython's os.environ._data) is read directly, with the
# parsed flag cached per raw value.
_ENV = getattr(os.environ, "_data", None)
_ENV_KEYS = {}
if _ENV is not None:
    try:
        _ENV_KEYS = {name: os.environ.encodekey(name) for name in (ENV_PORTABLE, ENV_LAYOUT)}
    except AttributeError:
        _ENV = None
_FLAGS: dict = {}


def env_flag(name: str) -> bool:
    if _ENV is None:
        return _flag(os.environ.get(name))
    raw = _ENV.get(_ENV_KEYS[name])
    flag = _FLAGS.get(raw)
    if flag is None:
        flag = _FLAGS[raw] = _flag(None if raw is None else os.environ.decodevalue(raw))
    return flag


_STATES: dict = {}  # (portable, layout) -> LoweringState: one object per state (building one costs 1 us)


def _read() -> LoweringState:
    portable = _portable_override if _portable_override is not None else env_flag(ENV_PORTABLE)
    key = (portable, _policy if (_layout_override if _layout_override is not None else env_flag(ENV_LAYOUT))
           else "off")
    st = _STATES.get(key)
    if st is None:
        st = _STATES[key] = LoweringState(*key)
    return st


def current() -> LoweringState:
    """The snapshot (no refresh): what a compile running now uses."""
    return _current if _current is not None else sync()


def sync() -> LoweringState:
    """Refresh the snapshot from the switches and the environment; on a change,
    invalidate every registered kernel. Puts the layout hook into Triton's
    pipeline while the layout step is on, and takes it out while it is off."""
    global _current
    new = _read()
    if new is _current and _hook_follow(new.layout != "off"):
        return new  # (the common case: nothing changed, the hook where it belongs)
    with _lock:
        new = _read()
        _hook_follow(new.layout != "off", force=True)
        if new is not _current:
            _current = new
            _invalidate()
        return new


def _hook_follow(on: bool, force: bool = False) -> bool:
    from .layout import hook
    global _hook_follow
    _hook_follow = hook.follow  # (resolved once: the layout package imports this module)
    return hook.follow(on, force)


def lowering_state() -> LoweringState:
    """The lowering state now (refreshed, see :func:`sync`): a small hashable value
    for caches of compiled kernels kept outside Triton (put it into their keys)."""
    return sync()


def lowering_modules() -> list:
    """The package modules that decide what ``tl.dequantize`` emits: :mod:`.language`,
    this module, the layout step and every package module they use, transitively
    (``kernels/`` is left out: its ``@triton.jit`` functions are hashed by Triton)."""
    todo, seen = [f"{_PKG}.language", __name__, f"{_PKG}.layout"], set()
    while todo:
        name = todo.pop()
        if name in seen or name not in sys.modules:
            continue
        seen.add(name)
        for v in vars(sys.modules[name]).values():
            dep = v.__name__ if isinstance(v, ModuleType) else getattr(v, "__module__", None)
            if isinstance(dep, str) and dep.startswith(_PKG + ".") and not dep.startswith(_PKG + ".kernels"):
                todo.append(dep)
    return sorted(seen)


@functools.lru_cache(maxsize=None)
def sources_digest() -> str:
    """sha256 of the sources of :func:`lowering_modules`."""
    h = hashlib.sha256()
    for name in lowering_modules():
        path = getattr(sys.modules[name], "__file__", None)
        h.update(name.encode() + b"\0" + (Path(path).read_bytes() if path else b"") + b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _key_of(state: LoweringState) -> str:
    return hashlib.sha256(f"{sources_digest()};portable={int(state.portable)};layout={state.layout}"
                          .encode()).hexdigest()[:32]


def key_now() -> str:
    """:func:`lowering_key` of the snapshot, without a refresh (used while Triton hashes)."""
    return _key_of(current())


def lowering_key() -> str:
    """Everything that decides what ``tl.dequantize`` emits (sources and state),
    as a hex string: what is mixed into Triton's ``cache_key``."""
    return _key_of(sync())


# --- the registry ----------------------------------------------------------------------

def tracked() -> list:
    """The live ``@triton.jit`` functions whose cache key includes the lowering key."""
    return list(_tracked.values())


def _invalidate() -> None:
    for fn in list(_tracked.values()):
        fn.hash = None  # Triton recomputes cache_key (with the new state) at its next use
        for caches in list(getattr(fn, "device_caches", {}).values()):
            caches[0].clear()  # kernel_cache: specialisation + options -> CompiledKernel
            caches[1].clear()  # kernel_key_cache: may hold cache_keys of jit-function arguments


def _pre_run(*args, **kwargs) -> None:
    sync()


def _track(fn) -> None:
    if fn is None or id(fn) in _tracked:
        return
    _tracked[id(fn)] = fn
    if hasattr(fn, "add_pre_run_hook") and _pre_run not in fn.pre_run_hooks:
        fn.add_pre_run_hook(_pre_run)


_warned = False


def _hashed_function():
    """The JITCallable whose ``cache_key`` is being computed: the ``self`` of the
    innermost ``JITCallable.cache_key`` frame (Triton builds the DependenciesFinder
    there without a reference to the function)."""
    global _warned
    from triton.runtime.jit import JITCallable
    code = JITCallable.cache_key.fget.__code__
    f = sys._getframe(2)
    while f is not None:
        if f.f_code is code:
            return f.f_locals.get("self")
        f = f.f_back
    if not _warned:
        _warned = True
        warnings.warn("triton_dequant: cannot find the function Triton is hashing; kernels using "
                      "tl.dequantize will not be recompiled when the lowering state changes")
    return None


# --- Triton's DependenciesFinder ---------------------------------------------------------

_installed = False


def _resolve(node, finder):
    """The Python object an ``a.b.c`` expression in a kernel names, or None."""
    if isinstance(node, ast.Name):
        if node.id in getattr(finder, "local_names", ()):  # (a local variable hides a global)
            return None
        return finder.globals.get(node.id, finder.nonlocals.get(node.id))
    if isinstance(node, ast.Attribute):
        return getattr(_resolve(node.value, finder), node.attr, None)
    return None


def _note(finder, val) -> None:
    """``val`` is referenced by the function being hashed: if it is ``dequantize``,
    mix the lowering key into the hash; if it is ``dequantize`` or a registered
    function, register the function being hashed."""
    if getattr(val, "__triton_dequant_key__", None) is not None:
        if not finder.__dict__.get("_tdq_keyed"):
            finder._tdq_keyed = True
            finder.hasher.update(val.__triton_dequant_key__().encode())
        _track(_hashed_function())
    elif val is not None and id(val) in _tracked and _tracked.get(id(val)) is val:
        _track(_hashed_function())


def install() -> None:
    """Make the lowering part of Triton's cache key (idempotent).

    Why a patch of ``triton.runtime.jit.DependenciesFinder``: Triton hashes a
    kernel's source and the ``@triton.jit`` functions it calls, but skips builtins
    and every ``tl.*`` attribute (``visit_Attribute`` returns early for
    ``triton.language``), so nothing else sees that a kernel uses ``tl.dequantize``
    and its key would not change with the lowering. Two methods are wrapped:
    ``record_reference`` (names and ``module.attr`` references; also refreshes the
    snapshot once per hash computation) and ``visit_Attribute`` (the ``tl.*``
    references Triton skips). Nothing else is installed into Triton at import; the
    layout hook enters the pipeline only while the layout step is on."""
    global _installed
    with _lock:
        if _installed:
            return
        from triton.runtime.jit import DependenciesFinder as finder
        orig_record, orig_attr = finder.record_reference, finder.visit_Attribute

        def record_reference(self, val, var_dict=None, name=None):
            if not self.__dict__.get("_tdq_synced"):  # before any callee's key is mixed in
                self._tdq_synced = True
                sync()
            ret = orig_record(self, val, var_dict, name)  # (computes a callee's key first)
            _note(self, val)
            return ret

        def visit_Attribute(self, node):
            ret = orig_attr(self, node)
            if ret is None:  # skipped by Triton, e.g. `tl.dequantize`
                _note(self, _resolve(node, self))
            return ret

        finder.record_reference = record_reference
        finder.visit_Attribute = visit_Attribute
        _installed = True
    sync()


# --- the switches (called by language.use_portable and the layout API) -------------------

def set_portable(flag: Optional[bool]) -> None:
    global _portable_override
    if flag is not None and not isinstance(flag, bool):
        raise TypeError(f"use_portable: `flag` must be True, False or None, got {flag!r}")
    _portable_override = flag
    sync()


def set_layout(flag: Optional[bool]) -> None:
    global _layout_override
    _layout_override = flag
    sync()


def set_policy(policy: str) -> None:
    global _policy
    if policy not in POLICIES:
        raise ValueError(f"store policy must be 'narrow', 'stock' or 'owned', got {policy!r}")
    _policy = policy
    sync()


def switches() -> tuple:
    """``(portable override, layout override, store policy)``, for :func:`restore`."""
    return _portable_override, _layout_override, _policy


def restore(saved: tuple) -> None:
    global _portable_override, _layout_override, _policy
    _portable_override, _layout_override, _policy = saved
    sync()
