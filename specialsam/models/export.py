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
