"""Score a decoder on a pack split: per prompt strategy, per image, at the ground truth's resolution.

Baseline (the pretrained decoder) and specialised (fine-tuned) decoders go through exactly this
code, so they differ only by weights. The protocol travels with every score (``Protocol``) and is
logged as tags: the 75% threshold means nothing without it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from segment_anything.modeling import Sam

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune import metrics as M
from specialsam.finetune.pack import Split
from specialsam.models.inference import predict_masks
from specialsam.prompts import Prompt


@dataclass(frozen=True)
class Protocol:
    strategy: str
    mask_selection: str = "single"
    scoring: str = "original-resolution"
    split: str = "test"

    def tags(self) -> dict[str, str]:
        return {f"specialsam.protocol.{k}": str(v) for k, v in asdict(self).items()}

    def label(self) -> str:
        return f"{self.strategy}/{self.mask_selection}/{self.scoring}/{self.split}"


@dataclass
class Scores:
    protocol: Protocol
    keys: list[str]
    per_image_iou: np.ndarray
    skipped_empty: int
    means: dict[str, float]
    per_category: dict[str, float] = field(default_factory=dict)

    @property
    def miou(self) -> float:
        return float(self.per_image_iou.mean()) if len(self.per_image_iou) else float("nan")


def score_split(
    sam: Sam,
    split: Split,
    strategies: tuple[str, ...] | list[str],
    mask_selection: str = "single",
    extra_metrics: bool = False,
    dev: DeviceChoice | None = None,
    chunk: int = 64,
) -> dict[str, Scores]:
    """Scores per strategy; samples whose mask is empty are skipped (and counted), never crash."""
    dev = (dev or select_device()).for_decoder(sam.mask_decoder.transformer_dim)
    sam.to(dev.device).eval()
    out: dict[str, Scores] = {}
    for strat in strategies:
        coords, labels, ok = split.prompts(strat)
        idx_all = [i for i in range(len(split)) if ok[i]]
        ious, keys = [], []
        sums: dict[str, list[float]] = defaultdict(list)
        by_cat: dict[str, list[float]] = defaultdict(list)
        for s in range(0, len(idx_all), chunk):
            idx = idx_all[s : s + chunk]
            emb = torch.from_numpy(split.embeddings(idx))
            prompts = [Prompt(coords[i], labels[i]) for i in idx]
            hws = [split.original_hw[i] for i in idx]
            with dev.autocast():
                preds = predict_masks(sam, emb, prompts, hws, mask_selection, prompts_in_model_frame=True)
            for i, pred in zip(idx, preds):
                gt = split.gt(i)
                if extra_metrics:
                    ms = M.all_metrics(pred, gt)
                else:
                    ms = {"iou": M.iou(pred, gt), "dice": M.dice(pred, gt)}
                for k, v in ms.items():
                    sums[k].append(v)
                ious.append(ms["iou"])
                keys.append(split.keys[i])
                if split.categories[i]:
                    by_cat[split.categories[i]].append(ms["iou"])
        out[strat] = Scores(
            protocol=Protocol(strat, mask_selection, split=split.name),
            keys=keys,
            per_image_iou=np.asarray(ious, np.float64),
            skipped_empty=int(len(split) - len(idx_all)),
            means={k: float(np.mean(v)) for k, v in sums.items()},
            per_category={c: float(np.mean(v)) for c, v in sorted(by_cat.items())},
        )
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval over images (paired differences work too)."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))
