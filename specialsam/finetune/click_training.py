"""Iterative (corrective-click) training rounds: the SAM paper's and micro-sam's recipe.

After a sample's first prompt, each round adds one point drawn from the current prediction's error
region and, half of the time, feeds the previous low-res logits back as the mask prompt; the loss
is averaged over rounds. ``train.click_rounds`` = 0 never reaches this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice
from specialsam.finetune.clicks import append_tokens, sample_error_clicks
from specialsam.finetune.losses import segmentation_loss
from specialsam.models.batched import decode_batched
from specialsam.models.upsample import upsample_logits


@dataclass
class ClickDraws:
    """A batch's random draws for its corrective-click rounds, drawn once per batch from the
    training generator (so the rounds do not depend on ``micro_batch`` chunking or the device)."""

    hard: torch.Tensor
    """(B, R, R) bool targets the error regions are measured against (``binary_target``)."""
    u: torch.Tensor
    """(rounds, B) uniform draws that pick each round's point in the error region."""
    use_mask: torch.Tensor
    """(rounds, B) bool: whether the round feeds the previous logits back as mask prompt."""
    scale: float
    """Loss-resolution pixels -> model-input pixels."""

    @property
    def rounds(self) -> int:
        return int(self.u.shape[0])

    def slice(self, sl: slice, device: torch.device) -> ClickDraws:
        return ClickDraws(
            self.hard[sl].to(device), self.u[:, sl], self.use_mask[:, sl].to(device), self.scale
        )


class Chunk(NamedTuple):
    """One chunk of a training batch on the device: embeddings, first prompts, targets, valid area."""

    emb: torch.Tensor
    coords: torch.Tensor
    labels: torch.Tensor
    target: torch.Tensor
    valid: torch.Tensor


def click_rounds_loss(
    sam: Sam, chunk: Chunk, clicks: ClickDraws, cfg: Any, dev: DeviceChoice, res: int, n: int
) -> torch.Tensor:
    """Backward of one chunk over its first prompt and ``clicks.rounds`` corrective rounds; returns
    its share of the batch loss (the mean over rounds of the batch-mean loss).

    Each round adds one point from the current prediction's error region (detached) and, where
    ``use_mask``, feeds the previous low-res logits (detached) back as the mask prompt. Rounds are
    independent graphs, so each is backpropagated at once (memory of one round)."""
    emb, coords, labels, target, valid = chunk
    total = torch.zeros((), device=emb.device)
    low, n_rounds = None, clicks.rounds + 1
    hard, in_image = clicks.hard, valid > 0
    for r in range(n_rounds):
        use = None if low is None else clicks.use_mask[r - 1]
        with dev.autocast():
            masks, _ = decode_batched(sam.mask_decoder, sam.prompt_encoder, emb, coords, labels, low, use)
            logits = upsample_logits(masks[:, 0], res)
        loss = segmentation_loss(logits.float(), target, valid, cfg).sum() / (n * n_rounds)
        loss.backward()
        total += loss.detach()
        if r == n_rounds - 1:
            break
        u = clicks.u[r].to(emb.device)
        xy, lab = sample_error_clicks(logits.detach() > 0, hard, in_image, u)
        coords, labels = append_tokens(coords, labels, xy * clicks.scale, lab)
        low = masks[:, :1].detach().float()
    return total
