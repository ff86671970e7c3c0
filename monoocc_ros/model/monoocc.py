"""MonoOcc assembled: the monocular student and the privileged multi-frame teacher.

Both are one class: a config with several `frame_offsets` (and cross-view blocks) is a teacher.
Data flow, with K frames (K = 1 for a student) and the current frame at offset 0:

  images (B, K, 3, H, W) -> ImageBackbone -> (B*K, C, H/16, W/16) [+ (B*K, C, H/8, W/8) when a
      2D head reads stride 8: depth_features_stride, semantic_2d_features_stride]
      -> [teacher] CrossViewTransformer over the K stride-16 maps
  current frame, the map of each head's stride:
      Semantic2DHead -> (B, 20, H/4, W/4); DepthHead -> depth (B, H/4, W/4)
      -> QueryProposal -> proposal logits (B, Xq, Yq, Zq) -> proposed = sigmoid > threshold
      [privileged teacher] QueryProposal on accumulated LiDAR (B, Xq, Yq, Zq) instead of depth
      [semantic_lift] SemanticLift(2D logits, depth) -> query bias (B, Xq*Yq*Zq, C)
  VoxelTransformer(K cameras' features, projections[, LiDAR embedding]) -> (B, C, Xq, Yq, Zq)
  OccupancyHead -> logits (B, 20, X, Y, Z)
    or FineOccupancyHead -> occupancy log-odds (B, X, Y, Z) + logits (B, 20, Xs, Ys, Zs) coarser
      [depth_evidence] + DepthEvidence(depth) (B, X, Y, Z): pseudo points per 0.2/0.4/0.8 m voxel
  labels_and_confidence -> labels, confidence (B, X, Y, Z): what the node, eval and ONNX use

`H, W` are the network's input size: images are resized by `image_scale` (and projections with
them) before the network, by the Dataset when training and by `inference.predict` at run time.
"""

from __future__ import annotations

import torch
from torch import nn

from monoocc_ros.model.backbone import make_backbone
from monoocc_ros.model.config import ModelConfig
from monoocc_ros.model.cross_view import CrossViewTransformer
from monoocc_ros.model.head import FineOccupancyHead, OccupancyHead, labels_and_confidence
from monoocc_ros.model.heads2d import Semantic2DHead
from monoocc_ros.model.lift import DepthEvidence, SemanticLift
from monoocc_ros.model.proposal import DepthHead, QueryProposal
from monoocc_ros.model.voxel_transformer import VoxelTransformer

LABEL_STRIDE = 4  # 2D outputs (semantics, depth) at 1/4 of the input, as the Dataset's sparse labels


