"""The task's data as MLflow dataset inputs, so the runs table's Dataset column says what was used.

A split is logged as metadata only (no pixels): its name (``carpet-train``, a trial's
``carpet-train-n64``), its source (the data root, or the procedural stand-in's description) and a
digest of its samples' keys, image hashes and masks (``finetune.pack.sample_fingerprint``), so two
runs show the same digest exactly when they saw the same samples. The driver builds and logs them
(the parent and each trial run, through ``Tracker.log_inputs``); trial processes never do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from specialsam.finetune.pack import sample_fingerprint
from specialsam.sweep import mlflow_runs as names
from specialsam.tasks.base import TaskData

DIGEST_CHARS = 16
"""Shown in the UI beside the name; MLflow stores at most 36 characters."""


def _meta_dataset():
    from mlflow.data.meta_dataset import MetaDataset

    class SplitDataset(MetaDataset):
        """A MetaDataset with a profile (sample and image counts shown in the run's Datasets)."""

        def __init__(self, source, name: str, digest: str, profile: dict) -> None:
            self._profile = profile
            super().__init__(source, name=name, digest=digest)

        @property
        def profile(self) -> dict:
            return self._profile

        def to_dict(self) -> dict[str, str]:
            return {**super().to_dict(), "profile": json.dumps(self._profile)}

    return SplitDataset


@dataclass
class TaskDatasets:
    """Per-sample fingerprints of each split, computed once in the driver, and the data's source."""

    task: str
    data: TaskData
    data_root: str | None = None
    _prints: dict[str, list[bytes]] = field(default_factory=dict)

    def fingerprints(self, split: str) -> list[bytes]:
        if split not in self._prints:
            self._prints[split] = [sample_fingerprint(s) for s in getattr(self.data, split)]
        return self._prints[split]

    def source(self):
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        if self.data_root and self.data.data == "real":  # a local folder: MLflow's "local" source
            return resolve_dataset_source(str(Path(self.data_root).resolve()))
        return CodeDatasetSource(
            {names.TASK: self.task, names.DATA: self.data.data, "source": self.data.source}
        )

    def dataset(self, split: str, n: int | None = None):
        """One split (``n``: its first n samples, a trial's training set) as an MLflow dataset."""
        prints = self.fingerprints(split)[:n] if n is not None else self.fingerprints(split)
        h = hashlib.sha256()
        for p in prints:
            h.update(p)
        samples = getattr(self.data, split)[: len(prints)]
        profile = {"num_samples": len(prints), "num_images": len({s.image_id or s.key for s in samples})}
        return _meta_dataset()(
            self.source(), names.dataset_name(self.task, split, n), h.hexdigest()[:DIGEST_CHARS], profile
        )

    def inputs(self, n_train: int | None = None, splits: tuple[str, ...] = ("train", "val", "test")) -> list:
        """``DatasetInput`` entities for train (all, or its first ``n_train``), val and test (a
        baseline scores the test split only: ``splits=("test",)``)."""
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        out = []
        for split, context in names.DATASET_CONTEXTS.items():
            if split not in splits:
                continue
            ds = self.dataset(split, n_train if split == "train" else None)
            out.append(
                DatasetInput(
                    ds._to_mlflow_entity(), tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)]
                )
            )
        return out
