"""The sections of a sweep config (``train:``, ``search:``, ``curve:``, ``eval:``, ``method:``, ...).

Each is a pydantic model with ``extra="forbid"`` and strict types; validators raise
:class:`~specialsam.config._text._Bad` so the message names the dotted key. The whole config, and
the checks across sections, are :class:`specialsam.config.schema.SweepConfig`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from specialsam.config._text import _Bad, _check_counts, _check_names
from specialsam.finetune.clicks import CLICKS, MAX_CLICKS, NOC_THRESHOLDS
from specialsam.finetune.methods import DEFAULT_TARGETS
from specialsam.finetune.train import MAX_CLICK_ROUNDS, SEARCHABLE, TrainConfig
from specialsam.models import lora
from specialsam.models.registry import get_spec
from specialsam.prompts import STRATEGIES

LORA_TARGETS = lora.TARGETS
SPACE_KEYS = SEARCHABLE
"""The hyperparameters ``search.space`` may name (all fields of :class:`TrainConfig`)."""

LOSS_WEIGHTS = ("bce_weight", "dice_weight", "focal_weight")

_TRAIN_CONFIG_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

SWEEP_TRAIN_DEFAULTS: dict[str, int] = {"epochs": 8, "max_steps": 300}
"""Where ``train:`` differs on purpose from :class:`TrainConfig` (a single run: 10 epochs, no step
cap): a sweep budgets every trial in optimizer steps too, so trials of any ``n_train`` cost about
the same and the default sweep fits its time budget."""


def _train_default(name: str) -> Any:
    """The default of ``train.<name>``: the sweep's own budget, else TrainConfig's."""
    return SWEEP_TRAIN_DEFAULTS.get(name, _TRAIN_CONFIG_DEFAULTS[name])


# --------------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Param(_Model):
    """One searched (or fixed) hyperparameter. Shorthand in YAML: a number means ``fixed``, a
    list means ``choice``."""

    type: Literal["loguniform", "uniform", "choice", "fixed"]
    low: float | None = None
    high: float | None = None
    values: list[float] | None = None
    value: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, bool):
            return data  # rejected below as "a mapping of settings"
        if isinstance(data, (int, float)):
            return {"type": "fixed", "value": data}
        if isinstance(data, list):
            return {"type": "choice", "values": data}
        return data

    @model_validator(mode="after")
    def _check(self) -> Param:
        needs = {
            "loguniform": ("low", "high"),
            "uniform": ("low", "high"),
            "choice": ("values",),
            "fixed": ("value",),
        }[self.type]
        for name in ("low", "high", "values", "value"):
            given = getattr(self, name) is not None
            if name in needs and not given:
                raise _Bad(name, f"{{key}} is required for type {self.type}")
            if name not in needs and given:
                raise _Bad(name, f"{{key}} is not used by type {self.type}; remove it")
        if self.type in ("loguniform", "uniform"):
            assert self.low is not None and self.high is not None
            if self.type == "loguniform" and not self.low > 0:
                raise _Bad("low", f"{{key}} must be > 0 for a loguniform range (got {self.low:g})")
            if not self.low < self.high:
                raise _Bad("high", f"{{key}} must be > low (got low={self.low:g}, high={self.high:g})")
        if self.type == "choice" and not self.values:
            raise _Bad("values", "{key} must list at least one value")
        return self

    def candidates(self) -> list[float]:
        """The values this parameter can take (the two ends for a range)."""
        if self.type == "fixed":
            return [float(self.value)]  # type: ignore[arg-type]
        if self.type == "choice":
            return [float(v) for v in self.values or []]
        return [float(self.low), float(self.high)]  # type: ignore[arg-type]

    def can_be_zero(self) -> bool:
        """True when a trial can draw exactly 0 (a fixed 0 or a choice holding 0)."""
        return self.type in ("fixed", "choice") and 0.0 in self.candidates()


def _check_param_range(name: str, p: Param) -> None:
    """Per-parameter bounds: lr > 0; loss weights, weight decay >= 0; point/extreme fraction in [0, 1]."""
    where = {"fixed": "value", "choice": "values"}.get(p.type)
    checks: list[tuple[str, float]] = []  # (field, value)
    if where == "value":
        checks = [("value", float(p.value))]  # type: ignore[arg-type]
    elif where == "values":
        checks = [(f"values[{i}]", float(v)) for i, v in enumerate(p.values or [])]
    else:
        checks = [("low", float(p.low)), ("high", float(p.high))]  # type: ignore[arg-type]
    for field, v in checks:
        if name == "lr" and not v > 0:
            raise _Bad(f"{name}.{field}", f"{{key}} must be > 0 (got {v:g})")
        if name in (*LOSS_WEIGHTS, "weight_decay") and v < 0:
            raise _Bad(f"{name}.{field}", f"{{key}} must be >= 0 (got {v:g})")
        if name in ("point_fraction", "extreme_fraction") and not 0 <= v <= 1:
            raise _Bad(f"{name}.{field}", f"{{key}} must be within [0, 1] (got {v:g})")
        if name == "click_rounds" and not (float(v).is_integer() and 0 <= v <= MAX_CLICK_ROUNDS):
            bound = f"[0, {MAX_CLICK_ROUNDS}]"
            raise _Bad(f"{name}.{field}", f"{{key}} must be a whole number in {bound} (got {v:g})")
    if name == "click_rounds" and p.type in ("loguniform", "uniform"):
        raise _Bad(f"{name}.type", "{key} must be choice or fixed: click_rounds is a whole number")


class TrainSettings(_Model):
    """Training settings every trial shares (not searched)."""

    epochs: int = Field(_train_default("epochs"), ge=1)
    max_steps: int = Field(_train_default("max_steps"), ge=0)
    """Optimizer-step cap per trial; 0 = no cap (epochs alone decide)."""
    batch_size: int = Field(_train_default("batch_size"), ge=1)
    micro_batch: int = Field(_train_default("micro_batch"), ge=0)
    """Samples per forward/backward chunk (gradients accumulated); 0 = auto (4 for SAM-sized
    embeddings on CPU, where whole batches are memory-bound; else the whole batch)."""
    patience: int = Field(_train_default("patience"), ge=0)
    """Epochs without validation improvement before stopping; 0 = never (phase B never stops early)."""
    flip: bool = False
    """Double the training set with horizontal flips."""
    loss_res: int = 256
    """Resolution the loss is computed at; 0 = the model's full input size, else >= 64."""
    warmup_fraction: float = Field(_train_default("warmup_fraction"), ge=0, le=0.5)
    weight_decay: float = Field(_train_default("weight_decay"), ge=0)
    """Used unless ``search.space.weight_decay`` is given."""
    click_rounds: int = Field(_train_default("click_rounds"), ge=0, le=MAX_CLICK_ROUNDS)
    """Corrective-click rounds per training prompt (0: off); used unless ``search.space.click_rounds``
    is given."""

    @field_validator("loss_res")
    @classmethod
    def _loss_res(cls, v: int) -> int:
        if v != 0 and v < 64:
            raise _Bad("", f"{{key}} must be 0 (the model's input size) or >= 64 (got {v})")
        return v


