"""Plain torch ops written out where ONNX Runtime's kernel for the single op is slow.

In eager torch each function is the ordinary op; only while `torch.onnx.export` traces does it
emit the written-out form, which computes the same values (within float32 rounding) with
kernels that ONNX Runtime runs fast on the CPU.
"""

from __future__ import annotations

import torch


def softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """`x.softmax(dim)`. ONNX Runtime's Softmax over an axis that is not the last transposes
    the tensor to the last axis and back; written out as max, exp, sum and divide it took
    0.5 ms instead of 5.4 ms for the depth head's (1, 48, 47, 155) over dim 1 and 0.4 ms
    instead of 2.6 ms for an attention layer's (4, 4, 32768) weights (2 cores)."""
    if not torch.onnx.is_in_onnx_export():
        return x.softmax(dim)
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)
