"""Export a specialised model: a full SAM checkpoint in the official key layout + the decoder alone.

The full checkpoint is the base model with its mask decoder replaced, saved as ``state_dict()``
exactly as Meta's (and MobileSAM's) files are, so ``sam_model_registry[...](checkpoint=...)``,
``mobile_sam``'s registry, or our own ``load_model(..., checkpoint=..., allow_unverified=True)``
load it unchanged. The decoder-only file is small (what a sweep trains) for users who keep the
base checkpoint anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch

from specialsam.atomic import atomic_write_bytes
from specialsam.models.headless import load_decoder_state
from specialsam.models.registry import save_official


def export_specialised(
    sam, decoder_state: dict[str, torch.Tensor], out_dir: Path, stem: str
) -> tuple[Path, Path]:
    """Write ``<stem>.pth`` (full model) and ``<stem>-decoder.pt``; returns both paths."""
    import io

    out_dir.mkdir(parents=True, exist_ok=True)
    load_decoder_state(sam, decoder_state)
    full = out_dir / f"{stem}.pth"
    save_official(sam, full)
    buf = io.BytesIO()
    torch.save(decoder_state, buf)
    decoder = out_dir / f"{stem}-decoder.pt"
    atomic_write_bytes(decoder, buf.getvalue())
    return full, decoder


def export_tuned(
    sam, out_dir: Path, stem: str, lora_settings: dict | None = None
) -> tuple[Path, Path, Path | None]:
    """Export a LoRA / full fine-tune: ``<stem>.pth``, the whole model with every LoRA delta merged
    into its weights (official key layout: segment_anything's / mobile_sam's builders and
    ``load_model(..., checkpoint=...)`` load it), ``<stem>-decoder.pt`` and, when the model carries
    adapters, ``<stem>-lora.pt``: ``{"settings": lora_settings, "state": A and B}``, a few hundred KB
    that ``methods.load_adapters`` puts back on the base model. ``sam`` itself is left as it is."""
    from specialsam.models import checkpoints as ckpt
    from specialsam.models.headless import decoder_state
    from specialsam.models.lora import adapter_state_dict, merged_state_dict

    out_dir.mkdir(parents=True, exist_ok=True)
    full = out_dir / f"{stem}.pth"
    merged = {
        k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
        for k, v in merged_state_dict(sam).items()
    }
    ckpt.atomic_torch_save(merged, full)
    dec = out_dir / f"{stem}-decoder.pt"
    ckpt.atomic_torch_save(decoder_state(sam), dec)
    adapters = adapter_state_dict(sam)
    if not adapters:
        return full, dec, None
    lora = out_dir / f"{stem}-lora.pt"
    ckpt.atomic_torch_save({"settings": dict(lora_settings or {}), "state": adapters}, lora)
    return full, dec, lora
