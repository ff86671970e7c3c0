"""Losses. Each term has a weight in `LossConfig`; a zero weight skips it (ablations).

- ce: class-weighted cross-entropy on the 3D output, weights 1 / ln(f + 0.001) from the
  SemanticKITTI class voxel counts (MonoScene), ignore 255.
- sem_scal, geo_scal: MonoScene's scene-class affinity losses: binary cross-entropy of per-class
  precision, recall and specificity (sem) and of occupied-vs-empty (geo), computed from softmax.
- occupancy (fine head only): binary cross-entropy of the 0.2 m occupancy log-odds plus the
  geo_scal terms on its probabilities, against the full-resolution target (ignore 255).
- semantic_2d: cross-entropy of the 2D auxiliary head against sparse 2D labels (ignore 255).
- proposal: binary cross-entropy of the query proposal against occupancy at the query grid.
- depth: L1 between expected and sparse depth where depth exists.
- distill_feature: masked MSE between student and (frozen) teacher voxel features after ICCA on
  voxels occupied and valid in the ground truth at the query grid. The official code applies a
  KL divergence to raw features, which matches no distribution; MSE on features is the sound
  choice. distill_logit: optional temperature-scaled KL on the output logits (same mask).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from monoocc_ros.classes import IGNORE, class_weights
from monoocc_ros.model.config import LossConfig


def _bce_to_one(p: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy(p.clamp(1e-6, 1.0), torch.ones_like(p))


def _neg_log(p: torch.Tensor) -> torch.Tensor:
    """Elementwise binary cross-entropy of p against 1, as `_bce_to_one` on each entry."""
    return -p.clamp(1e-6, 1.0).log()


def sem_scal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """logits (B, C, ...) and target (B, ...) train ids (255 ignored). MonoScene's per-class
    precision, recall and specificity terms for every class present in the target, averaged.

    All classes at once: per-class sums come from one pass (a scatter of each voxel's
    probability of its true class and column sums of the probabilities) instead of a loop over
    20 classes that re-reads the whole volume each time (8 % of a training step). Ignored voxels
    are weighted 0, not indexed out: a boolean index of a 128x128x16 volume is a nonzero, a
    gather and a scatter in backward, several times the cost of the sums themselves."""
    num_classes = logits.shape[1]
    keep = target != IGNORE
    w = keep.flatten().to(logits.dtype)  # (N,) 1 for a scored voxel, 0 for an ignored one
    p = logits.movedim(1, -1).reshape(-1, num_classes).softmax(-1)  # (N, C)
    t = torch.where(keep, target, 0).flatten().long()  # ignored voxels: any class, weight 0
    n = w.sum()
    count = p.new_zeros(num_classes).index_add_(0, t, w)  # voxels of each class
    tp = p.new_zeros(num_classes).index_add_(0, t, p.gather(1, t[:, None])[:, 0] * w)
    p_sum = w @ p
    present = count > 0
    precision = torch.where(p_sum > 0, _neg_log(tp / p_sum.clamp(min=1e-30)), p.new_zeros(()))
    recall = _neg_log(tp / count.clamp(min=1.0))
    negatives = n - count
    true_negatives = (n - p_sum) - (count - tp)  # sum over voxels not of class c of (1 - p_c)
    specificity = torch.where(negatives > 0, _neg_log(true_negatives / negatives.clamp(min=1.0)), p.new_zeros(()))
    terms = (precision + recall + specificity) * present
    return terms.sum() / present.sum().clamp(min=1)


def geo_scal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return geo_scal_from_empty(logits.softmax(1)[:, 0], *scored_and_occupied(target, logits.dtype))


def scored_and_occupied(target: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """target train ids -> (keep, occupied) as `dtype` weights of the same shape: 1 where a voxel
    is scored (not 255), and 1 where it is scored and occupied (1..19)."""
    keep = target != IGNORE
    return keep.to(dtype), (keep & (target != 0)).to(dtype)


def geo_scal_from_empty(empty: torch.Tensor, keep: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MonoScene's geometric precision, recall and specificity terms. empty: P(empty) of each
    voxel; keep, t: its `scored_and_occupied` weights (ignored voxels weighted 0, as in sem_scal)."""
    free = keep - t  # scored and empty in the ground truth
    occupied = (1 - empty) * keep
    inter = (occupied * t).sum()
    loss = empty.new_zeros(())
    if occupied.sum() > 0:
        loss = loss + _bce_to_one(inter / occupied.sum())
    if t.sum() > 0:
        loss = loss + _bce_to_one(inter / t.sum())
    if free.sum() > 0:
        loss = loss + _bce_to_one((free * empty).sum() / free.sum())
    return loss


