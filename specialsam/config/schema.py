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
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator, model_validator

from specialsam.arms import METHODS, arm_method, arm_name
from specialsam.config._text import _Bad, _check_names, _describe, _suggest, _unknown
from specialsam.config.sections import (
    SPACE_KEYS,
    CurveSettings,
    EvalSettings,
    MethodSettingsConfig,
    Param,
    ResourceSettings,
    RuleSettings,
    SearchSettings,
    StorageSettings,
    TrainSettings,
    _Model,
    _train_defaults,
    train_config,
)
from specialsam.errors import UserError
from specialsam.finetune.methods import MethodSettings
from specialsam.finetune.pipeline import Scoring
from specialsam.finetune.train import TrainConfig
from specialsam.models.registry import MODEL_NAMES
from specialsam.tasks import TASKS, task_module, task_options


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
        every = ", ".join(MODEL_NAMES)
        _check_names(v, MODEL_NAMES, "model", f"must list at least one model ({every})", "known models:")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        _check_names(v, METHODS, "method", f"must list at least one method ({', '.join(METHODS)})")
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

    def method_settings(self, arm: str) -> MethodSettings:
        """What ``arm``'s trials fine-tune (each trial sets its searched LoRA rank and its seed,
        which draws the adapters' initial A)."""
        m = self.method
        return MethodSettings(
            arm_method(arm), blocks=m.blocks, rank=m.rank, alpha=m.alpha, targets=tuple(m.targets)
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
