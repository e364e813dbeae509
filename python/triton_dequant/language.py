"""``tl.dequantize``: the frontend builtin.

Importing :mod:`triton_dequant` registers :func:`dequantize` as
``triton.language.dequantize``. It is a Triton *builtin*: it runs while a
``@triton.jit`` kernel is traced, checks its arguments (errors surface as
``CompilationError`` at the call site), and emits

* on NVIDIA sm_80+: one ``tt.elementwise_inline_asm`` per container element
  (:mod:`triton_dequant.ptx`) returning ``PER`` values, then a ``tl.join`` tree
  and a ``reshape`` that put code ``j`` of element ``i`` at index ``i*PER + j``;
* elsewhere (the interpreter, other backends, older GPUs): the same semantics
  in plain ``tl`` ops, exact as well.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from triton import knobs
from triton.language import core
from triton.language.semantic import TritonSemantic

from . import formats, ptx
from . import reference as ref
from . import state

__all__ = ["dequantize", "install", "lowering_key", "lowering_state", "use_portable"]

_DST = formats.TL_OUT_NAMES
_SCALE_DTYPES = tuple(formats.TL_OUT.values())
_WHERE = "tl.dequantize: "
_MIN_PTX_CAPABILITY = 80  # fma.rn.bf16x2 and cvt.rn.bf16x2.f32 need sm_80


def use_portable(flag: Optional[bool] = True) -> None:
    """Force (``True``) or forbid (``False``) the plain-``tl`` lowering on every
    backend; ``None`` restores the automatic choice (and the environment variable
    ``TRITON_DEQUANT_PORTABLE=1``). Takes effect for the next compile: kernels
    compiled before are not served for the new state (the state is part of their
    cache key, :mod:`triton_dequant.state`)."""
    state.set_portable(flag)


def _portable_forced() -> bool:
    """The portable switch in the snapshot the current compile uses."""
    return state.current().portable


lowering_state = state.lowering_state
lowering_key = state.lowering_key


def _builtin(fn):
    """Like ``triton.language.core.builtin``, but also usable as
    ``triton_dequant.language.dequantize`` under ``TRITON_INTERPRET=1`` (the interpreter
    only patches builtins it finds on ``triton.language``)."""

    @functools.wraps(fn)
    def wrapper(*args, _semantic=None, **kwargs):
        if _semantic is None:
            if not knobs.runtime.interpret:
                raise ValueError("dequantize must be called inside a @triton.jit function")
            from triton.runtime.interpreter import interpreter_builder
            _semantic = TritonSemantic(interpreter_builder)
        return fn(*args, _semantic=_semantic, **kwargs)

    setattr(wrapper, core.TRITON_BUILTIN, True)
    # marks the builtin for the cache-key hook (state.install): its lowering key, without a refresh
    wrapper.__triton_dequant_key__ = state.key_now
    return wrapper


# --- argument checking -----------------------------------------------------------

def _err(arg: str, msg: str) -> ValueError:
    return ValueError(f"{_WHERE}`{arg}` {msg}")


def _check_x(x):
    if not isinstance(x, core.tensor):
        raise TypeError(f"{_WHERE}`x` must be an integer tensor, got {type(core._unwrap_if_constexpr(x)).__name__}")
    dt = x.dtype
    if dt not in formats.TL_CONTAINER_BITS:
        kind = "a floating-point" if dt.is_floating() else f"an unsupported ({dt})"
        raise TypeError(f"{_WHERE}`x` must be an integer container tensor "
                        f"(int8/uint8, int16/uint16, int32/uint32), got {kind} tensor of {dt}")
    if not x.type.is_block() or len(x.shape) == 0:
        raise _err("x", "must be a block tensor with at least one dimension, got a scalar")
    return formats.TL_CONTAINER_BITS[dt]


def _check_nbit(nbit, width):
    return formats.check_nbit(core._unwrap_if_constexpr(nbit), ptx.NBITS, width, where=_WHERE)


def _check_dst(dst_ty):
    dst_ty = core._unwrap_if_constexpr(dst_ty)
    if dst_ty not in _DST:
        raise _err("dst_ty", f"must be tl.float16, tl.bfloat16 or tl.float32, got {dst_ty!r}")
    return dst_ty


def _check_axis(axis, rank):
    return formats.check_dim(core._unwrap_if_constexpr(axis), rank, "axis", where=_WHERE, what="`x`")


def _check_signed(signed):
    return formats.check_bool(core._unwrap_if_constexpr(signed), "signed", where=_WHERE)


def _check_affine(name, v, out_shape):
    """-> ('const', int | float) | ('tensor', tensor). Constants stay Python numbers
    (rounded once to ``dst_ty`` later, :func:`triton_dequant.reference.round_scalar`)."""
    v = core._unwrap_if_constexpr(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return "const", v
    if not isinstance(v, core.tensor):
        raise TypeError(f"{_WHERE}`{name}` must be a float scalar or a tensor of "
                        f"fp16/bf16/fp32, got {type(v).__name__}")
    if v.dtype not in _SCALE_DTYPES:
        raise TypeError(f"{_WHERE}`{name}` must have dtype fp16, bf16 or fp32, got {v.dtype}")
    shape = [int(core._unwrap_if_constexpr(d)) for d in v.shape] if v.type.is_block() else []
    if len(shape) > len(out_shape) or any(
            s not in (1, o) for s, o in zip(reversed(shape), reversed(out_shape))):
        raise _err(name, f"of shape {shape} is not broadcastable to the output shape {list(out_shape)}")
    return "tensor", v


# --- the builtin ---------------------------------------------------------------------

@_builtin
def dequantize(x, scale, shift, nbit, dst_ty=tl.float16, *, axis=-1, signed=False, _semantic=None):
    """Unpack ``nbit`` codes from integer containers and return ``scale * q + shift``.

    :param x: integer tensor (int8/uint8, int16/uint16, int32/uint32). Each element
        holds ``PER = bits(x.dtype) // nbit`` codes; code ``j`` sits at bits
        ``[j*nbit, (j+1)*nbit)`` (least significant first).
    :param scale, shift: Python numbers, or fp16/bf16/fp32 tensors (scalars or blocks
        broadcastable to the output shape: per row, per column, per group...).
        They are first rounded to ``dst_ty`` (round-to-nearest-even); the result is
        then the exact ``scale*q + shift`` rounded once to ``dst_ty``, as a fused
        multiply-add gives it. So with scale/shift already in ``dst_ty`` the result
        is the exact value rounded once.
    :param nbit: constexpr, one of 1, 2, 4, 8, dividing the container width.
    :param dst_ty: ``tl.float16`` (default), ``tl.bfloat16`` or ``tl.float32``.
    :param axis: the dimension that is unpacked (default last).
    :param signed: read codes as two's complement ``nbit``-bit integers.
    :return: tensor of ``dst_ty`` with ``x.shape``, ``axis`` multiplied by ``PER``;
        output index along ``axis`` is ``i*PER + j``.

    Example: int4 codes in int32 words, one fp16 scale/shift per row::

        w = tl.load(w_ptr + offs)                       # [BLOCK] int32
        y = tl.dequantize(w, s, h, 4)                   # [8 * BLOCK] fp16
    """
    width = _check_x(x)
    nbit = _check_nbit(nbit, width)
    dst = _check_dst(dst_ty)
    in_shape = [int(core._unwrap_if_constexpr(d)) for d in x.shape]
    axis = _check_axis(axis, len(in_shape))
    signed = _check_signed(signed)
    per = width // nbit
    out_shape = list(in_shape)
    out_shape[axis] *= per
    sc = _check_affine("scale", scale, out_shape)
    sh = _check_affine("shift", shift, out_shape)
    if _use_ptx(_semantic):
        return _lower_ptx(x, sc, sh, nbit, width, dst, axis, signed, in_shape, out_shape, _semantic)
    return _lower_portable(x, sc, sh, nbit, width, dst, axis, signed, in_shape, out_shape, _semantic)


def _use_ptx(_semantic) -> bool:
    if _portable_forced():
        return False
    opts = getattr(_semantic.builder, "options", None)
    if getattr(opts, "backend_name", None) != "cuda":
        return False
    arch = getattr(opts, "arch", None) or ""
    digits = "".join(c for c in str(arch) if c.isdigit())
    return bool(digits) and int(digits) >= _MIN_PTX_CAPABILITY


def _interleave(outs, axis, in_shape, out_shape, _semantic):
    """PER tensors of ``in_shape`` (output ``j`` = code ``j``) -> one tensor of
    ``out_shape`` with code ``j`` of element ``i`` at ``i*PER + j`` along ``axis``.

    A join tree keeps the codes of one element in one thread's registers. Each
    join appends a minor dimension of size 2 and the first join's dimension ends
    up most significant after the reshape, so the first level pairs codes that
    differ in the top bit of ``j``: ``join(o[k], o[k + n/2])``."""
    level = list(outs)
    while len(level) > 1:
        half = len(level) // 2
        level = [_semantic.join(level[k], level[k + half]) for k in range(half)]
    t = level[0]
    rank, depth = len(in_shape), int(math.log2(len(outs)))
    if depth and axis != rank - 1:
        perm = list(range(axis + 1)) + list(range(rank, rank + depth)) + list(range(axis + 1, rank))
        t = _semantic.permute(t, perm)
    if depth:
        t = _semantic.reshape(t, out_shape, False)
    return t


def _expand_to_rank(t, rank, _semantic):
    if not t.type.is_block():
        return t
    while len(t.shape) < rank:
        t = _semantic.expand_dims(t, 0)
    return t


def _is_input_resolution(kind_val, axis, rank):
    """A scale/shift that is constant over the PER codes of each element can go
    into the asm (applied with packed fma); others are applied per output."""
    kind, v = kind_val
    if kind == "const" or not v.type.is_block():
        return True
    shape = [1] * (rank - len(v.shape)) + [int(core._unwrap_if_constexpr(d)) for d in v.shape]
    return shape[axis] == 1


def _const_bits(value, fmt: ref.FloatFormat) -> int:
    t = torch.tensor([ref.round_scalar(value, fmt)], dtype=torch.float64)
    return int(ref.to_bits(t, fmt)[0]) & ((1 << fmt.bits) - 1)


@functools.lru_cache(maxsize=None)
def _asm(variant: ptx.Variant):
    prog = ptx.build(variant)
    return ptx.render(prog), prog.constraints


def _lower_ptx(x, sc, sh, nbit, width, dst, axis, signed, in_shape, out_shape, _semantic):
    fmt = ref.float_format(_DST[dst])
    rank = len(in_shape)
    inside = _is_input_resolution(sc, axis, rank) and _is_input_resolution(sh, axis, rank)
    identity = sc == ("const", 1.0) and sh[0] == "const" and sh[1] == 0.0 and math.copysign(1, sh[1]) > 0
    affine = inside and not identity
    args = [x]
    imm = {}
    for name, (kind, v) in (("scale", sc), ("shift", sh)):
        if not affine:
            continue
        if kind == "const":
            imm[name] = _const_bits(v, fmt)
        else:
            args.append(_expand_to_rank(_semantic.cast(v, dst), rank, _semantic))
    variant = ptx.Variant(nbit, width, _DST[dst], signed, affine, imm.get("scale"), imm.get("shift"))
    asm, constraints = _asm(variant)
    outs = core.inline_asm_elementwise(asm, constraints, args, dtype=(dst,) * (width // nbit),
                                       is_pure=True, pack=1, _semantic=_semantic)
    y = _interleave(outs, axis, in_shape, out_shape, _semantic)
    if not inside:  # per-output scale/shift: exact fma, one rounding
        s = _affine_operand(sc, dst, _semantic)
        h = _affine_operand(sh, dst, _semantic)
        y = tl.math.fma(y, s, h, _semantic=_semantic)
    return y


def _affine_operand(kind_val, dst, _semantic):
    kind, v = kind_val
    if kind == "const":
        return _scalar(ref.round_scalar(v, ref.float_format(_DST[dst])), dst, _semantic)
    return _semantic.cast(v, dst)


def _scalar(value: float, dtype, _semantic):
    """Scalar constant that keeps the sign of zero (``scalar_constant`` does not)."""
    return _semantic.tensor(getattr(_semantic.builder, f"get_{dtype.name}")(value), dtype)


# --- portable lowering -----------------------------------------------------------------

class _Ops:
    """Terse arithmetic on ``tl`` tensors for the portable lowering (no overflow checks)."""

    def __init__(self, s):
        self.s = s

    def c(self, value, dtype):
        return self.s.cast(self.s.to_tensor(value), dtype)

    def add(self, a, b):
        return self.s.add(a, b, False)

    def sub(self, a, b):
        return self.s.sub(a, b, False)

    def mul(self, a, b):
        return self.s.mul(a, b, False)


def _lower_portable(x, sc, sh, nbit, width, dst, axis, signed, in_shape, out_shape, _semantic):
    """Plain-``tl`` version of the same function (interpreter, non-NVIDIA backends).

    Codes come from shift/mask; the affine step is evaluated in float64 with
    round-to-odd (TwoSum error term), so the final conversion rounds once."""
    s, o = _semantic, _Ops(_semantic)
    u = s.cast(s.bitcast(x, formats.TL_UNSIGNED[width]), tl.uint32)
    outs = []
    for j in range(width // nbit):
        c = s.and_(s.lshr(u, o.c(j * nbit, tl.uint32)), o.c((1 << nbit) - 1, tl.uint32))
        c = s.cast(c, tl.int32)
        if signed:  # two's complement: (c ^ bias) - bias
            bias = o.c(1 << (nbit - 1), tl.int32)
            c = o.sub(s.xor_(c, bias), bias)
        outs.append(c)
    q = s.cast(_interleave(outs, axis, in_shape, out_shape, s), tl.float64)
    fmt = ref.float_format(_DST[dst])
    return _round_once(q, _affine_f64(sc, dst, fmt, o), _affine_f64(sh, dst, fmt, o), dst, o)


def _affine_f64(kind_val, dst, fmt, o):
    """scale/shift rounded to ``dst``, as a float64 tensor."""
    s = o.s
    kind, v = kind_val
    if kind == "const":
        return _scalar(ref.round_scalar(v, fmt), tl.float64, s)
    # widen exactly first (the interpreter converts bf16 only to and from fp32)
    v64 = s.cast(s.cast(v, tl.float32) if v.dtype == tl.bfloat16 else v, tl.float64)
    if v.dtype == dst:
        return v64
    # v * 1 + (-0.0) == v exactly, -0.0 and the IEEE specials included (+0.0 would turn -0.0 into +0.0)
    r = _round_once(v64, _scalar(1.0, tl.float64, s), _scalar(-0.0, tl.float64, s), dst, o)
    return s.cast(s.cast(r, tl.float32) if dst == tl.bfloat16 else r, tl.float64)


def _round_once(q, scale, shift, dst, o):
    """``q*scale + shift`` (float64 tensors holding exact values) rounded once to ``dst``."""
    s = o.s
    p = o.mul(q, scale)  # exact: <= 8 + 24 significant bits
    t = o.add(p, shift)
    bb = o.sub(t, p)
    err = o.add(o.sub(p, o.sub(t, bb)), o.sub(shift, bb))  # TwoSum: t + err == p + shift exactly
    t = _to_odd(t, err, tl.int64, o)  # round-to-odd at 53 bits >= 24 + 2: next rounding is exact
    if dst != tl.bfloat16:
        return s.cast(t, dst)
    # bf16: round-to-odd once more at fp32, then round-to-nearest-even on the
    # bits (the interpreter's fp32->bf16 cast does not break ties to even)
    t32 = s.cast(t, tl.float32)
    t32 = _to_odd(t32, o.sub(t, s.cast(t32, tl.float64)), tl.int32, o)
    bits = s.bitcast(t32, tl.uint32)
    lsb = s.and_(s.lshr(bits, o.c(16, tl.uint32)), o.c(1, tl.uint32))
    rounded = s.lshr(o.add(o.add(bits, o.c(0x7FFF, tl.uint32)), lsb), o.c(16, tl.uint32))
    quiet = s.or_(s.lshr(bits, o.c(16, tl.uint32)), o.c(0x40, tl.uint32))  # NaN stays NaN
    rounded = s.where(s.not_equal(t32, t32), quiet, rounded)
    return s.bitcast(s.cast(rounded, tl.uint16), tl.bfloat16)


def _to_odd(t, err, int_ty, o):
    """Where ``err != 0`` (``t`` inexact) and ``t``'s last bit is even, step one ulp toward
    the exact value. Infinite and NaN ``t`` are IEEE results, kept as they are (their
    ``err`` is NaN or infinite, not an inexactness)."""
    s = o.s
    bits = s.bitcast(t, int_ty)
    one, zero = o.c(1, int_ty), o.c(0.0, t.dtype)
    even = s.equal(s.and_(bits, one), o.c(0, int_ty))
    finite = s.equal(o.sub(t, t), zero)  # inf - inf and NaN - NaN are NaN
    inexact = s.and_(s.not_equal(err, zero), finite)
    grow = s.equal(s.less_than(err, zero), s.less_than(t, zero))  # err has t's sign: |t| up
    step = s.where(grow, one, s.minus(one))
    return s.bitcast(s.where(s.and_(even, inexact), o.add(bits, step), bits), t.dtype)


# --- registration and cache key ---------------------------------------------------------

def install() -> None:
    """Register ``tl.dequantize`` and make its lowering part of Triton's kernel
    cache key (:func:`triton_dequant.state.install`). Idempotent."""
    tl.dequantize = dequantize
    core.dequantize = dequantize
    state.install()