def fine_occupancy_loss(occupancy: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """occupancy (B, X, Y, Z) log-odds, target (B, X, Y, Z) train ids at the same grid (255
    ignored: weighted 0, not indexed out, as in sem_scal)."""
    keep, t = scored_and_occupied(target, occupancy.dtype)  # once for both terms (2 M voxels)
    bce = F.binary_cross_entropy_with_logits(occupancy, t, weight=keep, reduction="sum") / keep.sum().clamp(min=1.0)
    return bce + geo_scal_from_empty(torch.sigmoid(-occupancy), keep, t)


def masked_feature_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """student, teacher (B, C, X, Y, Z); mask (B, X, Y, Z) bool. Mean over masked voxels and channels."""
    m = mask.unsqueeze(1).to(student.dtype)
    denom = m.sum() * student.shape[1]
    return ((student - teacher.detach()) ** 2 * m).sum() / denom.clamp(min=1.0)


def masked_logit_kl(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Temperature-scaled KL(teacher || student) on logits (B, C, X, Y, Z), masked voxels only."""
    t = temperature
    log_p = F.log_softmax(student / t, 1)
    q = F.softmax(teacher.detach() / t, 1)
    kl = (q * (q.clamp(min=1e-12).log() - log_p)).sum(1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1.0) * t * t


def distillation_mask(target_query: torch.Tensor) -> torch.Tensor:
    """Voxels occupied (1..19) and valid (not 255) in the ground truth."""
    return (target_query > 0) & (target_query != IGNORE)


class MonoOccLoss(torch.nn.Module):
    class_weights: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("class_weights", torch.from_numpy(class_weights()).float(), persistent=False)

    def forward(self, out: dict, batch: dict, output_key: str, query_key: str, teacher: dict | None = None) -> dict:
        """out: the network's outputs; batch: the Dataset's (collated) items; output_key /
        query_key: the target names at the `logits` and query grids (e.g. "target", "target_2");
        a fine head's occupancy is scored against "target" (the full grid).
        Returns a dict of weighted terms and their sum under "total"."""
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        logits = out["logits"]
        target = batch[output_key]
        if cfg.ce:
            terms["ce"] = cfg.ce * F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE)
        if cfg.sem_scal:
            terms["sem_scal"] = cfg.sem_scal * sem_scal_loss(logits, target)
        if cfg.geo_scal:
            terms["geo_scal"] = cfg.geo_scal * geo_scal_loss(logits, target)
        if cfg.occupancy and "occupancy" in out:
            terms["occupancy"] = cfg.occupancy * fine_occupancy_loss(out["occupancy"], batch["target"])
        if cfg.semantic_2d and "semantic_2d" in out:
            labels = batch["labels_2d"]
            if (labels != IGNORE).any():
                terms["semantic_2d"] = cfg.semantic_2d * F.cross_entropy(
                    out["semantic_2d"], labels, ignore_index=IGNORE
                )
        tq = batch[query_key]
        if cfg.proposal:
            valid = tq != IGNORE
            occ = ((tq > 0) & valid).to(out["proposal_logits"].dtype)
            terms["proposal"] = cfg.proposal * F.binary_cross_entropy_with_logits(
                out["proposal_logits"][valid], occ[valid]
            )
        if cfg.depth:
            gt = batch["depth_2d"]
            has = gt > 0
            if has.any():
                terms["depth"] = cfg.depth * F.smooth_l1_loss(out["depth"][has], gt[has])
        if teacher is not None:
            mask = distillation_mask(tq)
            if cfg.distill_feature:
                terms["distill_feature"] = cfg.distill_feature * masked_feature_mse(
                    out["voxel_features"], teacher["voxel_features"], mask
                )
            if cfg.distill_logit:
                mask_out = distillation_mask(target)
                terms["distill_logit"] = cfg.distill_logit * masked_logit_kl(
                    logits, teacher["logits"], mask_out, cfg.distill_temperature
                )
        # sum() of tensors is a Tensor (typeshed adds its int start, 0, to the result type)
        terms["total"] = cast(torch.Tensor, sum(terms.values())) if terms else logits.new_zeros(())
        return terms
