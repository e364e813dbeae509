"""The format facts, in one place: integer containers, code widths, output types,
the row-fused header, and the argument validators every public function shares.

* **Containers**: ``int8/uint8, int16/uint16, int32/uint32``. An element of ``W``
  bits holds ``PER = W // nbit`` codes (padded packing), code ``j`` at bits
  ``[j*nbit, (j+1)*nbit)``, least significant first.
* **Code widths**: ``tl.dequantize`` and the kernels unpack ``nbit`` in :data:`NBITS`
  (dividing the container width); :func:`triton_dequant.pack` stores any ``nbit`` in
  :data:`PACK_NBITS` (padded, or dense bit streams).
* **Outputs**: fp16, bf16, fp32 (:data:`OUT_DTYPES`; :data:`TL_OUT` the Triton twins).
* **Row-fused rows** (``dequantize_rows``, ``embedding_bag``, ``pack_rows``): a
  :data:`ROW_HEADER_BYTES`-byte header, the fp16 scale in bytes 0-1 and the fp16 shift
  in bytes 2-3 (little endian), then the data elements. In an int32 row, element 0
  holds scale (low 16 bits) and shift (high 16 bits); int16 rows: elements 0, 1;
  8-bit rows: elements 0-3 (:func:`header_elems`).

Validators raise ``TypeError`` for a value of the wrong type and ``ValueError`` for
a wrong value, always naming the argument (``where`` prefixes the message, e.g.
``"tl.dequantize: "``). They accept ``torch.SymInt`` where an int is expected, so that
traced code (``torch.compile(dynamic=True)``) keeps working: bit widths and axes are
specialized to Python ints (they decide the code), counts stay symbolic.
"""
from __future__ import annotations

import torch
import triton.language as tl

__all__ = ["CONTAINER_BITS", "TL_CONTAINER_BITS", "TL_UNSIGNED", "SIGNED_TWIN", "NBITS", "PACK_NBITS",
           "OUT_DTYPES", "TL_OUT", "TL_OUT_NAMES", "ROW_HEADER_BYTES", "SCALE_BYTES", "SHIFT_BYTES",
           "header_elems", "names", "check_tensor", "check_container", "check_container_dtype", "check_nbit",
           "check_dtype", "check_dim", "check_bool", "check_int", "check_positive_int", "is_int"]

# --- containers ----------------------------------------------------------------------------

CONTAINER_BITS = {torch.int8: 8, torch.uint8: 8, torch.int16: 16, torch.uint16: 16,
                  torch.int32: 32, torch.uint32: 32}
TL_CONTAINER_BITS = {tl.int8: 8, tl.uint8: 8, tl.int16: 16, tl.uint16: 16, tl.int32: 32, tl.uint32: 32}
TL_UNSIGNED = {8: tl.uint8, 16: tl.uint16, 32: tl.uint32}
# the dtype each container is computed in on the host: torch (2.13, CPU) has no shifts,
# comparisons or min/max for uint16/uint32, so those are bit-cast to their signed twins
SIGNED_TWIN = {torch.uint8: torch.uint8, torch.int8: torch.int8, torch.int16: torch.int16,
               torch.uint16: torch.int16, torch.int32: torch.int32, torch.uint32: torch.int32}

# --- codes and outputs --------------------------------------------------------------------------

NBITS = (1, 2, 4, 8)          # unpacked by tl.dequantize and the kernels
PACK_NBITS = tuple(range(1, 9))  # stored by pack/unpack
OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TL_OUT = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
TL_OUT_NAMES = {tl.float16: "fp16", tl.bfloat16: "bf16", tl.float32: "fp32"}

# --- the row-fused header -------------------------------------------------------------------------

ROW_HEADER_BYTES = 4
SCALE_BYTES = (0, 2)  # fp16 scale: header bytes [0, 2)
SHIFT_BYTES = (2, 4)  # fp16 shift: header bytes [2, 4)


