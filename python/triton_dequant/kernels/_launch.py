"""Low-overhead launches for kernels called on every decode step.

``kernel[grid](...)`` re-binds and re-specialises every argument on each call
(tens of microseconds of Python for a kernel with many constexprs: more than a
whole decode GEMV). :func:`launch` does that once per ``key`` and afterwards
calls the cached ``CompiledKernel``'s launcher directly. The key must capture
everything Triton specialises on: the caller's static parameters plus, here,
the 16-byte alignment of pointer arguments and the ``== 1`` / ``% 16 == 0``
class of integer arguments.
"""
from __future__ import annotations

import inspect

import torch
from triton import knobs
from triton.runtime import driver

_CACHE: dict = {}
_PARAMS: dict = {}


def _spec(v):
    if isinstance(v, torch.Tensor):
        return v.data_ptr() % 16 == 0
    if isinstance(v, bool) or not isinstance(v, int):
        return None
    return (v == 1, v % 16 == 0)


def launch(kernel, grid: tuple, args: tuple, kwargs: dict, key) -> None:
    """``kernel[grid](*args, **kwargs)``, through the compiled kernel cached under ``key``."""
    full_key = (kernel, key, grid, tuple(_spec(a) for a in args))
    entry = _CACHE.get(full_key)
    if entry is None:
        compiled = kernel[grid](*args, **kwargs)
        if kernel not in _PARAMS:
            _PARAMS[kernel] = list(inspect.signature(kernel.fn).parameters.values())
        # the remaining parameters (constexprs), in signature order, as Triton binds them
        tail = tuple(kwargs.get(p.name, p.default) for p in _PARAMS[kernel][len(args):])
        compiled._init_handles()
        _CACHE[full_key] = (compiled, tail)
        return
    compiled, tail = entry
    device = args[0].device.index if isinstance(args[0], torch.Tensor) and args[0].device.index is not None \
        else driver.active.get_current_device()
    stream = driver.active.get_current_stream(device)
    values = (*args, *tail)
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                 compiled.function, compiled.packed_metadata, compiled.launch_metadata(grid, stream, *values),
                 knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *values)
