"""Where tensors run and in which precision: decided here and nowhere else.

CUDA when present, with bf16 autocast where the GPU supports it. On CPU, bf16 autocast only where
the CPU has AMX tiles (Intel Sapphire Rapids and later): there oneDNN runs bf16 matmuls ~8x faster
than fp32 (measured on one core: 847 vs 105 GFLOP/s, see benchmarks/README.md); on other CPUs bf16
is emulated and slower, so fp32. Even with AMX, bf16 pays on CPU only for SAM-sized decoders
(transformer width >= 256: vit_b step 1.7x faster); the tiny generalists' 64-wide decoder is
bound by small ops and runs ~10% slower in bf16 (benchmarks/README.md), so ``auto`` resolves per
model through ``DeviceChoice.for_decoder``. Losses and metrics stay in fp32 either way. Trials of
a sweep call ``select_device`` once; everything else takes the device it is given.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from specialsam.errors import UserError

CPU_BF16_MIN_DIM = 256
"""Narrowest decoder (transformer width) for which ``auto`` uses bf16 on an AMX CPU."""
BF16_ENCODER_MIN_SIDE = 1024
"""Smallest encoder input (px) for which ``auto`` encodes in bf16: SAM's ViTs and MobileSAM (vit_b
1.9x faster on an AMX core, benchmarks/README.md). The tiny generalists' 256-px encoders stay fp32
on every machine, so their embeddings and the numbers in their model card never depend on it."""


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    auto: bool = False  # precision was "auto": narrowed per model by for_decoder / for_encoder

    def _fp32_if(self, small_model: bool) -> DeviceChoice:
        """An ``auto`` choice narrowed to fp32 for a model too small to gain from bf16."""
        return DeviceChoice(self.device, None, auto=False) if self.auto and small_model else self

    def for_decoder(self, transformer_dim: int) -> DeviceChoice:
        """This choice for a decoder of the given width (auto bf16 on CPU only where it pays)."""
        return self._fp32_if(self.device.type == "cpu" and transformer_dim < CPU_BF16_MIN_DIM)

    def for_encoder(self, input_side: int) -> DeviceChoice:
        """This choice for an image encoder with the given input size (auto: bf16 for SAM-sized)."""
        return self._fp32_if(input_side < BF16_ENCODER_MIN_SIDE)

    @property
    def precision(self) -> str:
        """The name ``select_device`` accepts for this choice: fp32 or bf16."""
        return "fp32" if self.autocast_dtype is None else "bf16"

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
        if device.type == "cuda":
            bf16_ok = torch.cuda.is_bf16_supported()
        else:
            bf16_ok = cpu_has_amx_bf16()
        dtype = torch.bfloat16 if bf16_ok else None
    else:
        raise UserError(f"unknown precision {precision!r}; choose auto, fp32 or bf16")
    return DeviceChoice(device, dtype, auto=precision == "auto")


def cpu_has_amx_bf16() -> bool:
    """AMX tiles + AVX512-BF16: bf16 matmuls run natively (and fast) on this CPU."""
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    try:
        return bool(amx() and bf16())
    except RuntimeError:
        return False
