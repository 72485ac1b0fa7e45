"""The record of one finished trial: the single schema of a trial's ``result.json``.

A trial writes it into its Tune checkpoint; the driver reads it back from there (or from the
trial's MLflow run, for ``--analyze-only``), logs it, exports from it and hands it to the rules.
Writing and reading go through :class:`TrialRecord` only, so a field is added in one place. The
JSON keys are the ones earlier sweeps wrote, so their stores stay readable.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from specialsam.finetune.clicks import InteractiveScores
from specialsam.finetune.evaluate import Scores

RESULT_FILE = "result.json"
AXES = ("model", "n_train", "seed")
"""A trial's own axes inside ``params`` (the rest are its hyperparameters)."""


@dataclass
class StrategyScores:
    """One prompt strategy's test scores, as stored (lists, not arrays: JSON)."""

    per_image_iou: list[float]
    keys: list[str]
    means: dict[str, float]
    per_category: dict[str, float] = field(default_factory=dict)
    skipped_empty: int = 0

    @classmethod
    def of(cls, scores: Scores) -> StrategyScores:
        return cls(
            per_image_iou=scores.per_image_iou.tolist(),
            keys=list(scores.keys),
            means=dict(scores.means),
            per_category=dict(scores.per_category),
            skipped_empty=int(scores.skipped_empty),
        )

    @property
    def miou(self) -> float | None:
        return float(np.mean(self.per_image_iou)) if self.per_image_iou else None


@dataclass
class TrialRecord:
    """What one finished (not failed, not early-stopped) trial produced."""

    params: dict[str, Any]  # searched/best values plus the axes model, n_train, seed
    phase: str
    history: list[dict[str, float]]
    best_epoch: int
    best_val_miou: float
    steps: int
    samples_seen: int
    health: str
    stopped_early: bool
    trial_seconds: float
    test: dict[str, StrategyScores]
    retention_miou: float | None = None
    extra_miou: dict[str, float] = field(default_factory=dict)
    node_id: str = ""
    interactive: dict[str, Any] | None = None  # InteractiveScores.to_dict() (primary strategy)
    method: dict[str, Any] | None = None
    """The fine-tuning method's settings (``methods.settings_record``); None: decoder-only (older records)."""
    trainable_params: int | None = None
    cache_bytes_per_image: int | None = None
    """Bytes per image of what the trial read instead of images: cached embeddings (decoder) or
    activations entering the first tuned block (lora, full; 0 when the frozen head ran in the trial)."""

    @property
    def model(self) -> str:
        return str(self.params["model"])

    def interactive_scores(self) -> InteractiveScores | None:
        return None if self.interactive is None else InteractiveScores.from_dict(self.interactive)

    @property
    def hyperparams(self) -> dict[str, Any]:
        """``params`` without the trial's own axes."""
        return {k: v for k, v in self.params.items() if k not in AXES}

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrialRecord:
        """A record as JSON-decoded; older records may lack the optional fields."""
        test = {s: StrategyScores(**v) for s, v in raw["test"].items()}
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw and k != "test"}
        known["extra_miou"] = known.get("extra_miou") or {}
        known["node_id"] = known.get("node_id") or ""
        return cls(**known, test=test)

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        return cls.from_dict(json.loads(text))

    def write(self, folder: Path) -> Path:
        path = folder / RESULT_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def read(cls, folder: Path) -> TrialRecord:
        return cls.from_json((folder / RESULT_FILE).read_text())
