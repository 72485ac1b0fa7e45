"""Where tensors run and in which precision: decided here and nowhere else.

CUDA when present (bf16 autocast where the GPU supports it: the decoder trains fine in bf16 and
runs ~2x faster), otherwise CPU in fp32 (bf16 on most CPUs is slower than fp32). Trials of a
sweep call ``select_device`` once; everything else takes the device it is given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from specialsam.errors import UserError


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32

    @property
    def precision(self) -> str:
        return "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)


def select_device(prefer: str = "auto", precision: str = "auto") -> DeviceChoice:
    """``prefer``: auto | cpu | cuda[:i]; ``precision``: auto | fp32 | bf16."""
    if prefer == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"device {prefer!r} requested but no CUDA GPU is visible; use --device cpu")
    if precision == "fp32":
        dtype = None
    elif precision == "bf16":
        dtype = torch.bfloat16
    elif precision == "auto":
        bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16_ok else None
    else:
        raise UserError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    return DeviceChoice(device, dtype)
