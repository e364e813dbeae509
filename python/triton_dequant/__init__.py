"""triton-dequant: fast sub-byte dequantization for stock Triton kernels.

``import triton_dequant`` registers ``tl.dequantize`` (see :mod:`.language`):
inside a ``@triton.jit`` kernel, ``tl.dequantize(x, scale, shift, nbit)`` (also
``triton_dequant.language.dequantize``). The top level holds the host ops on torch
tensors (:mod:`.ops`: ``dequantize``, ``dequantize_rows``, ``embedding_bag``,
``linear``), the packing functions (:mod:`.packing`) and the models (:mod:`.model`:
``QuantizedLinear``, ``quantize_model``); the format facts live in :mod:`.formats`.
"""
from . import formats, language, layout, ptx, reference, state
from .language import use_portable

# registers tl.dequantize and puts its lowering state into Triton's cache key; the
# layout step's hook enters Triton's pipeline only while the step is on
# (layout.enable() / TRITON_DEQUANT_LAYOUT=1)
language.install()

from . import interop, ops, packing  # noqa: E402  (ops registers the torch.library ops)
from .ops import dequantize, dequantize_rows, embedding_bag, linear  # noqa: E402
from .packing import bitpack, bitunpack, pack, pack_rows, quantize, unpack, unpack_rows  # noqa: E402
from . import model  # noqa: E402
from .model import QuantizedLinear, quantize_model  # noqa: E402

__all__ = ["dequantize", "use_portable", "dequantize_rows", "embedding_bag", "linear",
           "pack", "unpack", "bitpack", "bitunpack", "quantize", "pack_rows", "unpack_rows",
           "QuantizedLinear", "quantize_model", "model",
           "ops", "packing", "interop", "formats", "language", "layout", "ptx", "reference",
           "state"]
__version__ = "0.1.0"
