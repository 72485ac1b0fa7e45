"""The validated sweep configuration (``sweeps/<task>.yaml``).

A sweep config is YAML read with ``yaml.safe_load`` and validated by the pydantic models below
(``extra="forbid"`` everywhere, strict types: YAML already types its scalars). Every mistake is a
one-line :class:`~specialsam.errors.UserError` naming the file (or the ``--set`` override) and the
dotted key, with a "did you mean" suggestion for typos::

    sweeps/carpet.yaml: unknown setting 'search.spce' (did you mean 'search.space'?)
    sweeps/carpet.yaml: search.space.lr.low must be > 0 (got 0)
    --set search.num_samples=0: search.num_samples must be >= 1 (got 0)

Loading order (:func:`load_config`): the file, then its ``smoke:`` overrides (``--smoke`` only),
then the command line's ``--set KEY=VALUE`` overrides, then validation. The ``smoke:`` section is
checked on every load (applied to a copy), so a typo there shows up before anyone runs ``--smoke``.

The two phases a sweep runs:

* **search** (phase A): per model, ``search.num_samples`` trials at ``search.n_train`` training
  samples over ``search.space``. A parameter not named in ``search.space`` keeps its default:
  ``train.weight_decay`` for ``weight_decay``, :class:`specialsam.finetune.train.TrainConfig`'s default
  for the others (see :meth:`SweepConfig.base_params`).
* **curve** (phase B): per model, the best settings of phase A retrained at every
  ``curve.n_train`` for every ``curve.seeds`` seed, with no early stopping.

YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string; the loader turns such exponent-notation
strings back into numbers, in the file and in ``--set`` values alike. Non-finite numbers (``.inf``,
``.nan``, ``1e999``) are errors wherever they appear. YAML anchors and aliases (``&name``,
``*name``) are refused: a sweep config has no use for them, and a few hundred bytes of nested
aliases ("billion laughs") would otherwise expand into gigabytes, so reading any config is linear
in its size.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from specialsam.errors import UserError
from specialsam.models.registry import MODEL_NAMES
from specialsam.prompts import STRATEGIES
from specialsam.tasks import TASKS, task_module, task_options

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
"""Where the shipped sweep configs live (a source checkout: ``<repo>/sweeps``)."""

SPACE_KEYS: tuple[str, ...] = (
    "lr",
    "bce_weight",
    "dice_weight",
    "focal_weight",
    "point_fraction",
    "weight_decay",
)
"""The hyperparameters ``search.space`` may name (all fields of
:class:`specialsam.finetune.train.TrainConfig`)."""

LOSS_WEIGHTS = ("bce_weight", "dice_weight", "focal_weight")


# --------------------------------------------------------------------------------------- errors


class _Bad(ValueError):
    """A validation problem at ``<loc>.<key>`` (``key`` may be empty: the validator's own loc).

    ``text`` may contain ``{key}``, replaced by the full dotted key; ``candidates`` (for unknown
    keys) are the known names at that level, for a "did you mean" suggestion.
    """

    def __init__(self, key: str, text: str, candidates: Sequence[str] | None = None) -> None:
        super().__init__(text)
        self.key, self.text, self.candidates = key, text, candidates


def _dotted(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.startswith("["):
            out += p
        else:
            out += f".{p}" if out else str(p)
    return out


def _suggest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _unknown(full: str, candidates: Iterable[str]) -> str:
    head, _, last = full.rpartition(".")
    prefix = f"{head}." if head else ""
    cands = sorted(candidates)
    hint = _suggest(last, cands, prefix)
    if not hint and cands:
        hint = f" (known: {', '.join(cands)})"
    return f"unknown setting '{full}'{hint}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping of settings",
    "model_type": "a mapping of settings",
    "model_attributes_type": "a mapping of settings",
    "dataclass_type": "a mapping of settings",
    "none_required": "null",
    "finite_number": "a finite number",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _describe(err: dict[str, Any], loc: tuple[str | int, ...]) -> tuple[str, str]:
    """(full dotted key, one-line message) for one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    full = _dotted(loc)
    exc = ctx.get("error")
    if isinstance(exc, _Bad):
        full = _dotted((*loc, *exc.key.split("."))) if exc.key else full
        if exc.candidates is not None:
            return full, _unknown(full, exc.candidates) + exc.text.replace("{key}", full)
        return full, exc.text.replace("{key}", full)
    if kind == "extra_forbidden":
        return full, _unknown(full, _fields_at(tuple(str(p) for p in loc[:-1])))
    if kind == "missing":
        return full, f"{full} is required"
    got = f" (got {_short(err.get('input'))})"
    if kind in _TYPE_WORDS:
        return full, f"{full} must be {_TYPE_WORDS[kind]}{got}"
    for bound, sign in _BOUNDS.items():
        if bound in ctx and kind.startswith(("greater_than", "less_than")):
            return full, f"{full} must be {sign} {_num(ctx[bound])}{got}"
    if kind == "literal_error":
        return full, f"{full} must be one of {ctx.get('expected', '?')}{got}"
    if kind in ("too_short", "too_long"):
        return full, f"{full} {err['msg'].lower()}"
    msg = err["msg"].removeprefix("Value error, ")
    return full, f"{full}: {msg}{got}"


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


def _raise(exc: ValidationError, label_for: typing.Callable[[str], str]) -> None:
    errors = exc.errors(include_url=False)
    full, msg = _describe(errors[0], tuple(errors[0]["loc"]))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise UserError(f"{label_for(full)}: {msg}{more}") from None


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
    """Per-parameter bounds: lr > 0; loss weights and weight decay >= 0; point_fraction in [0, 1]."""
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
        if name == "point_fraction" and not 0 <= v <= 1:
            raise _Bad(f"{name}.{field}", f"{{key}} must be within [0, 1] (got {v:g})")


class TrainSettings(_Model):
    """Training settings every trial shares (not searched)."""

    epochs: int = Field(8, ge=1)
    max_steps: int = Field(300, ge=0)
    """Optimizer-step cap per trial; 0 = no cap (epochs alone decide)."""
    batch_size: int = Field(16, ge=1)
    micro_batch: int = Field(0, ge=0)
    """Samples per forward/backward chunk (gradients accumulated); 0 = auto (4 for SAM-sized
    embeddings on CPU, where whole batches are memory-bound; else the whole batch)."""
    patience: int = Field(3, ge=0)
    """Epochs without validation improvement before stopping; 0 = never (phase B never stops early)."""
    flip: bool = False
    """Double the training set with horizontal flips."""
    loss_res: int = 256
    """Resolution the loss is computed at; 0 = the model's full input size, else >= 64."""
    warmup_fraction: float = Field(0.05, ge=0, le=0.5)
    weight_decay: float = Field(1e-4, ge=0)
    """Used unless ``search.space.weight_decay`` is given."""

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
        return out

    def task_options(self) -> Any:
        """The task's ``Options`` instance built from ``data``."""
        return task_options(self.task, self.data)


@functools.cache
def _train_defaults() -> dict[str, float]:
    from specialsam.finetune.train import TrainConfig

    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    return {k: fields[k] for k in SPACE_KEYS}


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
            _, msg = _describe(err, ("data", key, *err["loc"]))
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


# --------------------------------------------------------------------------------------- loading

_EXP_FLOAT = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


class _NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` that stops at the first anchor or alias, before anything is expanded."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise UserError(
                f"YAML anchors and aliases (&name, *name) are not allowed (line {mark.line + 1}, "
                f"column {mark.column + 1}); write the values out"
            )
        return super().compose_node(parent, index)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` without anchors/aliases; work and memory are linear in ``len(text)``.

    Raises ``UserError`` (message without the source) for aliases and absurd nesting, and
    ``yaml.YAMLError`` for syntax errors."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise UserError("the YAML is nested too deeply; a sweep config needs a few levels at most") from None
    finally:
        loader.dispose()


class _NonFinite(ValueError):
    """A non-finite number at ``key`` (a dotted path inside the value being read)."""

    def __init__(self, key: str, value: float) -> None:
        super().__init__(key)
        self.key, self.value = key, value


def _yaml12_numbers(obj: Any, key: str = "") -> Any:
    """Turn exponent-notation strings PyYAML leaves as text (``1e-4``) into floats; a non-finite
    number anywhere (``.inf``, ``.nan``, ``1e999``) raises ``_NonFinite`` with its dotted key."""
    if isinstance(obj, str) and _EXP_FLOAT.match(obj.strip()):
        obj = float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        raise _NonFinite(key, obj)
    if isinstance(obj, dict):
        return {k: _yaml12_numbers(v, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_yaml12_numbers(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


MAX_CONFIG_BYTES = 1024**2
"""Largest sweep config read (the shipped ones are 2-6 KB)."""


def _read_yaml(path: Path) -> dict[str, Any]:
    shown = _display(path)
    try:
        with path.open("rb") as f:  # bounded: --config /dev/zero must not read forever
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise UserError(
                f"{shown}: larger than {MAX_CONFIG_BYTES // 1024**2} MB; a sweep config is a few KB "
                "(pass the sweep's YAML file)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{shown}: no such sweep config; pass an existing YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown}: cannot read the sweep config ({exc})") from None
    try:
        raw = _safe_load(text)
    except UserError as exc:
        raise UserError(f"{shown}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{shown}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{shown}: expected a mapping of settings (task: ..., search: ...), got {type(raw).__name__}"
        )
    try:
        return _yaml12_numbers(raw)
    except _NonFinite as exc:
        raise UserError(f"{shown}: {exc.key} must be a finite number (got {exc.value})") from None


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


def _apply(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    _resolve(parts, raw.get("task"))
    node = raw
    for name in parts[:-1]:
        nxt = node.get(name)
        if not isinstance(nxt, dict):
            nxt = {}
            node[name] = nxt
        node = nxt
    node[parts[-1]] = value


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``smoke:`` groups to dotted keys; a value that is not a mapping ends a key, and the
    task's ``data.*`` settings and the search space's entries are kept whole."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        parts = key.split(".")
        whole = (len(parts) >= 2 and parts[0] == "data") or (
            len(parts) >= 3 and parts[:2] == ["search", "space"]
        )
        if isinstance(v, dict) and v and not whole:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (VALUE read as YAML: ``4``, ``1e-4``, ``[tiny-s]``, ``null``) -> (key, value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    shown = f"--set {text if len(text) <= 80 else text[:77] + '...'}"
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"{shown}: expected KEY=VALUE with a dotted key, e.g. --set search.num_samples=4")
    try:
        parsed = _safe_load(value) if value.strip() else None
    except UserError as exc:
        raise UserError(f"{shown}: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{shown}: the value is not valid YAML ({problem})") from None
    try:
        return key, _yaml12_numbers(parsed, key)
    except _NonFinite as exc:
        raise UserError(f"{shown}: {exc.key} must be a finite number (got {exc.value})") from None


def _validate(raw: dict[str, Any], shown: str, sources: dict[str, tuple[str, str]]) -> SweepConfig:
    """Validate; ``sources`` maps each overridden dotted key to (label when the error is at that
    key, label when it is at a sibling key)."""

    def label_for(full: str) -> str:
        """Name where the offending value came from: the override that set it (or a setting under
        it), else the file, with the override that set a sibling setting when there is one."""

        def under(key: str, prefix: str) -> bool:
            return key == prefix or key.startswith((prefix + ".", prefix + "["))

        direct = [k for k in sources if under(full, k) or under(k, full)]
        if direct:
            return sources[max(direct, key=len)][0]
        siblings = [k for k in sources if "." in k and under(full, k.rpartition(".")[0])]
        if siblings:
            return sources[max(siblings, key=len)][1]
        return shown

    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        _raise(exc, label_for)
    raise AssertionError("unreachable")


def load_config(path: Path | str, overrides: Sequence[str] = (), smoke: bool = False) -> SweepConfig:
    """Read, override and validate a sweep config; every problem is a one-line ``UserError``.

    Order: the file, its ``smoke:`` section (only when ``smoke``), the ``overrides``
    (``KEY=VALUE`` strings, as ``--set`` gives them), then validation.
    """
    path = Path(path)
    shown = _display(path)
    raw = _read_yaml(path)
    smoke_raw = raw.get("smoke") or {}
    if not isinstance(smoke_raw, dict):
        raise UserError(
            f"{shown}: smoke must be a mapping of dotted keys to values (got {_short(smoke_raw)})"
        )
    smoke_items = _flatten(smoke_raw)

    def with_smoke(base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        out: dict[str, Any] = copy.deepcopy(base)
        sources: dict[str, tuple[str, str]] = {}
        for key, value in smoke_items.items():
            label = f"{shown} (smoke {key})"
            try:
                _apply(out, key, value)
            except UserError as exc:
                raise UserError(f"{label}: {exc}") from None
            sources[key] = (label, f"{shown} (with smoke {key})")
        return out, sources

    parsed = [(parse_override(text), f"--set {text.strip()}") for text in overrides]

    def build(use_smoke: bool) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        out, sources = with_smoke(raw) if use_smoke else (copy.deepcopy(raw), {})
        for (key, value), label in parsed:
            try:
                _apply(out, key, value)
            except UserError as exc:
                raise UserError(f"--set {key}: {exc}") from None
            sources[key] = (label, f"{shown} with {label}")
        return out, sources

    merged, sources = build(smoke)
    cfg = _validate(merged, shown, sources)
    if not smoke and smoke_items:
        # check the smoke: section now too, so a mistake there shows before anyone runs --smoke
        merged, sources = build(True)
        _validate(merged, shown, sources)
    return cfg


def default_config_path(task: str) -> Path:
    """The shipped sweep config of a task: ``<repo>/sweeps/<task>.yaml``."""
    if task not in TASKS:
        raise UserError(
            f"unknown task {task!r}{_suggest(task, TASKS)}; choose from {', '.join(sorted(TASKS))}"
        )
    path = SWEEPS_DIR / f"{task}.yaml"
    if not path.is_file():
        raise UserError(
            f"no shipped sweep config for task {task} ({path} is missing); "
            "write one (sweeps/carpet.yaml is a commented example) and pass its path"
        )
    return path


def config_to_dict(cfg: SweepConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (for MLflow params and the report); validates back
    to an equal config with ``SweepConfig.model_validate``."""
    return json.loads(cfg.model_dump_json())