def header_elems(width: int) -> int:
    """Container elements of ``width`` bits taken by the row header (4 / 2 / 1)."""
    return ROW_HEADER_BYTES * 8 // width


# --- validators ------------------------------------------------------------------------------------

def names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def is_int(v) -> bool:
    """A Python int (not a bool) or a traced ``torch.SymInt``."""
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _type(v) -> str:
    return type(v).__name__


def check_tensor(t, name: str, where: str = "") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}`{name}` must be a torch.Tensor, got {_type(t)}")
    return t


def check_container(t, name: str, where: str = "") -> int:
    """A container tensor -> its width in bits."""
    check_tensor(t, name, where)
    if t.dtype not in CONTAINER_BITS:
        raise TypeError(f"{where}`{name}` must be an integer container tensor ({names(CONTAINER_BITS)}), "
                        f"got {t.dtype}")
    return CONTAINER_BITS[t.dtype]


def check_container_dtype(dtype, name: str = "container", where: str = "") -> int:
    """A container dtype -> its width in bits."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{where}`{name}` must be a torch.dtype, one of {names(CONTAINER_BITS)}, got {_type(dtype)}")
    if dtype not in CONTAINER_BITS:
        raise ValueError(f"{where}`{name}` must be one of {names(CONTAINER_BITS)}, got {dtype}")
    return CONTAINER_BITS[dtype]


def check_nbit(nbit, allowed=NBITS, width: int | None = None, name: str = "nbit", where: str = "") -> int:
    """``nbit`` in ``allowed`` (and dividing ``width`` if given), as a Python int: a
    traced SymInt (``torch.compile(dynamic=True)``) is specialized, since the bit width
    decides the code itself (one compiled graph per width, like any static argument)."""
    if not is_int(nbit):
        raise TypeError(f"{where}`{name}` must be an int, one of {', '.join(map(str, allowed))}, got {_type(nbit)}")
    nbit = int(nbit)
    if nbit not in allowed:
        raise ValueError(f"{where}`{name}` must be one of {', '.join(map(str, allowed))}, got {nbit}")
    if width is not None and width % nbit:
        raise ValueError(f"{where}`{name}` ({nbit}) must divide the container width ({width} bits)")
    return nbit


def check_dtype(dtype, name: str, allowed=OUT_DTYPES, where: str = ""):
    if not isinstance(dtype, torch.dtype) or dtype not in allowed:
        raise TypeError(f"{where}`{name}` must be one of {names(allowed)}, got {dtype!r}")
    return dtype


def check_dim(dim, ndim: int, name: str = "dim", where: str = "", what: str = "tensor") -> int:
    """An axis of an ``ndim``-d tensor -> normalized to ``[0, ndim)``."""
    if not is_int(dim):
        raise TypeError(f"{where}`{name}` must be an int, got {_type(dim)}")
    dim = int(dim)  # static under tracing too: it decides the layout
    if ndim == 0:
        raise ValueError(f"{where}`{name}`: a 0-d {what} has no dimension {dim}; reshape it to 1-d")
    if not -ndim <= dim < ndim:
        raise ValueError(f"{where}`{name}` must be an int in [{-ndim}, {ndim}) for a {ndim}-d {what}, got {dim}")
    return dim % ndim


def check_bool(v, name: str, where: str = "") -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{where}`{name}` must be a bool, got {v!r}")
    return v


def check_int(v, name: str, lo: int | None = None, hi: int | None = None, where: str = "", what: str = ""):
    """An int in ``[lo, hi]`` (either bound optional); ``what`` explains the bounds."""
    if not is_int(v):
        raise TypeError(f"{where}`{name}` must be an int, got {_type(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
            else f"<= {hi}"
        raise ValueError(f"{where}`{name}` must be an int {rng}{what}, got {v}")
    return v


def check_positive_int(v, name: str, where: str = "", what: str = ""):
    return check_int(v, name, lo=1, where=where, what=what)
