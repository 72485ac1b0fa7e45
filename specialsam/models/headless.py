"""SAM without its image encoder: what a trial needs and nothing more.

Trials read embeddings from the cache, so they never need the encoder (for vit_h that is 2.5 GB
of weights per trial process). ``build_headless`` builds SAM's real ``PromptEncoder`` and
``MaskDecoder`` for a registered model and puts ``CachedEmbeddingsOnly`` in the encoder's place:
it carries ``img_size`` (used by SAM's pre/post-processing) and refuses to run, which makes "the
encoder never runs inside a trial" a property the code enforces, not a convention.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

from specialsam.models.tiny import TINY_CONFIGS, build_tiny_sam

SAM_FAMILY = ("vit_t", "vit_b", "vit_l", "vit_h")  # MobileSAM shares SAM's prompt encoder/decoder
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


class CachedEmbeddingsOnly(nn.Module):
    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the image encoder never runs inside a trial: embeddings come from the cache")


def build_headless(name: str) -> Sam:
    if name in TINY_CONFIGS:
        sam = build_tiny_sam(name)
        sam.image_encoder = CachedEmbeddingsOnly(TINY_CONFIGS[name].img_size)
        return sam
    if name not in SAM_FAMILY:
        raise ValueError(f"no decoder architecture registered for model {name!r}")
    return Sam(
        image_encoder=CachedEmbeddingsOnly(1024),  # type: ignore[arg-type]
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def decoder_state(sam: nn.Module) -> dict[str, torch.Tensor]:
    """The prompt-encoder + mask-decoder weights, in SAM's key layout."""
    return {
        k: v.detach().cpu().clone() for k, v in sam.state_dict().items() if k.startswith(DECODER_PREFIXES)
    }


def load_decoder_state(sam: Sam, state: dict[str, torch.Tensor]) -> None:
    """Strict for both parts: every decoder key must be present and match."""
    for part in ("prompt_encoder", "mask_decoder"):
        sub = {k[len(part) + 1 :]: v for k, v in state.items() if k.startswith(part + ".")}
        getattr(sam, part).load_state_dict(sub, strict=True)
