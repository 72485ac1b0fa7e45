"""Is fine-tuning worth more than a few extra clicks? The baseline rule per click budget.

People click again where SAM's mask is wrong, so a zero-shot mIoU after one click undersells SAM.
With the interactive evaluation on (``eval.clicks``: the primary prompt, then simulated corrective
clicks), each model's selected configuration (``selection.select_config``, chosen on validation)
is compared with its base decoder:

* **mIoU after k interactions**, base vs specialised, the gain with its paired 95% CI (images paired,
  seeds resampled, as every gain in the analysis).
* **NoC@t**: clicks to reach IoU t (the cap when never), base vs specialised, and **clicks saved per
  object** = base NoC - specialised NoC, paired over objects with its 95% CI.
* **The baseline rule per click budget**: the rule's prediction from the baseline mIoU *after k
  clicks* against the observed gain after k clicks, decided per model at Holm-adjusted p <= 5% over
  the models (as the 1-click rule over its cells), for the smallest budget (1: today's rule) and the
  largest. "After 9 clicks fine-tuning no longer helps" is the answer a user wants before
  annotating 5,000 images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from specialsam.analysis.baseline_rule import predicted_outcome
from specialsam.analysis.results import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    BaselineResult,
    overall_verdict,
    stable_seed,
)
from specialsam.analysis.selection import SelectedConfig
from specialsam.analysis.stats import ALPHA, LEVEL, GainCI, holm, paired_difference


@dataclass
class ClickPoint:
    """One click budget k of one model: base and specialised mIoU after k interactions."""

    clicks: int
    base_miou: float
    spec_miou: float
    gain: GainCI
    p_value: float


@dataclass
class NocRow:
    """NoC at one IoU threshold: mean clicks base and specialised, and clicks saved per object."""

    threshold: float
    base_noc: float
    spec_noc: float
    saved: GainCI  # base - specialised, per object
    base_reached: float  # share of objects that reach the threshold within the cap
    spec_reached: float


@dataclass
class ModelClicks:
    model: str
    n_images: int
    n_seeds: int
    max_clicks: int
    points: list[ClickPoint]
    noc: list[NocRow]


@dataclass
class BudgetVerdict:
    """The baseline rule judged at one click budget, over the models."""

    clicks: int
    verdict: str
    cells: list[tuple[str, float, GainCI, str, float]]  # model, baseline after k, gain, observed, Holm p
    statement: str


@dataclass
class ClicksReport:
    prompt: str
    protocol: str
    models: dict[str, ModelClicks] = field(default_factory=dict)
    budgets: list[BudgetVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return bool(self.models)


def _seed_arrays(sel: SelectedConfig, key, what: str) -> list[np.ndarray]:
    return [getattr(t, what)[key] for t in sel.trials if key in getattr(t, what)]


def _model_clicks(base: BaselineResult, sel: SelectedConfig, n_boot: int, seed: int) -> ModelClicks | None:
    points = []
    for k in sorted(base.clicks_iou):
        spec = _seed_arrays(sel, k, "clicks_iou")
        if not spec:
            return None
        boot = paired_difference(
            spec, [base.clicks_iou[k]], n_boot, stable_seed(seed, "clicks", base.model, k)
        )
        b = float(base.clicks_iou[k].mean())
        s = float(np.mean([a.mean() for a in spec]))
        points.append(ClickPoint(k, b, s, boot.ci(LEVEL), boot.p_two_sided(0.0)))
    rows = []
    for t in sorted(base.noc):
        spec = _seed_arrays(sel, t, "noc")
        if not spec:
            continue
        saved = paired_difference([base.noc[t]], spec, n_boot, stable_seed(seed, "noc", base.model, t))
        reached = [float((a < base.max_clicks).mean()) for a in spec]
        rows.append(
            NocRow(
                t,
                float(base.noc[t].mean()),
                float(np.mean([a.mean() for a in spec])),
                saved.ci(LEVEL),
                float((base.noc[t] < base.max_clicks).mean()),
                float(np.mean(reached)),
            )
        )
    n_images = int(next(iter(base.clicks_iou.values())).size) if base.clicks_iou else 0
    return ModelClicks(base.model, n_images, len(sel.trials), base.max_clicks, points, rows)


def _budget_verdict(models: Sequence[ModelClicks], k: int, threshold: float) -> BudgetVerdict:
    """The rule at budget ``k``: each model one test of 'gain after k clicks = 0', Holm over models."""
    pts = [(m.model, next(p for p in m.points if p.clicks == k)) for m in models]
    adjusted = holm([p.p_value for _, p in pts])
    cells, verdicts = [], []
    for (model, p), adj in zip(pts, adjusted, strict=True):
        observed = ("helps" if p.gain.mean > 0 else "hurts") if adj <= ALPHA else "unclear"
        predicted = predicted_outcome(p.base_miou, threshold)
        if observed == "unclear":
            verdicts.append(INCONCLUSIVE)
        else:
            matched = (observed == "helps") if predicted == "gain" else (observed == "hurts")
            verdicts.append(SUPPORTED if matched else CONTRADICTED)
        cells.append((model, p.base_miou, p.gain, observed, adj))
    helps = [c[0] for c in cells if c[3] == "helps"]
    if helps:
        statement = f"after {k} click(s), fine-tuning still helps ({', '.join(helps)})"
    elif any(c[3] == "hurts" for c in cells):
        statement = f"after {k} click(s), fine-tuning hurts"
    else:
        statement = f"after {k} click(s), fine-tuning no longer shows a decided gain"
    return BudgetVerdict(k, overall_verdict(verdicts), cells, statement)


def clicks_rule(
    baselines: Sequence[BaselineResult],
    selections: Mapping[str, SelectedConfig],
    prompt: str,
    threshold: float = 0.75,
    protocol: str = "",
    n_boot: int = 2000,
    seed: int = 0,
) -> ClicksReport:
    """Per model: mIoU-vs-clicks and NoC, base vs specialised; the baseline rule per click budget."""
    rep = ClicksReport(prompt, protocol)
    for b in baselines:
        sel = selections.get(b.model)
        if b.prompt != prompt or not b.clicks_iou or sel is None:
            continue
        mc = _model_clicks(b, sel, n_boot, seed)
        if mc is not None:
            rep.models[b.model] = mc
    if not rep.models:
        rep.notes.append("no interactive evaluation (eval.clicks) for both baselines and trials")
        return rep
    budgets = sorted(set.intersection(*({p.clicks for p in m.points} for m in rep.models.values())))
    for k in sorted({budgets[0], budgets[-1]}):
        rep.budgets.append(_budget_verdict(list(rep.models.values()), k, threshold))
    return rep
