"""Image preprocessing, batched prompting and post-processing, as SAM's predictor does them.

One place for the scoring protocol's mechanics: images are resized with SAM's
``ResizeLongestSide`` and normalised/padded by ``Sam.preprocess``; logits are upsampled by
``Sam.postprocess_masks`` to the *original* ground-truth resolution and thresholded at 0. Both
baseline and fine-tuned decoders are scored through here, so they can only differ by weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from specialsam.models.batched import decode_batched
from specialsam.prompts import Prompt, to_model_coords

MASK_SELECTIONS = ("single", "best_iou")
"""single: SAM's single-mask output (token 0); best_iou: the multimask output whose predicted
IoU is highest (SAM's own recommendation for ambiguous single points)."""


def model_side(sam: Sam) -> int:
    return int(sam.image_encoder.img_size)


def input_size(original_hw: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = original_hw
    return ResizeLongestSide.get_preprocess_shape(h, w, side)


def preprocess(sam: Sam, image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 RGB -> (3, side, side) normalised, padded model input."""
    side = model_side(sam)
    resized = ResizeLongestSide(side).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).float()
    return sam.preprocess(x[None])[0]


@torch.no_grad()
def encode(
    sam: Sam, images: Sequence[np.ndarray], batch_size: int = 8, precision: str = "fp32"
) -> torch.Tensor:
    """Embeddings (N, C, h, w) for a list of images (float32, on the model's device).

    ``precision`` bf16 runs the encoder under bf16 autocast (the cache records it in the key)."""
    device = next(sam.parameters()).device
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown encoder precision {precision!r}")
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(sam, im) for im in images[i : i + batch_size]]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out.append(sam.image_encoder(x).float())
    return torch.cat(out)


@dataclass
class PromptBatch:
    """Prompts of equal token count, stacked in model-input coordinates."""

    coords: torch.Tensor  # (P, K, 2)
    labels: torch.Tensor  # (P, K)

    @staticmethod
    def stack(
        prompts: Sequence[Prompt],
        original_hws: Sequence[tuple[int, int]],
        side: int,
        in_model_frame: bool = False,
    ) -> PromptBatch:
        if in_model_frame:
            coords = np.stack([p.coords for p in prompts]).astype(np.float32)
        else:
            coords = np.stack([to_model_coords(p, hw, side) for p, hw in zip(prompts, original_hws)])
        labels = np.stack([p.labels for p in prompts])
        return PromptBatch(torch.from_numpy(coords), torch.from_numpy(labels))


def select_logits(masks: torch.Tensor, iou_pred: torch.Tensor, mask_selection: str) -> torch.Tensor:
    """(P, 1+M, h, w) decoder logits -> (P, h, w) chosen per the protocol."""
    if mask_selection == "single":
        return masks[:, 0]
    if mask_selection == "best_iou":
        best = iou_pred[:, 1:].argmax(1) + 1
        return masks[torch.arange(masks.shape[0]), best]
    raise ValueError(f"unknown mask selection {mask_selection!r}; choose from {MASK_SELECTIONS}")


@torch.no_grad()
def predict_masks(
    sam: Sam,
    embeddings: torch.Tensor,
    prompts: Sequence[Prompt],
    original_hws: Sequence[tuple[int, int]],
    mask_selection: str = "single",
    batch_size: int = 64,
    prompts_in_model_frame: bool = False,
) -> list[np.ndarray]:
    """Binary masks at each sample's original resolution; ``embeddings`` has one row per prompt.

    Prompts are in original-image pixels, or already in model-input pixels when
    ``prompts_in_model_frame`` (as packs store them)."""
    side = model_side(sam)
    device = next(sam.parameters()).device
    out: list[np.ndarray] = []
    for i in range(0, len(prompts), batch_size):
        pb = PromptBatch.stack(
            prompts[i : i + batch_size], original_hws[i : i + batch_size], side, prompts_in_model_frame
        )
        emb = embeddings[i : i + batch_size].to(device=device, dtype=torch.float32)
        masks, iou = decode_batched(
            sam.mask_decoder, sam.prompt_encoder, emb, pb.coords.to(device), pb.labels.to(device)
        )
        logits = select_logits(masks, iou, mask_selection).float()
        for j, hw in enumerate(original_hws[i : i + batch_size]):
            up = sam.postprocess_masks(logits[j][None, None], input_size(hw, side), hw)
            out.append((up[0, 0] > sam.mask_threshold).cpu().numpy())
    return out
