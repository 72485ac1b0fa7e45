"""Which parameters a fine-tuning *method* trains.

    decoder  the mask decoder alone, on cached final embeddings (the study's setting; train.py)
    lora     low-rank adapters on the last L encoder blocks (``targets`` among q, k, v, proj, mlp
             and, for the tiny generalists' residual blocks, conv) + the mask decoder
    full     the last L encoder blocks, everything after them up to and including the neck, and
             the mask decoder

The prompt encoder and everything before the first tuned block stay frozen; that frozen head runs
once per image (``finetune/activations.py``). Settings are checked against what the model has, each
problem a one-line ``UserError``; :data:`BLOCK_KINDS` lets a config be checked before any model
is built (``validate_method``), and ``prepare_method`` checks the built model itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from segment_anything.modeling import Sam
from torch import nn
from torch.nn.utils import parametrize

from specialsam.arms import METHODS
from specialsam.errors import UserError
from specialsam.models import lora
from specialsam.models.encoder_steps import (
    Step,
    encoder_family,
    encoder_steps,
    run_steps,
    tail_start,
)

METHOD_SEARCHABLE = ("rank",)
"""Method settings phase A may search (beside ``train.SEARCHABLE``)."""
DEFAULT_TARGETS = ("q", "v")
"""SAMed's choice: rank-4 adapters on the query and value projections."""

_KIND_TARGETS = {
    "vit": ("q", "k", "v", "proj", "mlp"),
    "res": ("conv",),
    "attn": ("q", "k", "v", "proj", "mlp"),
}
BLOCK_KINDS: dict[str, tuple[str, ...]] = {
    "tiny-s": ("res", "attn"),
    "tiny-m": ("res", "res", "attn"),
    "vit_t": ("vit",) * 10,
    "vit_b": ("vit",) * 12,
    "vit_l": ("vit",) * 24,
    "vit_h": ("vit",) * 32,
}
"""Each model's encoder blocks in order, by kind (what LoRA can target in them); tested against the
built models' ``encoder_steps``."""


@dataclass(frozen=True)
class MethodSettings:
    """One method and its settings (a sweep axis value plus what phase A searches)."""

    method: str = "decoder"
    blocks: int | None = None
    """L, the number of last encoder blocks tuned (None: all of them)."""
    rank: int = 4
    alpha: float | None = None
    """LoRA scaling numerator (delta = alpha / rank * B A); None: alpha = rank."""
    targets: tuple[str, ...] = DEFAULT_TARGETS
    seed: int = 0
    """Seed of the adapters' initial A."""

    @property
    def tunes_encoder(self) -> bool:
        return self.method != "decoder"

    def n_tuned(self, total_blocks: int) -> int:
        return total_blocks if self.blocks is None else self.blocks


def block_kinds(steps: Sequence[Step], family: str) -> tuple[str, ...]:
    """The kinds (``BLOCK_KINDS``' vocabulary) of a built encoder's block steps."""
    if family != "tiny":
        return tuple("vit" for s in steps if s.block)
    return tuple("attn" if hasattr(s.owns[0], "attn") else "res" for s in steps if s.block)


def validate_method(model: str, s: MethodSettings, kinds: Sequence[str] | None = None) -> None:
    """One-line UserError when ``s`` asks for something ``model``'s encoder does not have
    (its blocks: ``kinds``, default ``BLOCK_KINDS[model]``: no model needs to be built)."""
    if s.method not in METHODS:
        raise UserError(f"unknown fine-tuning method {s.method!r}; choose from {', '.join(METHODS)}")
    if not s.tunes_encoder:
        return
    kinds = tuple(kinds) if kinds is not None else BLOCK_KINDS.get(model)
    if kinds is None:
        raise UserError(
            f"method {s.method!r} does not know the image encoder of {model!r}; use method decoder"
        )
    n = s.n_tuned(len(kinds))
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(kinds):
        raise UserError(
            f"{model}'s image encoder has {len(kinds)} blocks; the tuned blocks L (method.blocks) "
            f"must be in [1, {len(kinds)}], got {s.blocks}"
        )
    if s.method != "lora":
        return
    if isinstance(s.rank, bool) or not isinstance(s.rank, int) or s.rank < 1:
        raise UserError(f"LoRA rank must be a whole number >= 1, got {s.rank}")
    if s.alpha is not None and not s.alpha > 0:
        raise UserError(f"LoRA alpha must be > 0, got {s.alpha}")
    if not s.targets:
        raise UserError(f"LoRA targets are empty; choose among {', '.join(lora.TARGETS)}")
    have = [t for t in lora.TARGETS if any(t in _KIND_TARGETS[k] for k in kinds[len(kinds) - n :])]
    bad = [t for t in s.targets if t not in have]
    if bad:
        raise UserError(
            f"LoRA target {bad[0]!r} (method.targets) is not in {model}'s last {n} encoder block(s); "
            f"targets there: {', '.join(have)}"
        )


def check_method(sam: Sam, model: str, s: MethodSettings) -> None:
    """``prepare_method``'s checks on a built model, leaving it untouched (the driver's input check)."""
    if not s.tunes_encoder:
        validate_method(model, s)
        return
    family = _check_encoder(sam, model, s)
    validate_method(model, s, block_kinds(encoder_steps(sam.image_encoder), family))


