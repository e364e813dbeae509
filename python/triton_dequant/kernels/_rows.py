"""The row-fused header read inside kernels (the format: :mod:`triton_dequant.formats`)."""
import triton
import triton.language as tl

from .. import formats

# header size in bits: a kernel's container elements of header = HEADER_BITS // WIDTH
HEADER_BITS: tl.constexpr = tl.constexpr(formats.ROW_HEADER_BYTES * 8)
assert formats.SCALE_BYTES == (0, 2) and formats.SHIFT_BYTES == (2, 4)  # what row_header reads


@triton.jit
def row_header(base, m, WIDTH: tl.constexpr):
    """fp16 scale and shift of the rows starting at ``base`` (pointers of the row's
    container type; ``m``: mask, masked rows give 0, 0). Scale: header bytes 0-1, shift:
    bytes 2-3, little endian; i.e. int32 element 0 = scale | shift << 16."""
    if WIDTH == 32:
        head = tl.load(base, mask=m, other=0)
        s = (head & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True)
        h = (head >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    elif WIDTH == 16:
        s = tl.load(base, mask=m, other=0).to(tl.int16, bitcast=True).to(tl.float16, bitcast=True)
        h = tl.load(base + 1, mask=m, other=0).to(tl.int16, bitcast=True).to(tl.float16, bitcast=True)
    else:
        b = base.to(tl.pointer_type(tl.uint8))
        s = tl.load(b, mask=m, other=0).to(tl.uint16) | (tl.load(b + 1, mask=m, other=0).to(tl.uint16) << 8)
        h = tl.load(b + 2, mask=m, other=0).to(tl.uint16) | (tl.load(b + 3, mask=m, other=0).to(tl.uint16) << 8)
        s = s.to(tl.float16, bitcast=True)
        h = h.to(tl.float16, bitcast=True)
    return s, h
