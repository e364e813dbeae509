"""Plan -> compile -> launch: the one path from an op call to the kernels it runs.

* A **plan** (:class:`Plan`) is computed by each op's ``plan`` function from a small
  frozen description of the call (shapes, dtypes, strides, pointer alignment, tile
  overrides) and a :class:`Target` (architecture and SM count). No tensor, no driver:
  the same plan is computed on a CPU-only machine (``python -m triton_dequant.inspect``,
  the compile sweep in CI) and in the eager host path on a GPU. It lists the
  kernels it launches (:class:`Kernel`): the ``@triton.jit`` function, every
  argument (pointer dtype and 16-byte alignment, integer values, constexprs),
  ``num_warps``, ``num_stages`` and the grid. From them follow the full Triton
  signature (``i32``/``i64``/``u64`` per integer from its value, integers equal to 1
  as constexprs, ``tt.divisibility=16`` for aligned pointers and integers divisible
  by 16: the specialisation rules of Triton 3.6's own launcher, so a kernel is the
  one ``kernel[grid](...)`` would have built).
* **compile** (:func:`compile_kernel`) turns a :class:`Kernel` into a
  ``CompiledKernel`` with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
  arch, 32))``: on any machine, for any architecture.
* **launch** (:func:`launch`) runs exactly that compiled kernel (loaded once per
  device) through its launcher; in Triton's interpreter (a CPU tensor, or
  ``TRITON_INTERPRET=1``) it calls ``kernel[grid](...)`` with the same arguments.

The launch cache is keyed on :func:`launch_key`: the kernel's key (function, full
signature with every pointer dtype, divisibility, constexprs, ``num_warps``,
``num_stages``), the device (index and compute capability) and the lowering state of
``tl.dequantize`` (portable switch, layout step): a call that differs in any of them
never reuses another's compiled kernel. Within a process a kernel's key is interned
to a small integer, so the per-call lookup hashes three small values.
"""
from __future__ import annotations

import inspect as _pyinspect
import os
import threading
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from .. import state as _state

__all__ = ["Target", "Ptr", "Kernel", "Plan", "cuda_target", "interpreter_target", "target_of", "ptr",
           "compile_kernel", "launch", "launch_key", "lowering_state"]

# Triton's pointer type names
_PTR = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
        torch.int8: "i8", torch.uint8: "u8", torch.int16: "i16", torch.uint16: "u16",
        torch.int32: "i32", torch.uint32: "u32", torch.int64: "i64"}

# SMs of the usual part of each architecture when none is given (sm_80: A100,
# sm_86: RTX A6000, sm_89: L40S, sm_90: H100/H200 SXM); only launch heuristics use it
_DEFAULT_SMS = {80: 108, 86: 84, 89: 142, 90: 132}


# --- targets ------------------------------------------------------------------------------

# shared memory per block with the opt-in (bytes; CUDA C Programming Guide, "Technical
# Specifications per Compute Capability"): the most a kernel may use per compute capability
MAX_SHARED = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


class Target(NamedTuple):
    """What a plan may depend on besides the call: ``arch`` is the compute
    capability (90 = sm_90; 0 = Triton's interpreter), ``num_sms`` the SM count."""
    arch: int
    num_sms: int = 132

    @property
    def interpret(self) -> bool:
        return self.arch == 0


def cuda_target(arch: int, num_sms: Optional[int] = None) -> Target:
    if isinstance(arch, bool) or not isinstance(arch, int) or arch < 70:
        raise ValueError(f"`arch` must be a CUDA compute capability such as 80 or 90, got {arch!r}")
    return Target(arch, num_sms or _DEFAULT_SMS.get(arch, 132))


def interpreter_target(num_sms: int = 132) -> Target:
    return Target(0, num_sms)


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_TARGETS: dict = {}


def target_of(device: torch.device) -> Target:
    """The target of a tensor's device (cached per device): the interpreter for
    CPU tensors or under ``TRITON_INTERPRET=1``, else the GPU's capability and SMs."""
    key = (device.type, device.index)
    t = _TARGETS.get(key)
    if t is None:
        if device.type != "cuda" or _interpret_env():
            t = interpreter_target()
        else:
            idx = device.index if device.index is not None else torch.cuda.current_device()
            p = torch.cuda.get_device_properties(idx)
            t = Target(p.major * 10 + p.minor, p.multi_processor_count)
        _TARGETS[key] = t
    return t


# --- kernels ------------------------------------------------------------------------------

class Ptr(NamedTuple):
    """A pointer argument: its element type (Triton name, e.g. ``"fp16"``) and whether
    the address is a multiple of 16 bytes (``tt.divisibility=16``)."""
    dtype: str
    aligned: bool = True


