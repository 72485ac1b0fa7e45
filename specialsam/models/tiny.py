"""The tiny generalist: SAM's own ``Sam``/``PromptEncoder``/``MaskDecoder``/``TwoWayTransformer``
around a small image encoder, so the offline default is a real SAM-architecture model.

Why a conv encoder and not a scaled-down ViT: at 256 px on one CPU core a conv stem at stride 4
with residual stages and self-attention only at the 16x16 level trains to a useful generalist in
tens of minutes; a ViT of equal cost learns far slower from scratch. The two sizes share the
decoder (as SAM's vit_b/l/h do) and differ in encoder capacity, which mostly sits at 16x16 where
parameters are cheap in compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.modeling.common import LayerNorm2d
from torch import nn


@dataclass(frozen=True)
class TinyConfig:
    """Shape of one tiny generalist size."""

    widths: tuple[int, int, int]
    """Channels at stride 4, 8, 16."""
    depths: tuple[int, int, int]
    """Residual blocks at stride 4, 8, 16."""
    attn_blocks: int
    """Self-attention blocks at stride 16 (global context, as SAM's ViT has everywhere)."""
    embed_dim: int = 64
    """Decoder width = embedding channels (SAM: 256)."""
    img_size: int = 256

    @property
    def embedding_size(self) -> int:
        return self.img_size // 16


TINY_CONFIGS: dict[str, TinyConfig] = {
    "tiny-s": TinyConfig(widths=(32, 64, 128), depths=(1, 1, 1), attn_blocks=1),
    "tiny-m": TinyConfig(widths=(32, 64, 192), depths=(1, 1, 2), attn_blocks=1),
}


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(ch, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.bn2(self.conv2(self.conv1(x))))


class AttnBlock(nn.Module):
    """Pre-norm transformer block over the 16x16 tokens."""

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyImageEncoder(nn.Module):
    """Image (B,3,256,256), SAM-normalised -> embeddings (B, embed_dim, 16, 16)."""

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.img_size = cfg.img_size  # read by Sam.preprocess / postprocess_masks
        w1, w2, w3 = cfg.widths
        d1, d2, d3 = cfg.depths
        # Patchify stem (4x4, stride 4): 5x cheaper than two strided 3x3 convs at 128/64 px on CPU,
        # where memory-bound norm/activation at high resolution dominates.
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 4, 4, bias=False), nn.BatchNorm2d(w1), nn.GELU())
        self.stage1 = nn.Sequential(*[ResBlock(w1) for _ in range(d1)])
        self.down2 = ConvBNAct(w1, w2, 2)
        self.stage2 = nn.Sequential(*[ResBlock(w2) for _ in range(d2)])
        self.down3 = ConvBNAct(w2, w3, 2)
        self.stage3 = nn.Sequential(*[ResBlock(w3) for _ in range(d3)])
        side = cfg.embedding_size
        self.pos_embed = nn.Parameter(torch.zeros(1, side * side, w3))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.attn = nn.Sequential(*[AttnBlock(w3) for _ in range(cfg.attn_blocks)])
        # SAM's neck, verbatim in shape: 1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d.
        self.neck = nn.Sequential(
            nn.Conv2d(w3, cfg.embed_dim, 1, bias=False),
            LayerNorm2d(cfg.embed_dim),
            nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1, bias=False),
            LayerNorm2d(cfg.embed_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down2(x))
        x = self.stage3(self.down3(x))
        b, c, h, w = x.shape
        t = self.attn(x.flatten(2).transpose(1, 2) + self.pos_embed)
        return self.neck(t.transpose(1, 2).reshape(b, c, h, w))


def build_tiny_sam(name: str) -> Sam:
    """A randomly initialised tiny generalist in SAM's classes (weights are loaded by the registry)."""
    cfg = TINY_CONFIGS[name]
    dim, side = cfg.embed_dim, cfg.embedding_size
    return Sam(
        image_encoder=TinyImageEncoder(cfg),  # type: ignore[arg-type]
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(side, side),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=256, num_heads=4),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=64,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
