"""Memory-saving training (activation checkpointing, chunked sampling, slabbed head) computes the
same values and gradients as the plain path (float64, so that any difference is a bug)."""

from __future__ import annotations

import pytest
import torch

from monoocc_ros.model.config import ModelConfig
from monoocc_ros.model.deformable import DeformableAttention
from monoocc_ros.model.head import OccupancyHead
from monoocc_ros.model.memory import resolve_checkpointing, set_memory_saving
from monoocc_ros.model.monoocc import MonoOcc


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _run(model: torch.nn.Module, fn, seed: int = 0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both runs (checkpoint replays the RNG)
    out = fn()
    loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view(o.shape)).sum() for o in out)
    loss.backward()
    return [o.detach().clone() for o in out], _grads(model)


def _assert_same(a, b) -> None:
    (out_a, grads_a), (out_b, grads_b) = a, b
    for x, y in zip(out_a, out_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-9, atol=1e-12, msg=name)


def test_whole_model_values_and_gradients_match_with_checkpointing():
    cfg = ModelConfig.from_dict(
        {
            "name": "memory_test",
            "backbone": "resnet18",
            "embed_dim": 16,
            "image_scale": 0.25,
            "output_scale": 4,  # 64x64x8 output from 32x32x4 queries: the head upsamples x2 (paper order)
            "query_scale": 8,
            "cross_layers": 1,
            "self_layers": 1,
            "icca_layers": 1,
            "heads": 2,
            "points": 2,
            "ffn_dim": 24,
            "depth_bins": 8,
            "proposal_channels": 4,
            "proposal_threshold": 0.45,
        }
    )
    torch.manual_seed(0)
    model = MonoOcc(cfg).double().train()
    for m in model.modules():  # as one training step would (zero-initialised offsets hide bugs)
        if isinstance(m, DeformableAttention):
            torch.nn.init.normal_(m.sampling_offsets.weight, std=1e-2)
            torch.nn.init.normal_(m.attention_weights.weight, std=1e-2)
    from monoocc_ros.geometry import KITTI_CALIB, lidar_projection, resize_projection

    proj = resize_projection(lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"]), 310 / 1241, 94 / 376)
    images = torch.rand(2, 1, 3, 94, 310, dtype=torch.float64)
    projections = torch.from_numpy(proj).double()[None, None].expand(2, 1, 3, 4).contiguous()

    def forward():
        out = model(images, projections)
        return [out["logits"], out["voxel_features"]]

    plain = _run(model, forward)
    set_memory_saving(model, checkpointing=True, chunk=1000)  # 4,096 queries: several chunks per layer
    saved = _run(model, forward)
    _assert_same(plain, saved)
    assert model.head.checkpointing and model.transformer.self_attn[0].attn.chunk == 1000


@pytest.mark.parametrize("nx", [1, 5, 16])
def test_head_slabs_equal_the_full_upsampling(nx):
    torch.manual_seed(nx)
    head = OccupancyHead(6, 20, upsample=2).double()
    head.SLAB = 4  # several slabs, odd cuts
    voxels = torch.randn(2, 6, nx, 3, 2, dtype=torch.float64)
    plain = _run(head, lambda: [head(voxels)])
    head.checkpointing = True
    _assert_same(plain, _run(head, lambda: [head(voxels)]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_chunked_checkpointed_sampling_equals_one_pass(ndim):
    torch.manual_seed(ndim)
    attn = DeformableAttention(8, 2, 3, ndim=ndim).double()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.1)
    spatial = (5, 7) if ndim == 2 else (3, 4, 5)
    query = torch.randn(2, 50, 8, dtype=torch.float64)
    ref = torch.rand(2, 50, ndim, dtype=torch.float64)
    value = torch.randn(2, int(torch.tensor(spatial).prod()), 8, dtype=torch.float64)
    plain = _run(attn, lambda: [attn(query, ref, value, spatial)])
    attn.checkpointing, attn.chunk = True, 7
    _assert_same(plain, _run(attn, lambda: [attn(query, ref, value, spatial)]))


def test_auto_checkpoints_only_large_query_grids():
    assert resolve_checkpointing("auto", 128 * 128 * 16) and not resolve_checkpointing("auto", 64 * 64 * 8)
    assert resolve_checkpointing("on", 8) and not resolve_checkpointing("off", 10**9)
    with pytest.raises(ValueError, match="checkpointing must be one of"):
        resolve_checkpointing("yes", 8)


def test_trainer_memory_options_are_validated():
    from monoocc_ros.model.config import ConfigError
    from monoocc_ros.trainer.config import TrainConfig

    assert TrainConfig("t", "student_small", "data").checkpointing == "auto"
    with pytest.raises(ConfigError, match="checkpointing must be auto, on or off"):
        TrainConfig("t", "student_small", "data", checkpointing="yes")
    with pytest.raises(ConfigError, match="attention_chunk must be >= 1"):
        TrainConfig("t", "student_small", "data", attention_chunk=0)