class SchedulerSettings(_Model):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(1, ge=1)
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: float = Field(2.0, gt=1)


class SearcherSettings(_Model):
    type: Literal["optuna", "random"] = "optuna"
    seed: int = 0
    """Searcher seed; each model's search derives its own from it (``search_seed``)."""
    n_startup_trials: int | None = Field(None, ge=1)
    """Optuna: random trials before TPE models the results; None = half of ``search.num_samples``
    (Optuna's own default, 10, would leave a search of 6-8 trials random)."""


def _default_space() -> dict[str, Param]:
    return {"lr": Param(type="loguniform", low=1e-4, high=3e-3)}


class SearchSettings(_Model):
    """Phase A: tune hyperparameters at one reference training size, per model."""

    n_train: int = Field(500, ge=1)
    num_samples: int = Field(8, ge=1)
    """Trials per model."""
    space: dict[str, Param] = Field(default_factory=_default_space)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    searcher: SearcherSettings = Field(default_factory=SearcherSettings)

    @field_validator("space", mode="before")
    @classmethod
    def _known_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            for name in v:
                if name not in SPACE_KEYS:
                    raise _Bad(str(name), "", candidates=SPACE_KEYS)
        return v

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Param]) -> dict[str, Param]:
        if not space:
            raise _Bad("", f"{{key}} must name at least one of {', '.join(SPACE_KEYS)}")
        for name, p in space.items():
            _check_param_range(name, p)
        defaults = _train_defaults()

        def can_be_zero(name: str) -> bool:
            return space[name].can_be_zero() if name in space else defaults[name] == 0

        if all(can_be_zero(w) for w in LOSS_WEIGHTS):
            always = all(w not in space or set(space[w].candidates()) == {0.0} for w in LOSS_WEIGHTS)
            verb = "are both 0" if always else "can both be 0"
            focal = "" if "focal_weight" not in space else " (and so is focal_weight)"
            raise _Bad("", f"{{key}}: bce_weight and dice_weight {verb}{focal}: the loss would be empty")
        return space


