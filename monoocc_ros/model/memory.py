"""Training memory: activation checkpointing of the transformer layers, the deformable sampling
and the full-resolution head, as a switch on a built model.

Why: a paper-size step (`student_small`: 262,144 queries, 8 heads x 8 points x 16 channels per
sampled value, eight attention layers, a 256x256x32x128 head) keeps about 1 GiB of sampled values
per attention layer for backward, and did not fit in 24 GiB. The official code avoids this with
a fused CUDA kernel; here, in pure PyTorch and exportable, each piece keeps only its inputs and
recomputes the rest in backward (torch.utils.checkpoint, non-reentrant, RNG state preserved so
dropout masks match), so values and gradients equal the plain path's within float rounding:

- each transformer layer (attention, LayerNorms, FFN) keeps its input (B, N, C);
- inside it, the deformable sampling runs in chunks of `chunk` queries, each checkpointed, so
  a layer's recomputation holds one chunk's sampled values at a time;
- the full-resolution head (trilinear x2, LayerNorm + Linear per voxel) runs in slabs along X.

Inference and the ONNX export never checkpoint (no gradients); chunking changes nothing there
but peak memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from monoocc_ros.model.config import ModelConfig

CHECKPOINTING_MODES = ("auto", "on", "off")
AUTO_THRESHOLD = 65536  # "auto" checkpoints when the query grid has more voxels (student_small; not _tiny)
DEFAULT_CHUNK = 65536  # queries per sampling chunk


def maybe_checkpoint(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), checkpointed when `enabled` and gradients are being recorded (training)."""
    if enabled and torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def resolve_checkpointing(mode: str, query_voxels: int) -> bool:
    """`auto`: on for query grids above AUTO_THRESHOLD voxels, where memory is the limit."""
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"checkpointing must be one of {CHECKPOINTING_MODES}, got {mode!r}")
    return mode == "on" or (mode == "auto" and query_voxels > AUTO_THRESHOLD)


def configure_memory(model: nn.Module, mode: str = "auto", chunk: int = DEFAULT_CHUNK) -> bool:
    """Apply a checkpointing mode (`auto`, `on`, `off`) to a MonoOcc model, `auto` judged by its
    own query grid, as the trainer does; returns whether checkpointing is on."""
    import math

    # A MonoOcc's config (MonoOcc is not imported: it imports this module); torch types
    # nn.Module.__getattr__ as returning Tensor | Module.
    cfg: ModelConfig = model.cfg  # type: ignore[assignment]
    enabled = resolve_checkpointing(mode, math.prod(cfg.query_grid.shape))
    set_memory_saving(model, enabled, chunk)
    return enabled


def set_memory_saving(model: nn.Module, checkpointing: bool, chunk: int = DEFAULT_CHUNK) -> None:
    """Switch every checkpointable piece of `model` on or off and set the sampling chunk. The
    pieces say so themselves with a `checkpointing` class attribute (DeformableAttention, the
    transformer layers, OccupancyHead; DeformableAttention also has `chunk`): this module is
    below them and imports none of them."""
    if chunk < 1:
        raise ValueError(f"attention chunk must be >= 1 query, got {chunk}")
    for module in model.modules():
        if isinstance(getattr(type(module), "checkpointing", None), bool):
            # torch types nn.Module.__setattr__'s value as Tensor | Module; plain attributes work.
            module.checkpointing = checkpointing  # type: ignore[assignment]
            if hasattr(module, "chunk"):
                module.chunk = chunk  # type: ignore[assignment]
