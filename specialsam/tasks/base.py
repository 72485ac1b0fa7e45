"""What every task hands to the rest of the library: samples in a fixed train/val/test split.

A task knows a dataset layout (or generates a procedural stand-in) and nothing about models,
caches or training. Splits are fixed by the task's seed so every trial of a sweep sees the same
samples; ``train`` is ordered so that the first ``n`` samples form the training set of size ``n``
(nested subsets make a learning curve comparable across sizes).

No split may come out empty: without validation samples training has nothing to select the kept
decoder by (it used to return the untrained one), and without test samples there is no verdict.
Loaders raise :func:`empty_split_error` while loading, before a sweep writes anything.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from specialsam.errors import UserError

DataKind = Literal["real", "procedural"]


@dataclass(frozen=True, eq=False)
class Sample:
    """One image with one binary target mask (one prompt target)."""

    key: str
    """Stable unique id (relative path, synthetic index...): appears in reports and overlays."""
    image: np.ndarray
    """H x W x 3 uint8 RGB."""
    mask: np.ndarray
    """H x W bool; the object the prompt points at."""
    category: str = ""
    """Optional group for per-category metrics (MVTec defect type, COD10K super-class...)."""
    image_id: str = ""
    """Which image the sample comes from when one image carries several samples (COCO instances,
    split instance masks): samples sharing it share the image array, its content hash and so its
    one embedding-cache entry. Empty: the sample is its own image (``key`` identifies it)."""

    def image_hash(self) -> str:
        """Content hash of the image: the embedding cache key, so a changed file is never stale.

        Instances of one image share one array, so the hash is computed once per array
        (remembered while the array lives), not once per instance."""
        return _array_hash(self.image)


_HASHES: dict[int, tuple[weakref.ref, str]] = {}
"""id(array) -> (weak reference to it, content hash); an entry leaves when its array dies."""


def _array_hash(image: np.ndarray) -> str:
    hit = _HASHES.get(id(image))
    if hit is not None and hit[0]() is image:
        return hit[1]
    h = hashlib.sha256()
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    digest = h.hexdigest()[:32]
    key = id(image)
    try:
        ref = weakref.ref(image, lambda _r, k=key: _HASHES.pop(k, None))
    except TypeError:  # not weak-referenceable (never for ndarrays): just do not remember it
        return digest
    _HASHES[key] = (ref, digest)
    return digest


@dataclass
class TaskData:
    """A task's samples, split once and for all."""

    name: str
    data: DataKind
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    source: str = ""
    """Where the samples came from (data root, or the stand-in's description)."""
    notes: list[str] = field(default_factory=list)
    """Lines for the terminal, e.g. how to point at the real data when the stand-in is used."""

    def summary(self) -> str:
        return (
            f"{self.name} ({self.data}): train {len(self.train)}, val {len(self.val)}, "
            f"test {len(self.test)} from {self.source}"
        )

    def keep_first_train(self, n: int, setting: str, remedy: str) -> None:
        """Cut the training pool to its first ``n`` samples, all a run of size <= n can use (sample
        i never depends on the pool size), so nothing beyond them is encoded; a pool smaller than
        ``n`` fails here, before any encoding. ``setting`` names what asked for ``n``."""
        if n > len(self.train):
            raise UserError(
                f"{setting} {n} is larger than the {len(self.train)} training samples available "
                f"for {self.name}; {remedy}"
            )
        self.train = self.train[:n]


def empty_split_error(task: str, split: str, where: str, why: str, remedy: str) -> UserError:
    """The one-line error for a split that came out empty (``why``: what emptied it, may be "")."""
    because = f": {why}" if why else ""
    return UserError(f"task {task} has no {split} samples in {where}{because}; {remedy}")


def check_splits(task: TaskData, remedy: str) -> None:
    """A last guard for every loader: train, val and test all non-empty (``empty_split_error``)."""
    for split in ("train", "val", "test"):
        if not getattr(task, split):
            raise empty_split_error(task.name, split, task.source or "the data", "", remedy)
