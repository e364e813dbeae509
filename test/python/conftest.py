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


@pytest.fixture
def device():
    return DEVICE
