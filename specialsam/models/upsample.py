"""Bilinear upsampling of mask logits as two small matmuls.

Training computes its loss on the decoder's 64x64 logits upsampled to 256 px (or more). On CPU,
``F.interpolate``'s bilinear *backward* is a slow scalar kernel: for a batch of 16 it took
~20 ms per step, a sixth of the tiny models' whole decoder step. Bilinear interpolation is
separable and linear, so ``A_h @ x @ A_w.T`` with fixed interpolation matrices computes the same
values (to float rounding; tested against ``F.interpolate``) and its backward is two more
matmuls (~4 ms). See benchmarks/README.md for the measured step speed-up.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def interpolation_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) float32 matrix of ``F.interpolate(mode='bilinear', align_corners=False)``.

    PyTorch's source coordinate for output i is ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0;
    the two neighbours are its floor and floor + 1 (clamped at the last row)."""
    with torch.inference_mode(False):  # a cached constant must be usable by autograd later
        src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
        lo = src.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = src - lo
        rows = torch.arange(n_out)
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        m.index_put_((rows, lo), 1 - frac, accumulate=True)
        m.index_put_((rows, hi), frac, accumulate=True)
        return m.to(device=device, dtype=torch.float32)


def upsample_logits(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) logits -> (B, size, size) float32, bilinear (align_corners=False).

    Runs in float32 whatever autocast is active: the loss and the 0-threshold want full-precision
    logits (``F.interpolate`` under CPU autocast runs in float32 too)."""
    h, w = x.shape[-2:]
    if h == size and w == size:
        return x.float()
    with torch.autocast(device_type=x.device.type, enabled=False):
        a_h = interpolation_matrix(h, size, x.device)
        a_w = interpolation_matrix(w, size, x.device)
        return a_h @ x.float() @ a_w.T
