"""The results the analysis reads and the verdict vocabulary it writes.

The sweep (and ``trial.py``) hand over plain per-image results: ``BaselineResult`` for a zero-shot
(model, prompt strategy), ``TrialResult`` for one fine-tuning trial. Per-image arrays of one task are
aligned by test-image index (``check_alignment``), which is what makes every gain *paired*. Verdicts
are one of ``VERDICTS``; the two overall verdicts travel to MLflow under ``TAG_BASELINE_RULE`` and
``TAG_DATA_RULE``. No plotting, no file writing here.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from specialsam.arms import arm_model

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
VERDICTS: tuple[str, ...] = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
TAG_BASELINE_RULE = "specialsam.verdict.baseline_rule"
TAG_DATA_RULE = "specialsam.verdict.data_rule"
TAG_BASELINE_RULE_CLICKS = TAG_BASELINE_RULE + ".clicks"
"""+ the click budget k: the baseline rule judged after k interactions (``analysis.clicks_rule``)."""
TAG_RECOMMENDED_METHOD = "specialsam.recommended_method"
"""The recommended arm's fine-tuning method (``analysis.methods``), ``none`` when the recommendation
is not to fine-tune; set only by sweeps that compared methods."""
TAG_METHOD_INFIX = ".method."
"""``TAG_BASELINE_RULE`` / ``TAG_DATA_RULE`` + this + a method: that rule judged over the method's arms."""

EXCLUDED_PARAM_KEYS = frozenset({"seed", "n_train", "model", "phase", "trial_id", "method"})
"""Keys ignored when grouping trials into configurations (they are the trial's own axes)."""


def as_iou_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    if arr.size == 0:
        raise ValueError(f"{what}: empty per-image IoU array")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: per-image IoU contains NaN or inf")
    return arr


@dataclass(eq=False)
class BaselineResult:
    """Zero-shot per-test-image IoU of one (model, prompt strategy)."""

    model: str
    prompt: str
    per_image_iou: np.ndarray
    per_category: dict[str, float] = field(default_factory=dict)  # category -> mIoU
    extra_miou: dict[str, float] = field(default_factory=dict)  # extra test set -> mIoU (primary only)
    clicks_iou: dict[int, np.ndarray] = field(default_factory=dict)
    """Interactive evaluation (primary prompt only): k -> per-image IoU after k interactions."""
    noc: dict[float, np.ndarray] = field(default_factory=dict)
    """IoU threshold -> per-image clicks to reach it (``max_clicks`` when never)."""
    max_clicks: int = 0

    def __post_init__(self) -> None:
        self.per_image_iou = as_iou_array(self.per_image_iou, f"baseline {self.model}/{self.prompt}")

    @property
    def miou(self) -> float:
        return float(self.per_image_iou.mean())


@dataclass(eq=False)
class TrialResult:
    """One fine-tuning trial: its axes, its test IoU per prompt strategy, its health."""

    trial_id: str
    model: str
    n_train: int
    seed: int
    params: dict[str, Any]
    per_image_iou: dict[str, np.ndarray]
    val_miou: float
    phase: str = "tune"
    health: str = "ok"
    retention_miou: float | None = None
    base_retention_miou: float | None = None
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # prompt -> category -> mIoU
    extra_miou: dict[str, float] = field(default_factory=dict)  # extra test set -> mIoU (primary prompt)
    default_config: bool = False
    """True for the phase-A trial that evaluates the default configuration (the spread's yardstick)."""
    clicks_iou: dict[int, np.ndarray] = field(default_factory=dict)  # as BaselineResult's (primary prompt)
    noc: dict[float, np.ndarray] = field(default_factory=dict)
    max_clicks: int = 0
    trial_seconds: float | None = None
    """Training + scoring wall time (the method table's cost column)."""
    trainable_params: int | None = None
    cache_bytes: int | None = None
    """Cache bytes per image the trial read (embeddings for decoder, activations for lora/full)."""

    def __post_init__(self) -> None:
        self.n_train = int(self.n_train)
        self.val_miou = float(self.val_miou) if self.val_miou is not None else float("nan")
        self.per_image_iou = {
            p: as_iou_array(v, f"trial {self.trial_id} prompt {p}") for p, v in self.per_image_iou.items()
        }

    @property
    def health_flags(self) -> list[str]:
        flags = [f.strip() for f in str(self.health or "ok").split(",") if f.strip()]
        return flags or ["ok"]

    def test_miou(self, prompt: str) -> float | None:
        arr = self.per_image_iou.get(prompt)
        return None if arr is None else float(arr.mean())


def per_arm(baselines: Sequence[BaselineResult], arms: Sequence[str]) -> list[BaselineResult]:
    """Each model's baselines once per arm of it (``specialsam.arms``), relabelled: every method
    starts from the same zero-shot model, and the rules judge each arm against it."""
    out = []
    for arm in arms:
        model = arm_model(arm)
        out += [dataclasses.replace(b, model=arm) for b in baselines if b.model == model]
    return out


def config_key(params: Mapping[str, Any]) -> str:
    """Canonical string of a trial's hyperparameters (its own axes excluded)."""
    kept = {k: params[k] for k in sorted(params) if k not in EXCLUDED_PARAM_KEYS}
    return json.dumps(kept, sort_keys=True, default=str)


def stable_seed(seed: int, *parts: object) -> int:
    """A per-cell RNG seed that does not depend on Python's salted hash()."""
    return (int(seed) * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**32)


def check_alignment(baselines: Sequence[BaselineResult], trials: Sequence[TrialResult]) -> int | None:
    sizes = {b.per_image_iou.size for b in baselines}
    sizes |= {a.size for t in trials for a in t.per_image_iou.values()}
    if len(sizes) > 1:
        raise ValueError(
            "per-image IoU arrays of one task must be aligned by test-image index; "
            f"found lengths {sorted(sizes)}"
        )
    return sizes.pop() if sizes else None


def overall_verdict(verdicts: Sequence[str]) -> str:
    """Overall verdict of decided cells or models: any contradiction wins, then any support."""
    if CONTRADICTED in verdicts:
        return CONTRADICTED
    if SUPPORTED in verdicts:
        return SUPPORTED
    return INCONCLUSIVE