class CurveSettings(_Model):
    """Phase B: the learning curve at the best settings found, no early stopping."""

    n_train: list[int] = Field(default_factory=lambda: [125, 250, 500, 1000, 2000, 4000, 8000])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])

    @field_validator("n_train")
    @classmethod
    def _sizes(cls, v: list[int]) -> list[int]:
        _check_counts(v, "training size")
        if len(set(v)) != len(v):
            dup = next(n for n in v if v.count(n) > 1)
            raise _Bad("", f"{{key}} lists {dup} twice; give each training size once")
        if v != sorted(v):
            raise _Bad("", f"{{key}} must be sorted ascending (got {v}; use {sorted(v)})")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise _Bad("", "{key} must list at least one seed")
        if len(set(v)) != len(v):
            raise _Bad("", f"{{key}} lists a seed twice (got {v})")
        return v


class EvalSettings(_Model):
    strategies: list[str] = Field(default_factory=lambda: ["center", "box", "random3"])
    """Prompt strategies every model is evaluated with (baseline and specialised)."""
    primary: str = "center"
    """The strategy the search optimises and the verdicts headline; one of ``strategies``."""
    mask_selection: Literal["single", "best_iou"] = "single"
    extra_metrics: bool = True
    """Boundary F1, S-alpha, E-phi and weighted F-beta on the test set."""
    retention_n: int = Field(200, ge=0)
    """Images of the general-purpose retention set; 0 disables the retention check."""
    clicks: list[int] = Field(default_factory=lambda: list(CLICKS))
    """Interactive evaluation: mIoU after these many interactions (1 = the strategy's own prompt,
    then simulated corrective clicks); [] with ``noc_thresholds: []`` turns it off."""
    noc_thresholds: list[float] = Field(default_factory=lambda: list(NOC_THRESHOLDS))
    """IoU thresholds of the number-of-clicks metric (NoC@85, NoC@90)."""
    max_clicks: int = Field(MAX_CLICKS, ge=1, le=100)
    """NoC cap: an image that never reaches a threshold counts this many clicks."""
    click_mask_prompt: Literal["auto"] | bool = "auto"
    """Feed the previous low-res logits back as SAM's mask prompt (the SAM paper's protocol); false:
    corrective points only. ``auto``: true for SAM and MobileSAM checkpoints, false for the tiny
    generalists, whose prompt encoder never saw a mask prompt in pretraining (fed back, their
    logits make every further click worse, unless trained with ``train.click_rounds``)."""

    def feeds_logits(self, model: str) -> bool:
        """``click_mask_prompt`` resolved for ``model``."""
        if self.click_mask_prompt != "auto":
            return bool(self.click_mask_prompt)
        return get_spec(model).family != "tiny"

    @field_validator("clicks")
    @classmethod
    def _clicks(cls, v: list[int]) -> list[int]:
        for i, k in enumerate(v):
            if not 1 <= k <= 100:
                raise _Bad(f"[{i}]", f"{{key}} must be a click count in [1, 100] (got {k})")
        if v != sorted(set(v)):
            raise _Bad("", f"{{key}} must be ascending without repeats (got {v}; use {sorted(set(v))})")
        return v

    @field_validator("noc_thresholds")
    @classmethod
    def _noc_thresholds(cls, v: list[float]) -> list[float]:
        for i, t in enumerate(v):
            if not 0 < t <= 1:
                raise _Bad(f"[{i}]", f"{{key}} must be an IoU in (0, 1] (got {t:g})")
        if len(set(v)) != len(v):
            raise _Bad("", f"{{key}} lists a threshold twice (got {v})")
        return v

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        _check_names(v, STRATEGIES, "prompt strategy", f"must list at least one of {', '.join(STRATEGIES)}")
        return v

    @model_validator(mode="after")
    def _primary(self) -> EvalSettings:
        if self.primary not in self.strategies:
            raise _Bad(
                "primary",
                f"{{key}} {self.primary!r} must be one of eval.strategies ({', '.join(self.strategies)})",
            )
        return self