def count_params(plan: MethodPlan) -> int:
    """How many numbers the method trains (the method table's cost column)."""
    return int(sum(p.numel() for p in plan.params))


def _check_encoder(sam: Sam, model: str, s: MethodSettings) -> str:
    family = encoder_family(sam.image_encoder)
    if family is None:
        what = type(sam.image_encoder).__name__
        raise UserError(
            f"method {s.method!r} tunes the image encoder, but {model}'s encoder is missing ({what}): "
            "load the full checkpoint (a decoder-only or headless model can only use method decoder)"
        )
    return family


@dataclass
class MethodPlan:
    """A model prepared for one method: what trains, and where its encoder's tail begins."""

    settings: MethodSettings
    params: list[nn.Parameter]
    """Everything the optimizer updates (requires_grad True; all else False)."""
    steps: list[Step] = field(default_factory=list)
    start: int = 0
    """Index of the first tuned step (its input is what the activation cache holds)."""
    family: str | None = None

    @property
    def start_name(self) -> str:
        """The first tuned step's name: part of the activation cache key."""
        return self.steps[self.start].name if self.steps else ""

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part of the encoder: preprocessed images -> activations entering the tail."""
        return run_steps(self.steps, x, 0, self.start)

    def tail(self, x: torch.Tensor) -> torch.Tensor:
        """The tuned part: activations -> image embeddings (each LoRA-adapted weight computed once
        per call, however often its module reads it: ``nn.MultiheadAttention`` reads it repeatedly)."""
        with parametrize.cached():
            return run_steps(self.steps, x, self.start)


def prepare_method(sam: Sam, model: str, s: MethodSettings) -> MethodPlan:
    """Check ``s`` against the model, add LoRA adapters (method lora), freeze all but what the
    method trains; returns the plan. ``decoder`` needs no encoder (a headless model is fine)."""
    if s.method not in METHODS or not s.tunes_encoder:
        validate_method(model, s)
        for p in sam.parameters():
            p.requires_grad_(False)
        return _trainable(MethodPlan(s, list(sam.mask_decoder.parameters())))
    family = _check_encoder(sam, model, s)
    steps = encoder_steps(sam.image_encoder)
    kinds = block_kinds(steps, family)
    if model in BLOCK_KINDS and kinds != BLOCK_KINDS[model]:
        raise UserError(f"{model}'s image encoder has {len(kinds)} blocks, not those of a {model}")
    validate_method(model, s, kinds)
    for p in sam.parameters():
        p.requires_grad_(False)
    decoder = list(sam.mask_decoder.parameters())
    start = tail_start(steps, s.n_tuned(len(kinds)))
    if s.method == "full":
        tail = [p for st in steps[start:] for p in st.parameters()]
        return _trainable(MethodPlan(s, _unique(tail + decoder), steps, start, family))
    sites = lora.sites_for(steps[start:], family, s.targets)
    alpha = float(s.rank if s.alpha is None else s.alpha)
    adapters = lora.apply_lora(sites, s.rank, alpha, seed=s.seed)
    extra = [p for d in adapters for p in (d.lora_A, d.lora_B)]
    return _trainable(MethodPlan(s, extra + decoder, steps, start, family))


def _unique(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())


def _trainable(plan: MethodPlan) -> MethodPlan:
    for p in plan.params:
        p.requires_grad_(True)
    return plan


def trainable_names(sam: nn.Module, plan: MethodPlan) -> set[str]:
    """Names (``sam.named_parameters()``) of what ``plan`` trains."""
    ids = {id(p) for p in plan.params}
    return {n for n, p in sam.named_parameters() if id(p) in ids}


def tuned_state(sam: nn.Module, plan: MethodPlan) -> dict[str, torch.Tensor]:
    """A CPU copy of everything the method trains, by parameter name (kept per best epoch)."""
    ids = {id(p) for p in plan.params}
    return {n: p.detach().cpu().clone() for n, p in sam.named_parameters() if id(p) in ids}


def load_tuned_state(sam: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put back a ``tuned_state`` (strict on its names)."""
    params = dict(sam.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise KeyError(f"no parameter {missing[0]} in the model")
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def load_adapters(sam: Sam, model: str, path) -> MethodPlan:
    """Put a ``<stem>-lora.pt`` (``export_tuned``) back on a base model: adapters, then their weights."""
    from specialsam.models.lora import load_adapter_state

    blob = torch.load(path, weights_only=True)
    plan = prepare_method(sam, model, settings_from_record(blob["settings"]))
    load_adapter_state(sam, blob["state"])
    return plan


def settings_record(s: MethodSettings) -> dict:
    """The settings as plain values (adapter files, records)."""
    return {
        "method": s.method,
        "blocks": s.blocks,
        "rank": s.rank,
        "alpha": s.alpha,
        "targets": list(s.targets),
        "seed": s.seed,
    }


def settings_from_record(raw: dict) -> MethodSettings:
    """``settings_record``'s inverse (adapter files, trial records)."""
    return MethodSettings(**{**raw, "targets": tuple(raw.get("targets", DEFAULT_TARGETS))})
