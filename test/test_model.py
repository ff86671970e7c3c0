"""The MonoOcc network: deformable attention against a slow reference, shapes and gradients of
every config, the model's projection geometry on a synthetic frame, losses and configs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import with_stride_8_level
from monoocc_ros.data.synth import SequenceRenderer, make_world
from monoocc_ros.geometry import (
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    KITTI_CALIB,
    SEMANTIC_KITTI_GRID,
    lidar_projection,
    resize_projection,
)
from monoocc_ros.model.config import ConfigError, ModelConfig, load_named_config
from monoocc_ros.model.deformable import DeformableAttention
from monoocc_ros.model.losses import MonoOccLoss, geo_scal_loss, masked_feature_mse, sem_scal_loss
from monoocc_ros.model.monoocc import MonoOcc
from monoocc_ros.model.voxel_transformer import project_reference_points


def reference_deformable(attn: DeformableAttention, query, reference, value, spatial):
    """Obviously correct deformable attention: loops over batch, query, head and point, and
    interpolates by summing over the 2^ndim neighbouring cells with (1 - distance) weights,
    zero outside the map (grid_sample's align_corners=False, zeros padding)."""
    b_, n_, c = query.shape
    h, p_, ch = attn.heads, attn.points, c // attn.heads
    v = attn.value_proj(value).view(b_, *spatial, c)
    offsets = attn.sampling_offsets(query).view(b_, n_, h, p_, attn.ndim)
    weights = attn.attention_weights(query).view(b_, n_, h, p_).softmax(-1)
    size = torch.tensor(spatial[::-1], dtype=query.dtype)
    out = torch.zeros(b_, n_, c, dtype=query.dtype)
    for b, n, hh, p in itertools.product(range(b_), range(n_), range(h), range(p_)):
        loc = reference[b, n] + offsets[b, n, hh, p] / size
        coord = (loc * size - 0.5).flip(0)  # continuous cell coordinates, spatial order
        base = torch.floor(coord).long()
        sample = torch.zeros(ch, dtype=query.dtype)
        for corner in itertools.product((0, 1), repeat=attn.ndim):
            idx = base + torch.tensor(corner)
            w = torch.prod(1 - (coord - idx).abs())
            if all(0 <= int(i) < s for i, s in zip(idx, spatial, strict=True)):
                sample += w * v[(b, *idx.tolist())][hh * ch : (hh + 1) * ch]
        out[b, n, hh * ch : (hh + 1) * ch] += weights[b, n, hh, p] * sample
    return attn.output_proj(out)


@pytest.mark.parametrize("ndim,spatial", [(2, (5, 7)), (3, (4, 5, 3))])
def test_deformable_attention_matches_reference(ndim, spatial):
    torch.manual_seed(0)
    attn = DeformableAttention(8, heads=2, points=3, ndim=ndim, chunk=4).double()
    for prm in attn.parameters():  # random weights, so offsets and attention weights are non-trivial
        torch.nn.init.normal_(prm, std=0.5)
    query = torch.randn(2, 6, 8, dtype=torch.float64)
    reference = torch.rand(2, 6, ndim, dtype=torch.float64) * 1.2 - 0.1  # some samples fall outside
    value = torch.randn(2, int(np.prod(spatial)), 8, dtype=torch.float64)
    fast = attn(query, reference, value, spatial)
    slow = reference_deformable(attn, query, reference, value, spatial)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    attn.chunk = 1000  # chunking does not change the result
    torch.testing.assert_close(attn(query, reference, value, spatial), fast, atol=1e-12, rtol=0)


def _inputs(cfg: ModelConfig, batch: int = 1):
    h, w = round(IMAGE_HEIGHT * cfg.image_scale), round(IMAGE_WIDTH * cfg.image_scale)
    p = resize_projection(lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"]), w / IMAGE_WIDTH, h / IMAGE_HEIGHT)
    k = len(cfg.frame_offsets)
    proj = torch.tensor(p, dtype=torch.float32).expand(batch, k, 3, 4).clone()
    return torch.rand(batch, k, 3, h, w), proj


def _fake_batch(cfg: ModelConfig, out: dict, batch: int) -> dict:
    g = torch.Generator().manual_seed(0)
    full = tuple(out["logits"].shape[2:])
    q = tuple(out["proposal_logits"].shape[1:])
    h2, w2 = out["depth"].shape[1:]
    return {
        "target_out": torch.randint(0, 20, (batch, *full), generator=g),
        "target": torch.randint(0, 20, (batch, *SEMANTIC_KITTI_GRID.scaled(cfg.output_scale).shape), generator=g),
        "target_q": torch.randint(0, 20, (batch, *q), generator=g),
        "labels_2d": torch.randint(0, 20, (batch, h2, w2), generator=g),
        "depth_2d": torch.rand(batch, h2, w2, generator=g) * 40,
    }


@pytest.mark.parametrize("name", ["student_tiny", "teacher_tiny"])
def test_tiny_configs_shapes_and_gradients(name):
    torch.manual_seed(0)
    cfg = load_named_config(name)
    model = MonoOcc(cfg).train()
    # Deformable DETR initialises offset and weight projections to zero, which makes the
    # positional encodings' first gradient exactly zero; nudge them as one training step would.
    for module in model.modules():
        if isinstance(module, DeformableAttention):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=1e-3)
            torch.nn.init.normal_(module.attention_weights.weight, std=1e-3)
    if cfg.head == "fine":  # zero-initialised sub-voxel correction (starts from the coarse geometry)
        torch.nn.init.normal_(model.head.subvoxel.weight, std=1e-3)
    images, proj = _inputs(cfg, batch=2)
    lidar = None
    if cfg.privileged_lidar:  # a privileged teacher: accumulated LiDAR, log(1 + returns) per query voxel
        lidar = torch.log1p(torch.poisson(torch.full((2, *cfg.query_grid.shape), 0.05)))
    out = model(images, proj, lidar)
    og, qg = cfg.output_grid.shape, cfg.query_grid.shape
    assert out["logits"].shape == (2, 20, *SEMANTIC_KITTI_GRID.scaled(cfg.logits_scale).shape)
    if cfg.head == "fine":
        assert out["occupancy"].shape == (2, *og)
    assert out["voxel_features"].shape == (2, cfg.embed_dim, *qg)
    assert out["proposal_logits"].shape == (2, *qg)
    assert out["semantic_2d"].shape == (2, 20, images.shape[-2] // 4, images.shape[-1] // 4)
    batch = _fake_batch(cfg, out, 2)
    loss_cfg = cfg.loss.__class__(distill_feature=1.0)
    teacher = {"voxel_features": torch.randn_like(out["voxel_features"]), "logits": out["logits"].detach()}
    terms = MonoOccLoss(loss_cfg)(out, batch, "target_out", "target_q", teacher=teacher)
    expected = {"ce", "sem_scal", "geo_scal", "semantic_2d", "proposal", "depth", "distill_feature"}
    assert set(terms) >= expected | ({"occupancy"} if cfg.head == "fine" else set())
    terms["total"].backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if cfg.backbone.startswith("resnet"):
        assert not frozen  # no weights file for the tiny ResNets: random layers are never frozen
    else:  # the wheel's ImageNet EfficientNet: its stem and first blocks stay as pretrained
        assert frozen and all(n.startswith("backbone.") for n in frozen)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    zero = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    # the frame embedding rows beyond K and nothing else may have zero gradient
    assert all("frame_embed" in n for n in zero), zero


def test_without_the_2d_head_every_other_output_is_unchanged():
    """The frozen teacher (cache, live distillation) and calibration skip the 2D head: that may
    save its work and nothing else. In eval mode every other output must be bit-identical."""
    torch.manual_seed(0)
    cfg = load_named_config("teacher_tiny")
    model = MonoOcc(cfg).eval()
    images, proj = _inputs(cfg, batch=1)
    lidar = torch.log1p(torch.poisson(torch.full((1, *cfg.query_grid.shape), 0.05)))
    with torch.inference_mode():
        full = model(images, proj, lidar)
        lean = model(images, proj, lidar, with_2d=False)
    assert full["semantic_2d"] is not None and lean["semantic_2d"] is None
    assert set(full) == set(lean)
    for key, value in full.items():
        if key != "semantic_2d":
            assert torch.equal(value, lean[key]), key


@pytest.mark.slow
def test_paper_size_student_forward_on_cpu():
    torch.manual_seed(0)
    cfg = load_named_config("student_small")
    assert (cfg.embed_dim, cfg.query_grid.shape, cfg.output_grid.shape) == (128, (128, 128, 16), (256, 256, 32))
    assert (cfg.cross_layers, cfg.self_layers, cfg.icca_layers, cfg.heads, cfg.points) == (3, 2, 3, 8, 8)
    model = MonoOcc(cfg).eval()
    images, proj = _inputs(cfg)
    with torch.no_grad():
        out = model(images, proj)
    assert out["logits"].shape == (1, 20, 256, 256, 32)
    assert out["voxel_features"].shape == (1, 128, 128, 128, 16)
    assert torch.isfinite(out["logits"]).all()


def test_teacher_small_builds_with_paper_sizes():
    cfg = load_named_config("teacher_small")
    assert cfg.is_teacher and cfg.frame_offsets == (-12, -9, -6, -3, 0) and cfg.cross_view_blocks == 6
    model = MonoOcc(cfg)
    assert model.cross_view is not None and len(model.cross_view.blocks) == 6
    # Cross-view transformer on five frames' stride-16 maps keeps their shape.
    feats = torch.randn(1, 5, 128, 24, 78)
    with torch.no_grad():
        assert model.cross_view(feats).shape == feats.shape


def test_model_projection_lands_on_rendered_class():
    """Centres of the car voxels the camera sees, projected by the transformer's own function
    into the half-size image the tiny model sees, land on pixels rendered as car."""
    frame = SequenceRenderer(make_world(np.random.default_rng([11, 0]), 1), seed=11).render(0)
    cfg = load_named_config("student_tiny")
    _, proj = _inputs(cfg)
    h, w = round(IMAGE_HEIGHT * cfg.image_scale), round(IMAGE_WIDTH * cfg.image_scale)
    car = (frame["labels"] == 1) & frame["camera_seen"]
    centers = torch.from_numpy(SEMANTIC_KITTI_GRID.voxel_centers()[car])
    ref, visible = project_reference_points(centers, proj, (h, w))
    assert visible.float().mean() > 0.95 and visible.sum() > 50
    px = (ref[0, 0][visible[0, 0]] * torch.tensor([IMAGE_WIDTH, IMAGE_HEIGHT]) - 0.5).round().long()
    px[:, 0].clamp_(0, IMAGE_WIDTH - 1)
    px[:, 1].clamp_(0, IMAGE_HEIGHT - 1)
    hits = frame["label_image"][px[:, 1].numpy(), px[:, 0].numpy()]
    assert (hits == 1).mean() > 0.7, np.bincount(hits)  # edges see past the car; wrong geometry gives ~0


def test_scal_losses_reward_correct_predictions():
    target = torch.tensor([[0, 0, 1, 2, 255]])
    good = torch.full((1, 20, 5), -10.0)
    good[0, 0, :2] = good[0, 1, 2] = good[0, 2, 3] = 10.0
    bad = torch.full((1, 20, 5), -10.0)
    bad[0, 3] = 10.0
    assert sem_scal_loss(good, target) < 1e-3 < sem_scal_loss(bad, target)
    assert geo_scal_loss(good, target) < 1e-3 < geo_scal_loss(bad, target)
    f = torch.zeros(1, 2, 2, 1, 1)
    t = torch.ones(1, 2, 2, 1, 1)
    mask = torch.tensor([[[[True]], [[False]]]])
    assert masked_feature_mse(f, t, mask) == pytest.approx(1.0)
    assert masked_feature_mse(f, t, torch.zeros_like(mask)) == 0


def _sem_scal_reference(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MonoScene's sem_scal written as its loop over classes (the shipped code before vectorising)."""

    def bce_one(p):
        return torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1.0), torch.ones_like(p))

    prob, mask = logits.softmax(1), target != 255
    t = target[mask]
    loss, count = logits.new_zeros(()), 0
    for c in range(logits.shape[1]):
        p, is_c = prob[:, c][mask], (t == c).to(logits.dtype)
        if is_c.sum() == 0:
            continue
        count += 1
        tp = (p * is_c).sum()
        loss = loss + bce_one(tp / p.sum()) + bce_one(tp / is_c.sum())
        if (1 - is_c).sum() > 0:
            loss = loss + bce_one(((1 - p) * (1 - is_c)).sum() / (1 - is_c).sum())
    return loss / max(count, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_sem_scal_equals_the_per_class_loop(seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 20, 6, 5, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 20, (2, 6, 5, 4), generator=g)
    target[target == 7] = 1 if seed else 7  # some classes absent, one sample with a single class
    target[0, :2] = 255
    ref = _sem_scal_reference(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    new = sem_scal_loss(logits, target)
    (g_new,) = torch.autograd.grad(new, logits)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-10, atol=1e-12)
    only_one = torch.zeros_like(target)  # every voxel empty: no negatives for class 0
    torch.testing.assert_close(sem_scal_loss(logits, only_one), _sem_scal_reference(logits, only_one))


def _geo_scal_reference(empty: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MonoScene's geo_scal on the kept voxels only, indexed out (the shipped code before weighting)."""

    def bce_one(p):
        return torch.nn.functional.binary_cross_entropy(p.clamp(1e-6, 1.0), torch.ones_like(p))

    keep = target != 255
    e, t = empty[keep], (target[keep] != 0).to(empty.dtype)
    occupied = 1 - e
    inter = (occupied * t).sum()
    return bce_one(inter / occupied.sum()) + bce_one(inter / t.sum()) + bce_one(((1 - t) * e).sum() / (1 - t).sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_geo_scal_and_fine_occupancy_losses_equal_the_indexed_originals(seed):
    """Ignored voxels are weighted 0 instead of indexed out (a nonzero and a scatter per term on
    2 M voxels): the same values and gradients as scoring the kept voxels alone."""
    from monoocc_ros.model.losses import fine_occupancy_loss

    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(2, 20, 6, 5, 4, generator=g, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(0, 20, (2, 6, 5, 4), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.4] = 0
    target[torch.rand(target.shape, generator=g) < 0.3] = 255
    new = geo_scal_loss(logits, target)
    ref = _geo_scal_reference(logits.softmax(1)[:, 0], target)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(new, logits)[0], torch.autograd.grad(ref, logits)[0])

    occupancy = (torch.randn(2, 12, 10, 8, generator=g, dtype=torch.float64) * 3).requires_grad_()
    fine = torch.randint(0, 3, (2, 12, 10, 8), generator=g)
    fine[:, :3] = 255
    keep = fine != 255
    bce = torch.nn.functional.binary_cross_entropy_with_logits(occupancy[keep], (fine[keep] != 0).double())
    ref = bce + _geo_scal_reference(torch.sigmoid(-occupancy), fine)
    new = fine_occupancy_loss(occupancy, fine)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(new, occupancy)[0], torch.autograd.grad(ref, occupancy)[0])
    assert torch.autograd.grad(fine_occupancy_loss(occupancy, fine), occupancy)[0][:, :3].abs().max() == 0


def test_loss_terms_switch_off():
    cfg = load_named_config("student_tiny")
    off = cfg.loss.__class__(ce=1.0, sem_scal=0, geo_scal=0, semantic_2d=0, proposal=0, depth=0)
    out = {
        "logits": torch.randn(1, 20, 2, 2, 2),
        "proposal_logits": torch.randn(1, 2, 2, 2),
        "depth": torch.rand(1, 3, 3),
        "semantic_2d": torch.randn(1, 20, 3, 3),
    }
    batch = {
        "t": torch.zeros(1, 2, 2, 2, dtype=torch.long),
        "labels_2d": torch.zeros(1, 3, 3, dtype=torch.long),
        "depth_2d": torch.ones(1, 3, 3),
    }
    terms = MonoOccLoss(off)(out, batch, "t", "t")
    assert set(terms) == {"ce", "total"}


def test_config_validation():
    with pytest.raises(ConfigError, match=r"unknown model key\(s\) \[.embed.\]"):
        ModelConfig.from_dict({"name": "x", "embed": 3})
    with pytest.raises(ConfigError, match="divisible by heads"):
        ModelConfig.from_dict({"name": "x", "embed_dim": 30, "heads": 8})
    with pytest.raises(ConfigError, match="must contain 0"):
        ModelConfig.from_dict({"name": "x", "frame_offsets": [-3, -1]})
    with pytest.raises(ConfigError, match="backbone"):
        ModelConfig.from_dict({"name": "x", "backbone": "vgg"})
    with pytest.raises(FileNotFoundError, match="have"):
        load_named_config("nonexistent")
    assert load_named_config("student_tiny").output_grid.shape == (256, 256, 32)
    with pytest.raises(ConfigError, match="head must be one of"):
        ModelConfig.from_dict({"name": "x", "head": "dense"})
    with pytest.raises(ConfigError, match="semantic_scale"):
        ModelConfig.from_dict({"name": "x", "head": "fine", "query_scale": 4, "semantic_scale": 3})
    with pytest.raises(ConfigError, match="semantic_scale"):  # semantics upsample by 2 at most
        ModelConfig.from_dict({"name": "x", "head": "fine", "query_scale": 4, "semantic_scale": 1})


def test_a_removed_key_reads_at_its_honoured_value_and_is_an_error_otherwise(tmp_path):
    from monoocc_ros.checkpoint import load_checkpoint

    # depth_stride (removed): the code always predicted depth at 1/4; checkpoints written before carry 4
    # (the student shipped until 2026-12-01 did). Today's files have no such key.
    shipped = torch.load("models/student_tiny.pt", map_location="cpu", weights_only=True)
    assert "depth_stride" not in shipped["model_config"]
    without = ModelConfig.from_dict(shipped["model_config"])
    shipped["model_config"]["depth_stride"] = 4
    assert ModelConfig.from_dict(shipped["model_config"]) == without
    assert "depth_stride" not in without.to_dict()
    with pytest.raises(ConfigError, match=r"^m.yaml: depth_stride 8 is no longer a setting \(depth and the 2D"):
        ModelConfig.from_dict({"name": "x", "depth_stride": 8}, "m.yaml")
    # A checkpoint's network never depended on the key: it loads whatever the value.
    shipped["model_config"]["depth_stride"] = 8
    torch.save(shipped, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["model_config"] == without


def test_batched_and_single_frame_cross_attention_agree():
    """Training batches gather proposed voxels with padding; a single frame (the node, the ONNX
    export) uses their indices directly. Same voxels, same features."""
    torch.manual_seed(0)
    model = MonoOcc(load_named_config("student_tiny")).eval()
    t = model.transformer
    b, c = 2, model.cfg.embed_dim
    features = torch.randn(b, c, 12, 39)
    full = lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    p = torch.from_numpy(resize_projection(full, 620 / IMAGE_WIDTH, 188 / IMAGE_HEIGHT)).float()
    projection = p.expand(b, 1, 3, 4).contiguous()
    proposed = torch.rand(b, *t.grid.shape) > torch.tensor([0.7, 0.9]).view(b, 1, 1, 1)  # different counts
    with torch.no_grad():
        batched = t(features, projection, (188, 620), proposed)
        single = [t(features[i : i + 1], projection[i : i + 1], (188, 620), proposed[i : i + 1]) for i in range(b)]
    torch.testing.assert_close(batched, torch.cat(single), atol=2e-4, rtol=0)  # float32 summation order
    with torch.no_grad():
        none = t(features[:1], projection[:1], (188, 620), torch.zeros_like(proposed[:1]))
        assert torch.isfinite(none).all()


def test_icca_of_a_single_frame_computes_only_the_voxels_the_camera_sees_with_the_same_result():
    """A voxel no camera sees leaves ICCA as it entered, so a single frame computes only the
    others: the same values and gradients (float64, to rounding) as every voxel through every layer."""
    torch.manual_seed(0)
    model = MonoOcc(load_named_config("student_tiny")).double().eval()
    t = model.transformer
    n, c = t.queries.shape
    full_p = lidar_projection(KITTI_CALIB["P2"], KITTI_CALIB["Tr"])
    projection = torch.from_numpy(resize_projection(full_p, 620 / IMAGE_WIDTH, 188 / IMAGE_HEIGHT))[None, None]
    ref, visible = project_reference_points(t.centers.double(), projection, (188, 620))
    assert 0.2 < visible.double().mean() < 0.8  # both kinds of voxel are there
    x = torch.randn(1, n, c, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(1, n, c, dtype=torch.float64)
    features = torch.randn(1, 12 * 39, c, dtype=torch.float64, requires_grad=True)
    subset = t._icca(x, pos, ref, visible, features, (12, 39))
    every = x
    for layer in t.icca:
        every = layer(every, pos, ref, visible, features, (12, 39))
    torch.testing.assert_close(subset, every, rtol=0, atol=1e-12)
    assert not torch.equal(subset[0, visible[0, 0]], x[0, visible[0, 0]])  # ICCA did change the seen ones
    wrt = [x, features, *t.icca.parameters()]
    weights = torch.randn_like(every)
    for a, b in zip(
        torch.autograd.grad((subset * weights).sum(), wrt),
        torch.autograd.grad((every * weights).sum(), wrt),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_closed_form_inverse_and_fixed_shape_voxelisation():
    """The export-friendly replacements of linalg.solve and boolean-mask index_add."""
    from monoocc_ros.geometry import GridSpec
    from monoocc_ros.model.proposal import inverse_3x3, voxelize_points

    m = torch.randn(5, 3, 3, dtype=torch.float64) + 3 * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(inverse_3x3(m) @ m, torch.eye(3, dtype=torch.float64).expand(5, 3, 3))
    grid = GridSpec(shape=(4, 4, 2), resolution=1.0, origin=(0.0, -2.0, -1.0))
    pts = torch.tensor([[[0.5, -1.5, -0.5], [0.9, -1.1, -0.1], [3.5, 1.5, 0.5], [4.0, 0.0, 0.0], [-0.1, 0, 0]]])
    counts = voxelize_points(pts, grid)
    assert counts.shape == (1, 4, 4, 2) and counts.sum() == 3  # two outside points are dropped
    assert counts[0, 0, 0, 0] == 2 and counts[0, 3, 3, 1] == 1


def test_semantic_lift_places_class_probabilities_where_the_depth_says():
    """Pixels go to the voxel their depth back-projects to; a voxel gets the mean class
    distribution of its pixels and log(1 + count); gradients reach the 2D logits."""
    from monoocc_ros.geometry import GridSpec
    from monoocc_ros.model.lift import SemanticLift

    grid = GridSpec(shape=(4, 4, 2), resolution=1.0, origin=(0.0, -2.0, -1.0))
    lift = SemanticLift(grid, num_classes=3, dim=4)
    with torch.no_grad():  # the embedding as the identity: the output is the evidence itself
        lift.embed.weight.copy_(torch.eye(4))
        lift.embed.bias.zero_()

    # Camera at the origin looking along +x, image 1x2 (pixel centres u = 0, 1; v = 0), depth = x:
    # u = a (0.5 - y / x), v = -0.2 - z / x: pixels at y = x (0.5 - u / a), z = -0.2 x.
    def camera(a: float) -> torch.Tensor:
        return torch.tensor([[[0.5 * a, -a, 0.0, 0.0], [-0.2, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])

    projection = camera(1.0)  # y = 1.25 and -1.25: two voxels
    depth = torch.tensor([[[2.5, 2.5]]])  # x = 2.5 m, z = -0.5 m
    logits = torch.tensor([[[[10.0, 10.0]], [[0.0, -10.0]], [[0.0, 0.0]]]], requires_grad=True)  # (1, 3, 1, 2)
    out = lift(logits, depth, projection, (1, 2))  # (1, 32, 4)
    ev = out[0].view(4, 4, 2, 4)
    filled = ev[..., 3] > 0
    assert int(filled.sum()) == 2, "the two pixels land in two voxels (y 1.25 and -1.25 m)"
    (a, b) = filled.nonzero().tolist()
    assert a[0] == b[0] == 2 and a[2] == b[2] == 0  # x = 2 (depth 2.5 m), z = 0 (-0.5 m)
    for v in (a, b):
        probs = ev[v[0], v[1], v[2], :3]
        torch.testing.assert_close(probs.sum(), torch.tensor(1.0))
        assert float(probs[0].detach()) > 0.99
        torch.testing.assert_close(ev[v[0], v[1], v[2], 3], torch.log1p(torch.tensor(1.0)))
    assert float(ev[~filled].abs().sum().detach()) == 0.0  # empty voxels: no evidence at all
    out[..., 1].sum().backward()  # class 1's mean probability (all classes' sum to 1: no gradient)
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
    # Both pixels in one voxel: the mean of their distributions, count 2.
    same = lift(logits.detach(), depth, camera(20.0), (1, 2))  # y = 1.25 and 1.125: one voxel
    ev2 = same[0].view(4, 4, 2, 4)
    one = ev2[..., 3] > 0
    assert int(one.sum()) == 1
    torch.testing.assert_close(ev2[one][0, 3], torch.log1p(torch.tensor(2.0)))
    torch.testing.assert_close(ev2[one][0, :3], logits.detach()[0, :, 0].softmax(0).mean(1))


def test_depth_evidence_counts_points_at_three_scales():
    """One pseudo point per pixel at its depth: log(1 + n) per 0.2 m voxel, per 2x2x2 and per
    4x4x4 block, each weighted; zero weights (the initial state) change nothing."""
    from monoocc_ros.geometry import GridSpec
    from monoocc_ros.model.lift import DepthEvidence

    grid = GridSpec(shape=(8, 8, 4), resolution=1.0, origin=(0.0, -4.0, -2.0))
    ev = DepthEvidence(grid)
    # Camera along +x as in the lift test: two pixels at x = 2.5 m, y = 1.25 and 1.125, z = -0.5.
    projection = torch.tensor([[[10.0, -20.0, 0.0, 0.0], [-0.2, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]])
    depth = torch.tensor([[[2.5, 2.5]]])

    def evidence() -> torch.Tensor:  # values only: no graph to keep
        with torch.no_grad():
            return ev(depth, projection, (1, 2))

    assert float(evidence().abs().sum()) == 0.0
    with torch.no_grad():
        ev.weight.copy_(torch.tensor([1.0, 0.0, 0.0]) / ev.GAIN)
    fine = evidence()[0]
    assert float(fine[2, 5, 1]) == pytest.approx(float(np.log(3.0)))  # both points in voxel (2, 5, 1)
    assert int((fine > 0).sum()) == 1
    with torch.no_grad():
        ev.weight.copy_(torch.tensor([0.0, 0.0, 1.0]) / ev.GAIN)
    block = evidence()[0]
    assert torch.all(block[0:4, 4:8, 0:4] == block[2, 5, 1]) and int((block > 0).sum()) == 64
    with pytest.raises(ConfigError, match="depth_evidence applies to the fine head only"):
        ModelConfig(name="x", head="paper", depth_evidence=True)


def test_efficientnet_backbone_is_pretrained_frozen_only_where_pretrained():
    from monoocc_ros.model.backbone import efficientnet_weights_file, make_backbone

    state = torch.load(efficientnet_weights_file("efficientnet_lite0"), map_location="cpu", weights_only=True)
    net = make_backbone("efficientnet_lite0", 48, frozen_stages=1)
    torch.testing.assert_close(net.stem[0].weight, state["_conv_stem.weight"])  # ImageNet, not random
    torch.testing.assert_close(net.blocks[10]._project_conv.weight, state["_blocks.10._project_conv.weight"])
    assert net.stem[1].eps == 1e-3 and not net.stem[1].weight.requires_grad  # frozen BatchNorm as trained
    assert not any(p.requires_grad for p in net.blocks[1].parameters())  # stride-4 stage frozen
    assert all(p.requires_grad for p in net.blocks[3].parameters())  # stride 8 onwards trains
    assert len(net.blocks) == 11  # to block 10, the last at stride 16 (112 channels)
    with torch.no_grad():
        for h, w in ((188, 620), (376, 1241), (32, 64)):
            coarse, fine = net(torch.rand(1, 3, h, w))
            assert coarse.shape == (1, 48, -(-h // 16), -(-w // 16)) and fine is None
    resnet = make_backbone("resnet18", 48, frozen_stages=1)  # no weights file: random, so nothing frozen
    assert all(p.requires_grad for p in resnet.parameters())


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_fine_level_adds_a_stride_8_map_and_leaves_the_stride_16_map_as_it_was(name):
    """depth/semantic_2d_features_stride 8: a second FPN level at stride 8 for the 2D heads. The
    stride-16 map (what the voxel attention reads) is computed exactly as without it: the top
    level of an FPN takes nothing from the levels below."""
    from monoocc_ros.model.backbone import make_backbone

    torch.manual_seed(0)
    plain = make_backbone(name, 48).eval()
    torch.manual_seed(0)
    pyramid = make_backbone(name, 48, fine_level=True).eval()
    # The same weights in both, the plain stride-16 FPN level as the pyramid's second level.
    pyramid.load_state_dict(with_stride_8_level(plain.state_dict()), strict=False)
    image = torch.rand(1, 3, 188, 620)
    with torch.no_grad():
        coarse, none = plain(image)
        coarse8, fine = pyramid(image)
    assert none is None and fine is not None
    assert fine.shape == (1, 48, -(-188 // 8), -(-620 // 8))
    torch.testing.assert_close(coarse8, coarse)
    # The fine map does depend on the stride-8 input: a change in one corner of the image moves it there.
    image2 = image.clone()
    image2[..., :16, :16] = 0
    with torch.no_grad():
        fine2 = pyramid(image2)[1]
    assert (fine2 - fine)[..., :2, :2].abs().max() > 1e-4 and torch.equal(fine2[..., -4:, -4:], fine[..., -4:, -4:])
    for key in ("depth_features_stride", "semantic_2d_features_stride"):
        with pytest.raises(ConfigError, match=f"{key} must be 8 or 16"):
            ModelConfig(name="x", **{key: 4})


def test_each_2d_head_reads_the_map_of_its_configured_stride():
    """semantic_2d_features_stride 8: the 2D semantic head reads the stride-8 map (one x2 block to
    1/4 instead of two) and the depth head, left at 16, gives exactly the model's depth without
    the option; the outputs keep their 1/4-resolution shapes."""
    import dataclasses

    cfg = load_named_config("student_tiny")
    torch.manual_seed(0)
    plain = MonoOcc(cfg).eval()
    semantic8 = MonoOcc(dataclasses.replace(cfg, semantic_2d_features_stride=8)).eval()
    # The same weights everywhere but the new stride-8 FPN level and the 2D head.
    state = with_stride_8_level(plain.state_dict())
    semantic8.load_state_dict({k: v for k, v in state.items() if not k.startswith("semantic_2d.")}, strict=False)

    def upsamplings(head: torch.nn.Module) -> int:
        return sum(isinstance(m, torch.nn.Upsample) for m in head.modules())

    assert (upsamplings(plain.semantic_2d), upsamplings(semantic8.semantic_2d)) == (2, 1)
    image = torch.rand(1, 1, 3, 96, 320)
    projection = torch.tensor([[[[150.0, -320, 0, 0], [48, 0, -150, 0], [1, 0, 0, 0]]]])
    with torch.no_grad():
        a, b = plain(image, projection), semantic8(image, projection)
    assert b["semantic_2d"].shape == a["semantic_2d"].shape == (1, 20, 24, 80)
    torch.testing.assert_close(b["depth"], a["depth"])


def test_fine_head_labels_and_confidence_against_a_voxel_by_voxel_reference():
    """Occupied where the log-odds are > 0, with the semantic voxel's most likely non-empty
    class; confidence = P(occupied) * P(class | occupied), or P(empty)."""
    from monoocc_ros.model.head import labels_and_confidence

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 20, 3, 2, 2, generator=g) * 2
    occupancy = torch.randn(2, 6, 4, 4, generator=g) * 2
    labels, confidence = labels_and_confidence(logits, occupancy, 2)
    assert labels.dtype == torch.uint8 and labels.shape == confidence.shape == (2, 6, 4, 4)
    for b, x, y, z in itertools.product(range(2), range(6), range(4), range(4)):
        o, sem = float(occupancy[b, x, y, z]), logits[b, :, x // 2, y // 2, z // 2]
        p = 1 / (1 + np.exp(-o))
        q = sem[1:].softmax(0)
        want = int(q.argmax()) + 1 if o > 0 else 0
        assert int(labels[b, x, y, z]) == want
        expect = p * float(q.max()) if o > 0 else 1 - p
        assert abs(float(confidence[b, x, y, z]) - expect) < 1e-6
    # The paper head: argmax and max of the softmax.
    paper, conf = labels_and_confidence(logits, None)
    assert torch.equal(paper.long(), logits.argmax(1)) and torch.allclose(conf, logits.softmax(1).amax(1))


def test_per_class_occupancy_thresholds_decide_by_the_semantic_voxels_class():
    """With class_occupancy_thresholds a voxel is occupied when P(occupied) exceeds the threshold
    of its semantic voxel's most likely class, not 0.5; a config rejects a wrong count."""
    import dataclasses

    from monoocc_ros.model.head import labels_and_confidence

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 20, 3, 2, 2, generator=g) * 2
    occupancy = torch.randn(1, 6, 4, 4, generator=g) * 2
    thresholds = tuple(float(t) for t in torch.rand(19, generator=g) * 0.8 + 0.1)
    labels, confidence = labels_and_confidence(logits, occupancy, 2, 0.5, thresholds)
    flips = 0
    for x, y, z in itertools.product(range(6), range(4), range(4)):
        o, sem = float(occupancy[0, x, y, z]), logits[0, :, x // 2, y // 2, z // 2]
        p, cls = 1 / (1 + np.exp(-o)), int(sem[1:].argmax()) + 1
        occupied = p > thresholds[cls - 1]
        flips += occupied != (p > 0.5)
        assert int(labels[0, x, y, z]) == (cls if occupied else 0)
        expect = p * float(sem[1:].softmax(0).max()) if occupied else 1 - p
        assert abs(float(confidence[0, x, y, z]) - expect) < 1e-6
    assert flips > 0, "the thresholds must change some decisions for this test to mean anything"
    cfg = load_named_config("student_tiny")
    with pytest.raises(ConfigError, match="class_occupancy_thresholds must be empty or 19 values"):
        dataclasses.replace(cfg, class_occupancy_thresholds=(0.3,) * 18)
    with pytest.raises(ConfigError, match=r"values must be in \(0, 1\)"):
        dataclasses.replace(cfg, class_occupancy_thresholds=(0.3,) * 18 + (1.0,))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_eager_trilinear_upsampling_equals_torch_interpolate_in_values_and_gradients(factor):
    """The heads' upsampling (axis by axis, model/export_friendly.py) is F.interpolate's trilinear
    align_corners=False rule, clamped ends included, forward and backward."""
    from monoocc_ros.model.export_friendly import upsample_trilinear

    g = torch.Generator().manual_seed(factor)
    for shape in [(2, 3, 5, 4, 1), (1, 20, 8, 6, 2), (1, 1, 7, 3, 4)]:  # odd sizes, a size-1 axis
        x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
        expected = torch.nn.functional.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)
        got = upsample_trilinear(x, factor)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64)
        (g_expected,) = torch.autograd.grad(expected, x, upstream)
        (g_got,) = torch.autograd.grad(got, x, upstream)
        torch.testing.assert_close(g_got, g_expected, rtol=0, atol=1e-12)


def test_fine_head_starts_from_the_coarse_geometry_and_learns_sub_voxels():
    """At initialisation the 0.2 m log-odds are the semantic head's occupied-vs-empty log-odds,
    trilinearly upsampled; the loss reaches the per-sub-voxel correction."""
    from monoocc_ros.model.export_friendly import upsample_trilinear
    from monoocc_ros.model.head import FineOccupancyHead, occupied_log_odds
    from monoocc_ros.model.losses import fine_occupancy_loss

    torch.manual_seed(0)
    head = FineOccupancyHead(8, 20, subvoxels=4, semantic_upsample=2)
    voxels = torch.randn(1, 8, 4, 3, 2)
    out = head(voxels)
    assert out["logits"].shape == (1, 20, 8, 6, 4) and out["occupancy"].shape == (1, 16, 12, 8)
    torch.testing.assert_close(out["occupancy"], upsample_trilinear(occupied_log_odds(out["logits"])[:, None], 2)[:, 0])
    target = torch.randint(0, 3, (1, 16, 12, 8))
    target[0, 0] = 255
    fine_occupancy_loss(out["occupancy"], target).backward()
    assert head.subvoxel.weight.grad.abs().sum() > 0
    # Sub-voxel (i, j, k) of query (X, Y, Z) lands at (4X + i, 4Y + j, 4Z + k).
    with torch.no_grad():
        head.subvoxel.bias.zero_()
        head.subvoxel.bias[(1 * 4 + 2) * 4 + 3] = 100.0  # sub-voxel (1, 2, 3)
        delta = (
            head(voxels)["occupancy"] - upsample_trilinear(occupied_log_odds(head(voxels)["logits"])[:, None], 2)[:, 0]
        )
    hot = (delta > 50).nonzero()[:, 1:]
    assert len(hot) == 4 * 3 * 2 and set(map(tuple, (hot % 4).tolist())) == {(1, 2, 3)}