class ResourceSettings(_Model):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, le=8)
    """Fractions share a GPU between trials (0.25: four trials per GPU)."""
    max_concurrent: int | None = Field(None, ge=1)
    """Cap on trials running at once; null = as many as the resources allow."""


class RuleSettings(_Model):
    threshold: float = Field(0.75, gt=0, lt=1)
    """Baseline rule: fine-tuning is predicted to help only below this baseline mIoU."""
    claimed_n: int = Field(5000, ge=1)
    """Data-volume rule: the claimed number of samples fine-tuning needs."""
    margin: float = Field(0.01, gt=0, lt=1)
    """Data-volume rule: mIoU difference below which two training-set sizes count as equivalent."""


class MethodSettingsConfig(_Model):
    """``method:``, the settings of the encoder-tuning methods (``methods: [.., lora, full]``).

    Checked against each model's encoder before anything runs (``finetune.methods.check_method``):
    L beyond a model's blocks or a LoRA target its blocks lack is a one-line error."""

    blocks: int | None = Field(None, ge=1)
    """L, the last encoder blocks tuned by lora / full; null = all of them."""
    ranks: list[int] = Field(default_factory=lambda: [2, 4, 8])
    """LoRA ranks phase A searches (one value: fixed)."""
    rank: int = Field(4, ge=1)
    """The LoRA rank of phase A's first (default-settings) trial; must be among ``ranks``."""
    alpha: float | None = Field(None, gt=0)
    """LoRA scaling numerator (delta = alpha / rank * B A); null = the rank (scale 1)."""
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS))
    """LoRA targets among q, k, v, proj, mlp (attention blocks) and conv (tiny residual blocks)."""
    cache_budget_gib: float = Field(32.0, ge=0)
    """Largest activation cache per (model, method); above it trials run the frozen blocks themselves."""

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, v: list[int]) -> list[int]:
        _check_counts(v, "LoRA rank", each="{key}: LoRA rank")
        return sorted(set(v))

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        _check_names(
            v,
            LORA_TARGETS,
            "LoRA target",
            f"must name at least one of {', '.join(LORA_TARGETS)}",
            unique=False,
        )
        return v

    @model_validator(mode="after")
    def _default_rank(self) -> MethodSettingsConfig:
        if self.rank not in self.ranks:
            raise _Bad("rank", f"{{key}} {self.rank} must be one of method.ranks ({self.ranks})")
        return self


class StorageSettings(_Model):
    cache_dir: str | None = None
    """Embedding cache (a path on shared storage on a cluster); null = the local default."""
    tune_dir: str | None = None
    """Ray Tune's storage path or URI (shared on a cluster); null = Ray's default."""


def _train_defaults() -> dict[str, float]:
    """TrainConfig's default of each searchable parameter."""
    return {k: _TRAIN_CONFIG_DEFAULTS[k] for k in SPACE_KEYS}


def train_config(train: TrainSettings, params: Mapping[str, float], n_train: int, seed: int) -> TrainConfig:
    """One trial's ``TrainConfig``: the shared ``train:`` settings that are TrainConfig fields, then
    ``params`` (the trial's searched or best values; a parameter missing here keeps TrainConfig's
    default, ``weight_decay`` keeps ``train.weight_decay``), then ``n_train`` and ``seed``."""
    shared = {k: v for k, v in train.model_dump().items() if k in _TRAIN_CONFIG_DEFAULTS}
    return TrainConfig(**{**shared, **params, "n_train": int(n_train), "seed": int(seed)})


# ------------------------------------------------------------------------------ task data check