def ptr(dtype: torch.dtype, aligned: bool = True) -> Ptr:
    return Ptr(_PTR[dtype], bool(aligned))


def _int_type(v: int) -> str:
    """Triton 3.6's type for a Python int argument (``native_specialize_impl``)."""
    if -2 ** 31 <= v < 2 ** 31:
        return "i32"
    if -2 ** 63 <= v < 2 ** 63:
        return "i64"
    return "u64"


def int_class(v: int) -> tuple:
    """How Triton specialises an int argument: ``("constexpr", True)`` for 1, else
    ``(type, divisible by 16)``."""
    return ("constexpr", True) if v == 1 else (_int_type(v), v % 16 == 0)


def representative(v: int) -> int:
    """A fixed int of ``v``'s :func:`int_class` (to cache what depends only on the class)."""
    if v == 1:
        return 1
    base = {"i32": 16, "i64": 2 ** 31, "u64": 2 ** 63}[_int_type(v)]
    return base if v % 16 == 0 else base + 1


def _hashable(v):
    """A key for a constexpr value: its type too (``True`` and ``1`` compile differently)."""
    return (type(v).__name__, v if not isinstance(v, (list, dict)) else repr(v))


_PARAMS: dict = {}
_KIDS: dict = {}  # kernel key -> small int (per process)
_LOCK = threading.Lock()


def _params(fn) -> tuple:
    """``(name, is_constexpr)`` for each parameter of a ``@triton.jit`` function."""
    p = _PARAMS.get(fn)
    if p is None:
        raw = getattr(fn, "fn", fn)
        p = tuple((q.name, "constexpr" in str(q.annotation)) for q in _pyinspect.signature(raw).parameters.values())
        _PARAMS[fn] = p
    return p


_POS: dict = {}


def _positions(fn) -> dict:
    """parameter name -> (index, declared constexpr)."""
    p = _POS.get(fn)
    if p is None:
        p = _POS[fn] = {n: (i, c) for i, (n, c) in enumerate(_params(fn))}
    return p


class Kernel:
    """One launch of a plan. ``args`` maps every parameter of ``fn`` to a :class:`Ptr`
    (pointers, which come first), an ``int`` (runtime integers) or the value of a
    constexpr. Derived: ``signature``, ``constexprs``, ``attrs`` (what
    ``ASTSource`` takes), ``tail`` (the values after the pointers, in order: what the
    launcher and the interpreter take after the tensors) and ``key``."""

    __slots__ = ("fn", "name", "args", "num_warps", "num_stages", "grid", "signature", "constexprs", "attrs",
                 "n_ptrs", "tail", "key", "kid")

    def __init__(self, fn, grid: tuple, num_warps: int, num_stages: int, **args):
        params = _params(fn)
        names = [n for n, _ in params]
        if set(args) != set(names):
            missing, extra = set(names) - set(args), set(args) - set(names)
            raise TypeError(f"{fn}: missing arguments {sorted(missing)}, unknown {sorted(extra)}")
        self.fn = fn
        self.name = getattr(getattr(fn, "fn", fn), "__name__", str(fn))
        self.args = tuple((n, args[n]) for n in names)
        self.num_warps = int(num_warps)
        self.num_stages = int(num_stages)
        g = tuple(int(v) for v in grid) + (1,) * (3 - len(grid))
        if any(v < 1 for v in g) or g[0] >= 2 ** 31 or g[1] > 65535 or g[2] > 65535:
            raise ValueError(f"{self.name}: grid {g} outside CUDA's limits")
        self.grid = g
        sig, const, div, tail = {}, {}, [], []
        n_ptrs = 0
        for i, ((name, is_const), (_, v)) in enumerate(zip(params, self.args)):
            if isinstance(v, Ptr):
                if i != n_ptrs:
                    raise TypeError(f"{self.name}: pointer argument `{name}` after a non-pointer")
                n_ptrs += 1
                sig[name] = "*" + v.dtype
                if v.aligned:
                    div.append(i)
                continue
            tail.append(v)
            if is_const:
                sig[name] = "constexpr"
                const[name] = v
            elif isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{self.name}: runtime argument `{name}` must be an int, got {v!r}")
            elif v == 1:  # Triton specialises 1 as a constant
                sig[name] = "constexpr"
                const[name] = 1
            else:
                sig[name] = _int_type(v)
                if v % 16 == 0:
                    div.append(i)
        self.signature = sig
        self.constexprs = const
        self.attrs = {(i,): [["tt.divisibility", 16]] for i in div}
        self.n_ptrs = n_ptrs
        self.tail = tuple(tail)
        self.key = (fn, tuple(sig.items()), tuple(div),
                    tuple((n, _hashable(v)) for n, v in const.items()), self.num_warps, self.num_stages)
        kid = _KIDS.get(self.key)
        if kid is None:
            with _LOCK:  # one id per key, even with threads
                kid = _KIDS.setdefault(self.key, len(_KIDS))
        self.kid = kid

    def rebind(self, **ints) -> "Kernel":
        """This launch with other values of some runtime integer arguments, each of
        the same :func:`int_class` as before (so the same key and compiled kernel)."""
        args, tail = list(self.args), list(self.tail)
        pos = _positions(self.fn)
        for name, v in ints.items():
            i, declared = pos[name]
            old = args[i][1]
            if declared or isinstance(old, Ptr) or isinstance(v, bool) or not isinstance(v, int) or \
                    int_class(v) != int_class(old):
                raise ValueError(f"{self.name}: `{name}`={v!r} is not a runtime int specialised like {old!r}")
            args[i] = (name, v)
            tail[i - self.n_ptrs] = v
        new = object.__new__(Kernel)
        for slot in Kernel.__slots__:
            setattr(new, slot, getattr(self, slot))
        new.args = tuple(args)
        new.tail = tuple(tail)
        return new

    def __eq__(self, other):
        return isinstance(other, Kernel) and self.key == other.key and self.grid == other.grid \
            and self.tail == other.tail

    def __hash__(self):
        return hash((self.kid, self.grid))

    def __repr__(self):
        const = ", ".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"Kernel({self.name}, grid={self.grid}, num_warps={self.num_warps}, " \
               f"num_stages={self.num_stages}, {const})"

    def describe(self) -> dict:
        """JSON-friendly: name, signature, divisible arguments, constexprs, options, grid."""
        return dict(name=self.name, signature=dict(self.signature),
                    divisibility_16=[self.args[i][0] for (i,) in self.attrs],
                    constexprs={k: _jsonable(v) for k, v in self.constexprs.items()},
                    num_warps=self.num_warps, num_stages=self.num_stages, grid=list(self.grid))


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return getattr(v, "__name__", None) or getattr(getattr(v, "fn", None), "__name__", None) or str(v)


