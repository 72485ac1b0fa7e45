"""One trial's pipeline: score the decoder, fine-tune it, score it again.

``python -m specialsam.trial``, the sweep's Tune trainable and the sweep's baselines all score a
decoder through :func:`score_decoder` (test set per prompt strategy, retention on the general-purpose
scenes, extra test sets) and train through :func:`specialise`, so a baseline and a specialised
decoder differ only by their weights. No Ray and no MLflow here: callers report and log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice
from specialsam.finetune.clicks import InteractiveScores, interactive_scores
from specialsam.finetune.evaluate import Scores, score_split
from specialsam.finetune.pack import EXTRA_PREFIX, Pack
from specialsam.finetune.records import StrategyScores, TrialRecord
from specialsam.finetune.train import TrainConfig, TrainResult, train_decoder


@dataclass(frozen=True)
class Scoring:
    """How decoders are scored: the test set's prompt strategies (``primary`` first among them is
    the one the rules read), SAM's mask output and whether the extra metrics are computed."""

    strategies: tuple[str, ...]
    primary: str
    mask_selection: str = "single"
    extra_metrics: bool = False
    clicks: tuple[int, ...] = ()
    """Click budgets of the interactive evaluation (primary strategy); () with no thresholds: off."""
    noc_thresholds: tuple[float, ...] = ()
    max_clicks: int = 20
    feed_logits: bool = True
    """Corrective clicks feed the previous logits back as SAM's mask prompt (the SAM paper's protocol)."""

    @property
    def interactive(self) -> bool:
        return bool(self.clicks or self.noc_thresholds)

    def protocol(self) -> str:
        """The interactive protocol in words, for tags and the report."""
        feed = "previous logits as mask prompt" if self.feed_logits else "points only"
        return f"{self.primary} then corrective clicks (farthest from the error boundary), {feed}"


@dataclass
class DecoderScores:
    """A decoder's scores. Retention and the extra test sets use the primary strategy only."""

    test: dict[str, Scores]
    retention: Scores | None = None
    extra: dict[str, Scores] = field(default_factory=dict)  # extra test set name -> scores
    interactive: InteractiveScores | None = None  # primary strategy's corrective clicking

    @property
    def retention_miou(self) -> float | None:
        return None if self.retention is None else self.retention.miou

    @property
    def extra_miou(self) -> dict[str, float]:
        return {name: s.miou for name, s in self.extra.items()}


def score_decoder(
    sam: Sam,
    pack: Pack,
    scoring: Scoring,
    dev: DeviceChoice,
    strategies: Sequence[str] | None = None,
) -> DecoderScores:
    """Score ``sam``'s current decoder on the pack's test set (``strategies``, default all of
    ``scoring``'s; interactive clicking too when the primary is among them), the retention scenes
    and the extra test sets. Retention keeps SAM's single-mask output whatever ``mask_selection``
    says: it asks "did the decoder forget?", not "which mask"."""
    primary = scoring.primary
    wanted = list(scoring.strategies if strategies is None else strategies)
    test = {}
    if wanted:
        test = score_split(
            sam, pack.split("test"), wanted, scoring.mask_selection, scoring.extra_metrics, dev
        )
    retention = None
    if pack.has("retention"):
        retention = score_split(sam, pack.split("retention"), [primary], dev=dev)[primary]
    extra = {
        name: score_split(sam, pack.split(EXTRA_PREFIX + name), [primary], scoring.mask_selection, dev=dev)[
            primary
        ]
        for name in pack.extra_tests
    }
    clicking = None
    if scoring.interactive and primary in wanted:
        clicking = interactive_scores(
            sam,
            pack.split("test"),
            primary,
            scoring.clicks,
            scoring.noc_thresholds,
            scoring.max_clicks,
            scoring.mask_selection,
            dev,
            feed_logits=scoring.feed_logits,
        )
    return DecoderScores(test, retention, extra, clicking)


@dataclass
class Specialised:
    """A fine-tuned decoder's training result and scores (``seconds``: training plus scoring)."""

    train: TrainResult
    scores: DecoderScores
    seconds: float


def specialise(
    sam: Sam,
    pack: Pack,
    cfg: TrainConfig,
    scoring: Scoring,
    dev: DeviceChoice,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    fault_hook: Callable[[int], None] | None = None,
) -> Specialised:
    """Fine-tune ``sam``'s decoder in place on the pack's training split, then score it.

    Raises ``TrainingFailed`` when training cannot go on (the caller reports the trial failed)."""
    t0 = time.time()
    result = train_decoder(sam, pack, cfg, dev, on_epoch=on_epoch, fault_hook=fault_hook)
    scores = score_decoder(sam, pack, scoring, dev)
    return Specialised(result, scores, time.time() - t0)


def trial_record(
    out: Specialised, params: dict, phase: str, cfg: TrainConfig, model: str, node_id: str = ""
) -> TrialRecord:
    """The record a trial leaves: its settings, training history, health and test scores."""
    r = out.train
    kept = ("history", "best_epoch", "best_val_miou", "steps", "samples_seen", "stopped_early")
    return TrialRecord(
        **{k: getattr(r, k) for k in kept},
        params={**params, "n_train": cfg.n_train, "seed": cfg.seed, "model": model},
        phase=phase,
        health=r.health_tag,
        trial_seconds=out.seconds,
        test={s: StrategyScores.of(sc) for s, sc in out.scores.test.items()},
        retention_miou=out.scores.retention_miou,
        extra_miou=out.scores.extra_miou,
        node_id=node_id,
        interactive=None if out.scores.interactive is None else out.scores.interactive.to_dict(),
    )


@dataclass
class TrialRun:
    """``baseline`` then ``specialised`` scores of one decoder (the trial CLI's answer)."""

    baseline: DecoderScores
    specialised: Specialised


def run_trial(sam: Sam, pack: Pack, cfg: TrainConfig, scoring: Scoring, dev: DeviceChoice) -> TrialRun:
    """Baseline -> train -> score, on one pack (the sweep scores its baselines once per model instead)."""
    baseline = score_decoder(sam, pack, scoring, dev)
    return TrialRun(baseline, specialise(sam, pack, cfg, scoring, dev))
