"""The segmentation loss and its targets, shared by plain and corrective-click training.

``segmentation_loss`` reads only the loss weights of its ``cfg`` (``bce_weight``, ``dice_weight``,
``focal_weight``: a ``TrainConfig``), so every training path weighs its terms the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def binary_target(soft: np.ndarray) -> np.ndarray:
    """Soft uint8 frame mask -> bool; thin structures below half coverage still count."""
    m = soft >= 128
    return m if m.any() else soft > 0


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, cfg: Any
) -> torch.Tensor:
    """Per-sample weighted BCE + Dice (+ focal) over the valid region; shapes (B, R, R)."""
    area = valid.sum((-2, -1)).clamp(min=1)
    losses = torch.zeros(logits.shape[0], device=logits.device)
    if cfg.bce_weight or cfg.focal_weight:
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    if cfg.bce_weight:
        losses = losses + cfg.bce_weight * (bce * valid).sum((-2, -1)) / area
    if cfg.focal_weight:  # sigmoid focal loss (alpha 0.25, gamma 2), as SAM's paper
        p = logits.sigmoid()
        p_t = p * target + (1 - p) * (1 - target)
        a_t = 0.25 * target + 0.75 * (1 - target)
        losses = losses + cfg.focal_weight * (a_t * (1 - p_t) ** 2 * bce * valid).sum((-2, -1)) / area
    if cfg.dice_weight:
        p = logits.sigmoid() * valid
        inter = (p * target).sum((-2, -1))
        dice = 1 - (2 * inter + 1) / (p.sum((-2, -1)) + (target * valid).sum((-2, -1)) + 1)
        losses = losses + cfg.dice_weight * dice
    return losses
