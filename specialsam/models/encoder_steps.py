"""An image encoder as an ordered list of steps, so its frozen head and its tuned tail can run apart.

LoRA and partial fine-tuning tune the *last L blocks* of an encoder. Everything before the first
tuned block is frozen and runs once per image (its output is cached, ``finetune/activations.py``);
a trial runs only the tail: the tuned blocks, whatever sits between them (TinyViT's patch
merging) and the neck. ``encoder_steps`` writes each supported encoder's ``forward`` as such a list,
step by step the same operations in the same order (tests check equality with ``forward``):

    SAM ViT (vit_b/l/h)  patch_embed (+ pos_embed), blocks.0 .. blocks.N-1, neck
    TinyViT (vit_t)      patch_embed, layers.0 (conv stage), then layers.1-3: their blocks, each
                         stage's downsample after its blocks; neck. Blocks: the 10 attention blocks.
    tiny generalists     stem .. down3 (conv, stride 4-8), stage3.* (stride-16 residual blocks),
                         tokens (+ pos_embed), attn.*, neck. Blocks: stage3.* and attn.*, the
                         stride-16 level where the tiny encoders hold most of their parameters.

A step marked ``block`` counts towards L; the others (stem, downsamples, token reshape, neck) are
never counted but belong to the tail when they come after its first block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

FAMILIES = ("sam_vit", "tiny_vit", "tiny")


@dataclass(frozen=True)
class Step:
    """One stage of an encoder's forward pass."""

    name: str
    """Its module path under ``image_encoder`` (``blocks.11``, ``layers.2.downsample``, ``neck``)."""
    run: Callable[[torch.Tensor], torch.Tensor]
    owns: tuple[nn.Module | nn.Parameter, ...]
    """What holds its parameters (modules, or bare parameters such as a position embedding)."""
    block: bool = False
    """A transformer / residual block that counts towards the tuned depth L."""

    def parameters(self) -> list[nn.Parameter]:
        out: list[nn.Parameter] = []
        for o in self.owns:
            out.extend([o] if isinstance(o, nn.Parameter) else o.parameters())
        return out


def encoder_family(encoder: nn.Module) -> str | None:
    """sam_vit | tiny_vit | tiny, or None for an encoder these steps do not know (or none at all)."""
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    from specialsam.models.tiny import TinyImageEncoder

    if isinstance(encoder, ImageEncoderViT):
        return "sam_vit"
    if isinstance(encoder, TinyImageEncoder):
        return "tiny"
    if type(encoder).__name__ == "TinyViT" and hasattr(encoder, "layers"):  # mobile_sam's class
        return "tiny_vit"
    return None


def _sam_vit_steps(enc: nn.Module) -> list[Step]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        x = enc.patch_embed(x)
        return x if enc.pos_embed is None else x + enc.pos_embed

    owns = (enc.patch_embed,) + (() if enc.pos_embed is None else (enc.pos_embed,))
    steps = [Step("patch_embed", embed, owns)]
    steps += [Step(f"blocks.{i}", b, (b,), block=True) for i, b in enumerate(enc.blocks)]
    steps.append(Step("neck", lambda x: enc.neck(x.permute(0, 3, 1, 2)), (enc.neck,)))
    return steps


def _tiny_vit_steps(enc: nn.Module) -> list[Step]:
    steps = [Step("patch_embed", enc.patch_embed, (enc.patch_embed,))]
    steps.append(Step("layers.0", enc.layers[0], (enc.layers[0],)))  # MBConv stage + its downsample
    for i, layer in enumerate(enc.layers[1:], start=1):
        steps += [Step(f"layers.{i}.blocks.{j}", b, (b,), block=True) for j, b in enumerate(layer.blocks)]
        if layer.downsample is not None:
            steps.append(Step(f"layers.{i}.downsample", layer.downsample, (layer.downsample,)))

    def neck(x: torch.Tensor) -> torch.Tensor:  # TinyViT.forward_features' own reshape
        b, _, c = x.size()
        return enc.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2))

    steps.append(Step("neck", neck, (enc.neck,)))
    return steps


def _tiny_steps(enc: nn.Module) -> list[Step]:
    steps = [
        Step(n, getattr(enc, n), (getattr(enc, n),)) for n in ("stem", "stage1", "down2", "stage2", "down3")
    ]
    steps += [Step(f"stage3.{i}", b, (b,), block=True) for i, b in enumerate(enc.stage3)]

    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2) + enc.pos_embed

    steps.append(Step("tokens", tokens, (enc.pos_embed,)))
    steps += [Step(f"attn.{i}", b, (b,), block=True) for i, b in enumerate(enc.attn)]
    side = enc.pos_embed.shape[1]

    def neck(t: torch.Tensor) -> torch.Tensor:
        b, n, c = t.shape
        h = int(round(n**0.5))
        assert h * h == n == side
        return enc.neck(t.transpose(1, 2).reshape(b, c, h, h))

    steps.append(Step("neck", neck, (enc.neck,)))
    return steps


def encoder_steps(encoder: nn.Module) -> list[Step]:
    """The encoder's forward as steps; ValueError for an encoder of unknown kind."""
    family = encoder_family(encoder)
    if family == "sam_vit":
        return _sam_vit_steps(encoder)
    if family == "tiny_vit":
        return _tiny_vit_steps(encoder)
    if family == "tiny":
        return _tiny_steps(encoder)
    raise ValueError(f"no step list for image encoder {type(encoder).__name__}")


def block_indices(steps: Sequence[Step]) -> list[int]:
    """Positions of the block steps."""
    return [i for i, s in enumerate(steps) if s.block]


def tail_start(steps: Sequence[Step], n_tuned: int) -> int:
    """Index of the step that is the first of the last ``n_tuned`` blocks (1 <= n_tuned <= blocks)."""
    blocks = block_indices(steps)
    if not 1 <= n_tuned <= len(blocks):
        raise ValueError(f"n_tuned must be in [1, {len(blocks)}], got {n_tuned}")
    return blocks[len(blocks) - n_tuned]


def run_steps(
    steps: Sequence[Step], x: torch.Tensor, start: int = 0, stop: int | None = None
) -> torch.Tensor:
    """``steps[start:stop]`` applied in turn."""
    for s in steps[start:stop]:
        x = s.run(x)
    return x


def tail_train_mode(encoder: nn.Module, on: bool) -> None:
    """Keep the encoder in eval mode (BatchNorm statistics frozen, no dropout) but let TinyViT's
    attention read its live ``attention_biases``: in eval mode it reads a copy (``ab``) taken when
    ``eval()`` was called, through which no gradient flows and which a tuned bias would leave
    stale. ``on=False`` puts those modules back in eval mode, refreshing ``ab``."""
    for m in encoder.modules():
        if hasattr(m, "attention_biases") and hasattr(m, "attention_bias_idxs"):
            if on:
                m.training = True  # only Attention.forward's bias branch reads it; no side effects
            else:
                m.train(False)