@dataclass(frozen=True, eq=False)
class Plan:
    """The launches of one call, in order (none for an empty output)."""
    kernels: tuple = ()


# --- compile ------------------------------------------------------------------------------

def jit_function(fn):
    """A compilable ``JITFunction`` even when ``TRITON_INTERPRET=1`` made ``@triton.jit``
    return an interpreter object (only kernels without nested ``@triton.jit`` calls
    compile in such a process: the nested ones are interpreter objects too)."""
    from triton.runtime.jit import JITFunction
    if isinstance(fn, JITFunction):
        return fn
    return JITFunction(getattr(fn, "fn", fn))


def compile_kernel(k: Kernel, target: Target):
    """``triton.compile`` of ``k`` for ``target`` (no GPU or driver needed); returns the
    ``CompiledKernel`` (``.asm``: ``ttir``, ``ttgir``, ``llir``, ``ptx``, ``cubin``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    if target.interpret:
        raise ValueError("the interpreter target compiles nothing: pass cuda_target(arch)")
    lowering_state()  # refresh the state before Triton hashes the kernel
    src = ASTSource(jit_function(k.fn), dict(k.signature), dict(k.constexprs), dict(k.attrs))
    try:
        ck = triton.compile(src, target=GPUTarget("cuda", target.arch, 32),
                            options={"num_warps": k.num_warps, "num_stages": k.num_stages})
    except RuntimeError as e:
        if "InterpretedFunction" in str(e):
            raise RuntimeError(f"{k.name} calls @triton.jit functions that TRITON_INTERPRET=1 turned into "
                               f"interpreter objects: compile in a process without TRITON_INTERPRET "
                               f"(python -m triton_dequant.inspect does)") from e
        raise
    # the driver refuses a kernel past the SM's shared memory only when it loads it
    # (on a GPU): check here, so that a CPU compile of a plan catches it too
    limit = MAX_SHARED.get(target.arch)
    if limit is not None and ck.metadata.shared > limit:
        raise ValueError(f"{k.name} needs {ck.metadata.shared} bytes of shared memory, sm_{target.arch} has "
                         f"{limit} (num_warps={k.num_warps}, constexprs {dict(k.constexprs)})")
    return ck


# --- lowering state -----------------------------------------------------------------------

def lowering_state():
    """The lowering state of ``tl.dequantize`` now (refreshed: :func:`triton_dequant.state.lowering_state`):
    part of every launch-cache key. A launch compares the snapshot
    (:func:`triton_dequant.state.current`, no environment read), so an environment
    variable changed within a process takes effect at the next refresh (a switch
    call, a compile, a launch-cache miss)."""
    return _state.lowering_state()


_snapshot = _state.current  # (a launch's read: no refresh)


# --- launch -------------------------------------------------------------------------------

def launch_key(k: Kernel, device_index: int, capability: int, state=None) -> tuple:
    """Everything that selects a compiled kernel: the kernel's key (function, full
    signature with pointer dtypes, divisibility, constexprs, num_warps, num_stages),
    the device (index, compute capability) and the lowering state."""
    return (k.key, device_index, capability, _snapshot() if state is None else state)


try:
    from triton.knobs import HookChain as _HookChain
except ImportError:  # pragma: no cover
    _HookChain = type(None)

_LOADED: dict = {}  # (kernel id, device index, lowering state) -> (run, function, packed metadata, compiled)


def _load(k: Kernel, device_index: int, target: Target):
    """Compile ``k`` for ``target`` and load it on GPU ``device_index``."""
    with _on_device(device_index):
        ck = compile_kernel(k, target)
        ck._init_handles()
    return ck.run, ck.function, ck.packed_metadata, ck


def _stream(device_index: int) -> int:
    """The current CUDA stream of a device (as Triton's driver reads it)."""
    global _stream
    try:
        from torch._C import _cuda_getCurrentRawStream as raw
    except ImportError:  # pragma: no cover
        def raw(idx):
            return torch.cuda.current_stream(idx).cuda_stream
    _stream = raw
    return raw(device_index)


def device_stream(device: torch.device) -> tuple:
    """``(device index, current stream)`` of a CUDA device."""
    idx = device.index if device.index is not None else _current_device()
    return idx, _stream(idx)


def _current_device() -> int:
    return torch.cuda.current_device()


def _on_device(device_index: int):
    return torch.cuda.device(device_index)


def loaded(k: Kernel, device_index: int, target: Target):
    """The compiled kernel loaded on ``device_index`` for the current lowering state
    (compiled and loaded on first use)."""
    state = _snapshot()
    entry = _LOADED.get((k.kid, device_index, state))
    if entry is None:
        state = lowering_state()
        entry = _load(k, device_index, target)
        _LOADED[(k.kid, device_index, state)] = entry
        _CAPABILITY[device_index] = target.arch
    return entry


_CAPABILITY: dict = {}


def launch(k: Kernel, tensors: tuple, device: torch.device, target: Target, stream: Optional[int] = None) -> None:
    """Run ``k`` with ``tensors`` (one per pointer argument, in order) on ``device``
    (on ``stream``; default: the device's current stream)."""
    if target.interpret:
        k.fn[k.grid](*tensors, *k.tail, num_warps=k.num_warps, num_stages=k.num_stages)
        return
    cur = _current_device()
    idx = device.index if device.index is not None else cur
    entry = _LOADED.get((k.kid, idx, _snapshot()))
    run, function, packed, ck = entry if entry is not None else loaded(k, idx, target)
    if stream is None:
        stream = _stream(idx)
    g = k.grid
    values = (*tensors, *k.tail)
    rt = _knobs().runtime
    enter, exit_ = _active(rt.launch_enter_hook), _active(rt.launch_exit_hook)
    meta = ck.launch_metadata(g, stream, *values) if enter is not None or exit_ is not None else None
    if idx != cur:  # the module was loaded in that device's context
        with _on_device(idx):
            run(g[0], g[1], g[2], stream, function, packed, meta, enter, exit_, *values)
    else:
        run(g[0], g[1], g[2], stream, function, packed, meta, enter, exit_, *values)


def _knobs():
    global _knobs
    from triton import knobs
    _knobs = lambda: knobs  # noqa: E731
    return knobs


def _active(hook):
    """``hook``, or None when it would do nothing: Triton 3.6 keeps an empty
    ``HookChain`` there by default, which the launcher would call (and for which
    Triton builds launch metadata) on every launch."""
    if hook is None or (type(hook) is _HookChain and not hook.calls):
        return None
    return hook


def run_plan(plan: Plan, tensors: tuple, device: torch.device, target: Target) -> None:
    """Launch every kernel of ``plan``; ``tensors[i]`` are the pointer arguments of kernel ``i``."""
    for k, t in zip(plan.kernels, tensors):
        launch(k, t, device, target)
