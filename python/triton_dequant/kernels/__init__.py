"""Ready Triton kernels built on ``tl.dequantize`` (host entry points take torch tensors)."""
