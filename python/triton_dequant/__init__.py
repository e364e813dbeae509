"""triton-dequant: fast sub-byte dequantization for stock Triton kernels.

``import triton_dequant`` registers ``tl.dequantize`` (see :mod:`.language`).
"""
from . import language, ptx, reference
from .language import dequantize, use_portable

language.install()

__all__ = ["dequantize", "use_portable", "language", "ptx", "reference"]
__version__ = "0.1.0"
