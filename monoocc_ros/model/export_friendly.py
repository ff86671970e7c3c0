"""Plain torch ops written out where ONNX Runtime's kernel for the single op is slow.

In eager torch each function is the ordinary op; only while `torch.onnx.export` traces does it
emit the written-out form, which computes the same values (within float32 rounding) with
kernels that ONNX Runtime runs fast on the CPU.
"""

from __future__ import annotations

import numpy as np
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


def upsample_trilinear(x: torch.Tensor, factor: int) -> torch.Tensor:
    """`F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)` for x
    (B, C, X, Y, Z). Exported as three matrix products, one per axis, with the interpolation
    matrices as constants (two non-zeros per row): ONNX Runtime's 5-D Resize took 14 ms for
    student_tiny's (1, 20, 64, 64, 8) logits, the matrix products 11 ms (2 cores).

    In eager torch, axis by axis with shifted copies and lerps (`upsample_linear_along`):
    torch's CPU kernel parallelises its backward over batch x channels only, so the fine head's
    one-channel (1, 1, 128, 128, 16) log-odds took 111 ms forward and backward on one core, 19 ms
    this way; the (1, 20, 64, 64, 8) logits 80 -> 57 ms (2 cores, per training step)."""
    if torch.onnx.is_in_onnx_export():
        return upsample_trilinear_as_matmuls(x, factor)
    for dim in (4, 3, 2):  # Z first, the shortest axis of every grid here: the intermediate volumes stay small
        x = upsample_linear_along(x, dim, factor)
    return x


def upsample_linear_along(x: torch.Tensor, dim: int, factor: int) -> torch.Tensor:
    """1-D linear upsampling of `x` along `dim` by `factor`, PyTorch's align_corners=False rule
    (source index clamped at both ends): output f*i + k is x[i] moved towards its neighbour by
    |(k + 0.5) / f - 0.5|, the previous one for k in the first half, the next one in the second."""
    n = x.shape[dim]
    prev = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)  # x[i - 1], x[0] at the start
    nxt = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)  # x[i + 1], x[n - 1] at the end
    parts = []
    for k in range(factor):
        d = (k + 0.5) / factor - 0.5
        parts.append(torch.lerp(x, prev, -d) if d < 0 else torch.lerp(x, nxt, d) if d > 0 else x)
    return torch.stack(parts, dim + 1).flatten(dim, dim + 1)


def upsample_trilinear_as_matmuls(x: torch.Tensor, factor: int) -> torch.Tensor:
    """What `upsample_trilinear` exports: (B, C, X, Y, Z) -> (B, C, fX, fY, fZ)."""
    b, c, nx, ny, nz = x.shape
    # int(): while tracing, sizes are traced values; the matrices must be plain constants.
    mx, my, mz = (torch.from_numpy(linear_upsampling_matrix(int(n), factor)).to(x) for n in (nx, ny, nz))
    x = torch.matmul(mx, x.reshape(b * c, nx, ny * nz))  # (B*C, fX, Y*Z)
    x = torch.matmul(my, x.reshape(b * c * factor * nx, ny, nz))  # (B*C*fX, fY, Z)
    # The last product writes the output's final shape: ONNX Runtime copies a Reshape that
    # produces a graph output (3.4 ms here).
    return torch.matmul(x.reshape(b, c, factor * nx, factor * ny, nz), mz.t())  # (B, C, fX, fY, fZ)


def linear_upsampling_matrix(n: int, factor: int) -> np.ndarray:
    """(factor * n, n) float32: row i holds the weights of 1-D linear interpolation for output
    sample i, with PyTorch's align_corners=False source index (clamped at both ends)."""
    src = np.maximum((np.arange(factor * n) + 0.5) / factor - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    lam = src - i0
    i1 = np.minimum(i0 + 1, n - 1)
    m = np.zeros((factor * n, n), dtype=np.float64)
    rows = np.arange(factor * n)
    np.add.at(m, (rows, i0), 1.0 - lam)
    np.add.at(m, (rows, i1), lam)
    return m.astype(np.float32)
