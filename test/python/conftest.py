import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))

# CPU-only CI runs kernels in Triton's interpreter; on a GPU machine the same
# tests run compiled kernels. Set before any @triton.jit decorator runs.
HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if HAS_GPU else "cpu"

import triton_dequant  # noqa: E402,F401  (registers tl.dequantize before the snapshot below)


@pytest.fixture
def device():
    return DEVICE


# --- what Triton 3.6's interpreter leaves behind ---------------------------------------------
#
# An interpreted call of a @triton.jit function from inside an interpreted kernel
# (`tl.sum`, `tl.max`, ... live in triton.language.standard as jit functions) goes
# through InterpretedFunction.__call__, which patches the `tl` modules visible from
# that function's globals and never restores them (triton/runtime/interpreter.py:
# `_patch_lang(self.fn)` without `scope.restore()`): after one interpreted `tl.sum`,
# triton.language.core's builtins (`program_id`, `arange`, `load`, `reduce`, `range`,
# `multiple_of`, ...: 61 names) stay bound to the interpreter's builder, and every
# later compile in the process fails ("'ir.value' object has no attribute 'dtype'").
# The interpreter also copies its own module globals into the module of every
# function it rewrites (`_compile_and_exec`), which puts `tl` into
# triton.language.standard, so the next leaky patch reaches `triton.language`
# and `tl.math` as well. Restored around every test, so the suite passes in any
# file order.

_MISSING = object()
_SKIP = {"__annotations__", "__dict__", "__weakref__"}


def _language_namespaces():
    import triton.language as tl
    mods = [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == "triton.language" or name.startswith("triton.language."))]
    return mods + [tl.tensor, tl.dtype, tl.core.tensor_descriptor_base]


_PRISTINE = [(obj, dict(vars(obj))) for obj in _language_namespaces()]


def restore_triton_language() -> int:
    """Put back what the interpreter changed in ``triton.language``; returns how many names."""
    fixed = 0
    for obj, saved in _PRISTINE:
        current = vars(obj)
        for name in [n for n in current if n not in saved and n not in _SKIP]:
            if type(current[name]).__name__ != "module":  # (keep submodules imported since)
                delattr(obj, name)
                fixed += 1
        for name, value in saved.items():
            if name not in _SKIP and current.get(name, _MISSING) is not value:
                setattr(obj, name, value)
                fixed += 1
    return fixed


@pytest.fixture(autouse=True)
def _pristine_triton_language():
    restore_triton_language()
    yield
    restore_triton_language()


# --- file order -------------------------------------------------------------------------------

def pytest_addoption(parser):
    parser.addoption("--reverse-files", action="store_true", default=False,
                     help="run the test files in reverse order (tests within a file keep their order); "
                          "CI runs the suite in both orders")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse-files"):
        files = list(dict.fromkeys(item.path for item in items))
        rank = {f: i for i, f in enumerate(reversed(files))}
        items.sort(key=lambda item: rank[item.path])  # stable: the order within a file stays
