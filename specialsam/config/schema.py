"""The sweep config's schema: the pydantic models a ``sweeps/<task>.yaml`` validates against.

``extra="forbid"`` everywhere and strict types (YAML already types its scalars); each validator
raises :class:`~specialsam.config._text._Bad` so the message names the dotted key (see
:mod:`specialsam.config._text`). The two phases a sweep runs:

* **search** (phase A): per model, ``search.num_samples`` trials at ``search.n_train`` training
  samples over ``search.space``. A parameter not named in ``search.space`` keeps its default:
  ``train.weight_decay`` for ``weight_decay``, :class:`specialsam.finetune.train.TrainConfig`'s default
  for the others (see :meth:`SweepConfig.base_params`).
* **curve** (phase B): per model, the best settings of phase A retrained at every
  ``curve.n_train`` for every ``curve.seeds`` seed, with no early stopping.

Training defaults have one owner, :class:`~specialsam.finetune.train.TrainConfig`: ``train:``
takes its defaults from there, except the trial budget (:data:`SWEEP_TRAIN_DEFAULTS`).
:func:`train_config` turns ``train:`` plus a trial's searched values into the ``TrainConfig`` it runs.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from specialsam.arms import METHODS, arm_method, arm_name
from specialsam.config._text import _Bad, _describe, _suggest, _unknown
from specialsam.errors import UserError
from specialsam.finetune.clicks import CLICKS, MAX_CLICKS, NOC_THRESHOLDS
from specialsam.finetune.methods import DEFAULT_TARGETS, MethodSettings
from specialsam.finetune.pipeline import Scoring
from specialsam.finetune.train import MAX_CLICK_ROUNDS, SEARCHABLE, TrainConfig
from specialsam.models import lora
from specialsam.models.registry import MODEL_NAMES, get_spec
from specialsam.prompts import STRATEGIES
from specialsam.tasks import TASKS, task_module, task_options

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
        if not v:
            raise _Bad("", "{key} must list at least one training size")
        for i, n in enumerate(v):
            if n < 1:
                raise _Bad(f"[{i}]", f"{{key}} must be >= 1 (got {n})")
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
        if not v:
            raise _Bad("", f"{{key}} must list at least one of {', '.join(STRATEGIES)}")
        for i, s in enumerate(v):
            if s not in STRATEGIES:
                hint = _suggest(s, STRATEGIES)
                raise _Bad(
                    f"[{i}]",
                    f"{{key}}: unknown prompt strategy {s!r}{hint}; choose from {', '.join(STRATEGIES)}",
                )
        if len(set(v)) != len(v):
            raise _Bad("", f"{{key}} lists a strategy twice (got {v})")
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
        if not v:
            raise _Bad("", "{key} must list at least one LoRA rank")
        for i, r in enumerate(v):
            if r < 1:
                raise _Bad(f"[{i}]", f"{{key}}: LoRA rank must be >= 1 (got {r})")
        return sorted(set(v))

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str]) -> list[str]:
        if not v:
            raise _Bad("", f"{{key}} must name at least one of {', '.join(LORA_TARGETS)}")
        for i, t in enumerate(v):
            if t not in LORA_TARGETS:
                raise _Bad(
                    f"[{i}]",
                    f"{{key}}: unknown LoRA target {t!r}{_suggest(t, LORA_TARGETS)}; "
                    f"choose from {', '.join(LORA_TARGETS)}",
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


class SweepConfig(_Model):
    task: str
    data_root: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    """The task's ``Options`` (see specialsam/tasks/<task>.py); validated on load."""
    models: list[str] = Field(default_factory=lambda: ["tiny-s", "tiny-m"])
    methods: list[str] = Field(default_factory=lambda: ["decoder"])
    """The method axis: each model is tuned and judged per method (``specialsam.arms``)."""
    method: MethodSettingsConfig = Field(default_factory=MethodSettingsConfig)
    seed: int = 0
    """Seed of the task's train/val/test split."""
    train: TrainSettings = Field(default_factory=TrainSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    curve: CurveSettings = Field(default_factory=CurveSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    resources: ResourceSettings = Field(default_factory=ResourceSettings)
    rules: RuleSettings = Field(default_factory=RuleSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    smoke: dict[str, Any] = Field(default_factory=dict)
    """Dotted-key overrides ``--smoke`` applies (a tiny sweep that checks the wiring)."""

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in TASKS:
            raise _Bad(
                "", f"{{key}}: unknown task {v!r}{_suggest(v, TASKS)}; choose from {', '.join(sorted(TASKS))}"
            )
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        if not v:
            raise _Bad("", f"{{key}} must list at least one model ({', '.join(MODEL_NAMES)})")
        for i, m in enumerate(v):
            if m not in MODEL_NAMES:
                raise _Bad(
                    f"[{i}]",
                    f"{{key}}: unknown model {m!r}{_suggest(m, MODEL_NAMES)}; known models: "
                    f"{', '.join(MODEL_NAMES)}",
                )
        if len(set(v)) != len(v):
            raise _Bad("", f"{{key}} lists a model twice (got {v})")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        if not v:
            raise _Bad("", f"{{key}} must list at least one method ({', '.join(METHODS)})")
        for i, m in enumerate(v):
            if m not in METHODS:
                raise _Bad(
                    f"[{i}]",
                    f"{{key}}: unknown method {m!r}{_suggest(m, METHODS)}; choose from {', '.join(METHODS)}",
                )
        if len(set(v)) != len(v):
            raise _Bad("", f"{{key}} lists a method twice (got {v})")
        return [m for m in METHODS if m in v]

    @model_validator(mode="after")
    def _cross(self) -> SweepConfig:
        _check_data(self.task, self.data)
        sched = self.search.scheduler
        if sched.type == "asha" and sched.grace_period > self.train.epochs:
            raise _Bad(
                "search.scheduler.grace_period",
                f"{{key}} must be <= train.epochs (got {sched.grace_period} > {self.train.epochs})",
            )
        return self

    def arms(self) -> list[str]:
        """Every (model, method) the sweep tunes, as labels (``arms.arm_name``), model by model."""
        return [arm_name(m, method) for m in self.models for method in self.methods]

    def method_settings(self, arm: str, rank: int | None = None, seed: int = 0) -> MethodSettings:
        """What ``arm``'s trials fine-tune (``rank``: a trial's searched LoRA rank; ``seed``: its
        seed, which draws the adapters' initial A)."""
        method = arm_method(arm)
        m = self.method
        return MethodSettings(
            method,
            blocks=m.blocks,
            rank=int(m.rank if rank is None else rank),
            alpha=m.alpha,
            targets=tuple(m.targets),
            seed=int(seed),
        )

    def method_space(self, arm: str) -> dict[str, list[int]]:
        """Phase A's method settings to search for ``arm`` (LoRA: its rank), as choices."""
        searched = arm_method(arm) == "lora" and len(self.method.ranks) > 1
        return {"rank": list(self.method.ranks)} if searched else {}

    def arm_default_point(self, arm: str) -> dict[str, float] | None:
        """``default_point`` plus the arm's default method settings (LoRA: ``method.rank``)."""
        point = self.default_point()
        if point is None or not self.method_space(arm):
            return point
        return {**point, "rank": self.method.rank}

    def activation_budget(self) -> int:
        """``method.cache_budget_gib`` in bytes."""
        return int(self.method.cache_budget_gib * 2**30)

    def curve_max_n(self) -> int:
        """The largest training size of the learning curve (phase B)."""
        return max(self.curve.n_train)

    def max_n_train(self) -> int:
        """The largest training size the sweep asks for (phase A's ``search.n_train`` included)."""
        return max(self.curve_max_n(), self.search.n_train)

    def base_params(self) -> dict[str, float]:
        """Each searchable parameter's value when ``search.space`` does not name it."""
        out = {k: float(v) for k, v in _train_defaults().items()}
        out["weight_decay"] = float(self.train.weight_decay)
        out["click_rounds"] = float(self.train.click_rounds)
        return out

    def default_point(self) -> dict[str, float] | None:
        """The searched parameters at their defaults (``base_params``): phase A's first trial, so the
        report can tell whether tuning mattered; None when a default lies outside the space."""
        point = {}
        base = self.base_params()
        for name, p in self.search.space.items():
            if p.type == "fixed":
                continue
            v = base[name]
            inside = v in (p.values or []) if p.type == "choice" else p.low <= v <= p.high
            if not inside:
                return None
            point[name] = v
        return point or None

    def scoring(self, model: str) -> Scoring:
        """How this sweep scores ``model``'s baselines and trials (``eval:``)."""
        e = self.eval
        return Scoring(
            tuple(e.strategies),
            e.primary,
            e.mask_selection,
            e.extra_metrics,
            clicks=tuple(e.clicks),
            noc_thresholds=tuple(e.noc_thresholds),
            max_clicks=e.max_clicks,
            feed_logits=e.feeds_logits(model),
        )

    def click_protocol(self) -> str:
        """The interactive protocol of every model, in words (one phrase when they agree)."""
        phrases = {m: self.scoring(m).protocol() for m in self.models}
        if len(set(phrases.values())) == 1:
            return next(iter(phrases.values()))
        return "; ".join(f"{m}: {p}" for m, p in phrases.items())

    def startup_trials(self) -> int:
        """Optuna's random start: ``search.searcher.n_startup_trials``, else half the trials."""
        given = self.search.searcher.n_startup_trials
        return given if given is not None else max(1, self.search.num_samples // 2)

    def task_options(self) -> Any:
        """The task's ``Options`` instance built from ``data``."""
        return task_options(self.task, self.data)

    def train_config(self, params: Mapping[str, float], n_train: int, seed: int) -> TrainConfig:
        """The ``TrainConfig`` of one trial of this sweep (see :func:`train_config`)."""
        return train_config(self.train, params, n_train, seed)


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


def _check_data(task: str, data: dict[str, Any]) -> None:
    """``data:`` against the task's ``Options``: known keys, value types, then the task's own checks."""
    module = task_module(task)
    cls = module.Options
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise _Bad(f"data.{key}", f" for task {task}", candidates=known)
    try:
        hints = typing.get_type_hints(cls, vars(module))
    except Exception:  # an annotation that does not resolve: leave the types to the task's checks
        hints = {}
    for key, value in data.items():
        if key not in hints:
            continue
        try:
            TypeAdapter(hints[key]).validate_python(value, strict=True)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            _, msg = _describe(err, ("data", key, *err["loc"]), _fields_at)
            raise _Bad(f"data.{key}", msg.replace(f"data.{key}", "{key}", 1)) from None
    try:
        options = task_options(task, data)
        for name in ("check_options", "_check_options", "_validate"):
            check = getattr(module, name, None)
            if callable(check):
                check(options)
                break
    except (UserError, TypeError, ValueError) as exc:
        raise _Bad("data", str(exc)) from None


# ------------------------------------------------------------------------------ dotted keys


def _resolve(parts: Sequence[str], task: Any) -> Any:
    """Walk a dotted key through the schema; returns the node it lands on (a model class,
    ``"space"``, ``"free"`` or ``"leaf"``). Unknown names raise ``UserError`` (message only)."""
    node: Any = SweepConfig
    for i, name in enumerate(parts):
        here = ".".join(parts[: i + 1])
        if isinstance(node, type) and issubclass(node, BaseModel):
            fields = node.model_fields
            if name not in fields:
                raise UserError(_unknown(here, fields))
            ann = fields[name].annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                node = ann
            elif node is SearchSettings and name == "space":
                node = "space"
            elif node is SweepConfig and name == "data":
                node = "data"
            elif node is SweepConfig and name == "smoke":
                node = "free"
            else:
                node = "leaf"
        elif node == "space":
            if name not in SPACE_KEYS:
                raise UserError(_unknown(here, SPACE_KEYS))
            node = Param
        elif node == "data":
            if isinstance(task, str) and task in TASKS:
                known = [f.name for f in dataclasses.fields(task_module(task).Options)]
                if name not in known:
                    raise UserError(_unknown(here, known) + f" for task {task}")
            node = "free"
        elif node == "free":
            continue
        else:  # leaf
            parent = ".".join(parts[:i])
            raise UserError(f"'{parent}' is a single setting, so '{here}' does not exist")
    return node


def _fields_at(parts: tuple[str, ...]) -> list[str]:
    """Known setting names directly under the dotted key ``parts`` (for suggestions)."""
    try:
        node = _resolve(parts, task=None)
    except UserError:
        return []
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    if node == "space":
        return list(SPACE_KEYS)
    return []
