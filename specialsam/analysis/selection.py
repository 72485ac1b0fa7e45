"""Which configuration of a model to report, and how trials group into configurations.

**Configuration selection** (``select_config``): chosen on *validation* mIoU, never on test, so the
reported test gain carries no selection bias. Trials group by (model, n_train, params minus
seed/n_train); if the model has ``curve``-phase trials, the group is taken among those at their
largest n_train, else among all trials; the group with the highest mean validation mIoU wins (ties:
larger n_train, more seeds). All its seeds are used.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from specialsam.analysis.results import EXCLUDED_PARAM_KEYS, TrialResult, config_key


@dataclass
class SelectedConfig:
    model: str
    n_train: int
    params: dict[str, Any]
    trials: list[TrialResult]
    val_miou: float
    how: str

    @property
    def seeds(self) -> list[int]:
        return [t.seed for t in self.trials]

    def arrays(self, prompt: str) -> list[np.ndarray]:
        return [t.per_image_iou[prompt] for t in self.trials if prompt in t.per_image_iou]

    def describe(self) -> str:
        params = {k: v for k, v in self.params.items() if k not in EXCLUDED_PARAM_KEYS}
        return f"n_train={self.n_train:,}, {fmt_params(params)}"


def fmt_params(params: Mapping[str, Any]) -> str:
    if not params:
        return "default settings"
    parts = []
    for k in sorted(params):
        v = params[k]
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def group_trials(trials: Sequence[TrialResult]) -> dict[tuple[int, str], list[TrialResult]]:
    """Group trials by (n_train, params); one trial per seed (first seen wins)."""
    groups: dict[tuple[int, str], list[TrialResult]] = defaultdict(list)
    seen: set[tuple[int, str, int]] = set()
    for t in trials:
        if not math.isfinite(t.val_miou):
            continue
        key = (t.n_train, config_key(t.params))
        if (*key, t.seed) in seen:
            continue
        seen.add((*key, t.seed))
        groups[key].append(t)
    return groups


def best_group(groups: Mapping[tuple[int, str], list[TrialResult]]) -> tuple[int, str] | None:
    if not groups:
        return None
    return max(
        groups,
        key=lambda k: (float(np.mean([t.val_miou for t in groups[k]])), k[0], len(groups[k]), k[1]),
    )


def select_config(trials: Sequence[TrialResult], model: str) -> SelectedConfig | None:
    """The configuration of ``model`` to report: best mean *validation* mIoU (see module doc)."""
    mine = [t for t in trials if t.model == model and math.isfinite(t.val_miou)]
    curve = [t for t in mine if t.phase == "curve"]
    if curve:
        n_top = max(t.n_train for t in curve)
        pool = [t for t in curve if t.n_train == n_top]
        how = f"curve phase at its largest n_train ({n_top:,}); params with the best mean validation mIoU"
    else:
        pool = mine
        how = "all trials; the (n_train, params) group with the best mean validation mIoU"
    groups = group_trials(pool)
    key = best_group(groups)
    if key is None:
        return None
    members = sorted(groups[key], key=lambda t: t.seed)
    return SelectedConfig(
        model=model,
        n_train=key[0],
        params=dict(members[0].params),
        trials=members,
        val_miou=float(np.mean([t.val_miou for t in members])),
        how=how,
    )
