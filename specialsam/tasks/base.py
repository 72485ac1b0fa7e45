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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from specialsam.errors import UserError

DataKind = Literal["real", "procedural"]


class ImageSource:
    """Where a sample's pixels come from: an array held in memory (the procedural stand-ins), or a
    loader (a file decoded and downscaled on demand, a generator callable) that runs only where
    pixels are needed (encoder precompute, overlays), so a task of 20,000 images does not hold
    20,000 images. The content hash is remembered once known (a loader may pass it in when it has
    just decoded the image anyway), so instances of one image share one hash and one cache entry."""

    __slots__ = ("_array", "_load", "_hash", "__weakref__")

    def __init__(
        self, pixels: np.ndarray | Callable[[], np.ndarray], content_hash: str | None = None
    ) -> None:
        self._array = pixels if isinstance(pixels, np.ndarray) else None
        self._load = None if isinstance(pixels, np.ndarray) else pixels
        self._hash = content_hash

    @property
    def in_memory(self) -> bool:
        return self._array is not None

    def pixels(self) -> np.ndarray:
        """H x W x 3 uint8 RGB: the held array, or freshly decoded (not kept)."""
        return self._array if self._array is not None else self._load()

    def content_hash(self) -> str:
        if self._hash is None:
            self._hash = _array_hash(self._array) if self._array is not None else pixel_hash(self._load())
        return self._hash


class MaskSource:
    """A sample's target mask: held in memory, or a loader (a mask file, a COCO segmentation)
    decoded on demand, so masks of a large dataset are never all in memory at once either."""

    __slots__ = ("_array", "_load")

    def __init__(self, mask: np.ndarray | Callable[[], np.ndarray]) -> None:
        self._array = mask if isinstance(mask, np.ndarray) else None
        self._load = None if isinstance(mask, np.ndarray) else mask

    def pixels(self) -> np.ndarray:
        """H x W bool."""
        return self._array if self._array is not None else self._load()


class Sample:
    """One image with one binary target mask (one prompt target).

    ``image`` and ``mask`` are read on access: from memory for the procedural stand-ins, decoded
    from their source for file-backed tasks (see :class:`ImageSource`). Code that touches many
    samples reads one at a time and lets it go."""

    __slots__ = ("key", "source", "mask_source", "category", "image_id")

    def __init__(
        self,
        key: str,
        image: np.ndarray | ImageSource,
        mask: np.ndarray | MaskSource,
        category: str = "",
        image_id: str = "",
    ) -> None:
        self.key = key
        """Stable unique id (relative path, synthetic index...): appears in reports and overlays."""
        self.source = image if isinstance(image, ImageSource) else ImageSource(image)
        self.mask_source = mask if isinstance(mask, MaskSource) else MaskSource(mask)
        self.category = category
        """Optional group for per-category metrics (MVTec defect type, COD10K super-class...)."""
        self.image_id = image_id
        """Which image the sample comes from when one image carries several samples (COCO
        instances, split instance masks): samples sharing it share one ``ImageSource``, its
        content hash and so its one embedding-cache entry. Empty: the sample is its own image."""

    @property
    def image(self) -> np.ndarray:
        """H x W x 3 uint8 RGB."""
        return self.source.pixels()

    @property
    def mask(self) -> np.ndarray:
        """H x W bool; the object the prompt points at."""
        return self.mask_source.pixels()

    def replace(self, **changes: object) -> Sample:
        """A copy with some fields changed (sources are shared, not decoded)."""
        fields = {"key": self.key, "image": self.source, "mask": self.mask_source}
        fields.update(category=self.category, image_id=self.image_id)
        fields.update(changes)
        return Sample(**fields)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Sample(key={self.key!r}, category={self.category!r}, image_id={self.image_id!r})"

    def image_hash(self) -> str:
        """Content hash of the image: the embedding cache key, so a changed file is never stale.

        Instances of one image share one source, so the hash is computed once per image (and
        once per in-memory array, remembered while the array lives), not once per instance."""
        return self.source.content_hash()


class SampleImages(Sequence[np.ndarray]):
    """The images of ``samples`` as a sequence decoded item by item (what the encoder precompute
    indexes), never a list of every image at once."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [s.image for s in self.samples[i]]
        return self.samples[i].image


def pixel_hash(image: np.ndarray) -> str:
    """Hash of decoded pixels (shape included): the one content hash of images (cache keys, dedupe)."""
    h = hashlib.sha256()
    h.update(str(image.shape).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()[:32]


_HASHES: dict[int, tuple[weakref.ref, str]] = {}
"""id(array) -> (weak reference to it, content hash); an entry leaves when its array dies."""


def _array_hash(image: np.ndarray) -> str:
    hit = _HASHES.get(id(image))
    if hit is not None and hit[0]() is image:
        return hit[1]
    digest = pixel_hash(image)
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