class MonoOcc(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.current = cfg.frame_offsets.index(0)
        self.backbone = make_backbone(
            cfg.backbone, c, cfg.backbone_weights, cfg.frozen_stages,
            fine_level=8 in (cfg.depth_features_stride, cfg.semantic_2d_features_stride),
        )  # fmt: skip
        self.cross_view = (
            CrossViewTransformer(c, cfg.heads, cfg.cross_view_blocks, cfg.cross_view_window, cfg.dropout)
            if cfg.cross_view_blocks > 0
            else None
        )
        self.semantic_2d = Semantic2DHead(c, cfg.num_classes, cfg.dropout, cfg.semantic_2d_features_stride)
        self.depth = DepthHead(c, cfg.depth_bins, 1.0, cfg.depth_max)
        self.proposal = QueryProposal(cfg.query_grid, cfg.proposal_channels)
        # Privileged teacher: log(1 + LiDAR returns) per query voxel -> a query embedding.
        self.lidar_embed = nn.Linear(1, c) if cfg.privileged_lidar else None
        self.lift = SemanticLift(cfg.query_grid, cfg.num_classes, c) if cfg.semantic_lift else None
        self.depth_evidence = DepthEvidence(cfg.output_grid) if cfg.depth_evidence else None
        self.transformer = VoxelTransformer(
            cfg.query_grid, c, cfg.heads, cfg.points, cfg.ffn_dim,
            cfg.cross_layers, cfg.self_layers, cfg.icca_layers, cfg.dropout,
        )  # fmt: skip
        self.head: nn.Module
        if cfg.head == "fine":
            self.head = FineOccupancyHead(
                c, cfg.num_classes, cfg.query_scale // cfg.output_scale, cfg.query_scale // cfg.semantic_scale
            )
        else:
            self.head = OccupancyHead(c, cfg.num_classes, cfg.query_scale // cfg.output_scale, cfg.upsample_logits)

    def forward(
        self,
        images: torch.Tensor,
        projections: torch.Tensor,
        lidar_evidence: torch.Tensor | None = None,
        *,
        with_2d: bool = True,
    ) -> dict[str, torch.Tensor]:
        """images (B, K, 3, H, W) RGB in [0, 1]; projections (B, K, 3, 4) from this frame's grid
        frame to each image's pixels. K must equal len(cfg.frame_offsets). lidar_evidence
        (B, Xq, Yq, Zq): a privileged teacher's accumulated LiDAR (the Dataset's item). Returns
        every output the losses use. with_2d=False skips the training-only 2D semantic head
        ("semantic_2d" is None): a frozen teacher's cached or live outputs and calibration never
        use it, and it runs 3x3 convolutions at 1/4 of the image's resolution. A model with
        `semantic_lift` runs it always: its voxels are built from it."""
        return self._run(images, projections, with_2d=with_2d, lidar_evidence=lidar_evidence)

    def predict_grid(
        self, images: torch.Tensor, projections: torch.Tensor, lidar_evidence: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference only (what the node, `predict`, eval and the ONNX export run), without the
        training-only 2D semantic head: labels (B, X, Y, Z) uint8 and confidence (B, X, Y, Z) at
        the output grid (`labels_and_confidence`)."""
        return self._grid_labels(self._run(images, projections, with_2d=False, lidar_evidence=lidar_evidence))

    def predict_grid_and_depth(
        self, images: torch.Tensor, projections: torch.Tensor, lidar_evidence: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`predict_grid` and, from the same forward pass, the depth head's metric depth
        (B, H/4, W/4): what placed a student's proposals (a privileged teacher's come from
        LiDAR), and what `monoocc eval` scores the depth by."""
        out = self._run(images, projections, with_2d=False, lidar_evidence=lidar_evidence)
        return (*self._grid_labels(out), out["depth"])

    def _grid_labels(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.cfg.semantic_scale // self.cfg.output_scale if self.cfg.head == "fine" else 1
        return labels_and_confidence(
            out["logits"].float(),
            _float(out.get("occupancy")),
            factor,
            self.cfg.occupancy_threshold,
            self.cfg.class_occupancy_thresholds,
        )

    def _run(
        self, images: torch.Tensor, projections: torch.Tensor, with_2d: bool, lidar_evidence: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        b, k, _, h, w = images.shape
        if (lidar_evidence is not None) != bool(self.cfg.privileged_lidar):
            raise ValueError(
                f"{self.cfg.name}: accumulated LiDAR is the input of privileged teachers only "
                f"(privileged_lidar {list(self.cfg.privileged_lidar)}; given: {lidar_evidence is not None})"
            )
        if k != len(self.cfg.frame_offsets) or projections.shape != (b, k, 3, 4):
            raise ValueError(
                f"{self.cfg.name} expects {len(self.cfg.frame_offsets)} frame(s) and projections (B, K, 3, 4); "
                f"got images {tuple(images.shape)} and projections {tuple(projections.shape)}"
            )
        feats, fine = self.backbone(images.reshape(b * k, 3, h, w))
        if self.cross_view is not None:
            feats = self.cross_view(feats.view(b, k, *feats.shape[1:])).reshape(b * k, *feats.shape[1:])
        maps = {16: feats.view(b, k, *feats.shape[1:])[:, self.current]}
        if fine is not None:
            maps[8] = fine.view(b, k, *fine.shape[1:])[:, self.current]
        size_2d = (h // LABEL_STRIDE, w // LABEL_STRIDE)
        semantic_2d = None
        if with_2d or self.lift is not None:
            semantic_2d = self.semantic_2d(maps[self.cfg.semantic_2d_features_stride], size_2d)
        depth_logits, depth = self.depth(maps[self.cfg.depth_features_stride], size_2d)
        query_bias = None
        if lidar_evidence is not None and self.lidar_embed is not None:
            proposal_logits = self.proposal.from_evidence(lidar_evidence)
            query_bias = self.lidar_embed(lidar_evidence.reshape(b, -1, 1))  # (B, N, C)
        else:
            proposal_logits, _ = self.proposal(depth, projections[:, self.current], (h, w))
        if self.lift is not None and semantic_2d is not None:
            lifted = self.lift(semantic_2d, depth, projections[:, self.current], (h, w))
            query_bias = lifted if query_bias is None else query_bias + lifted
        proposed = proposal_logits.detach().sigmoid() > self.cfg.proposal_threshold
        voxel_features = self.transformer(feats, projections, (h, w), proposed, query_bias=query_bias)
        head = self.head(voxel_features)
        logits = head["logits"] if isinstance(head, dict) else head
        outputs = {
            "logits": logits,
            "voxel_features": voxel_features,
            "semantic_2d": semantic_2d,
            "depth": depth,
            "depth_logits": depth_logits,
            "proposal_logits": proposal_logits,
            "proposed": proposed,
        }
        if isinstance(head, dict):
            outputs["occupancy"] = head["occupancy"]
            if self.depth_evidence is not None:
                evidence = self.depth_evidence(depth, projections[:, self.current], (h, w))
                outputs["occupancy"] = outputs["occupancy"] + evidence
        return outputs


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()
