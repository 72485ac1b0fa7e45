"""Seeded splits and exact-duplicate detection shared by the task loaders.

Two rules every loader follows:

* **Split by source, then build samples.** Whatever can leak (a source photograph, a texture, an
  image carrying several instance masks) is assigned to exactly one of train/val/test *before*
  samples are derived from it. :func:`split_keys` does this deterministically from the seed.
* **No exact duplicate across splits.** Datasets ship the same picture twice under two names more
  often than one would think. :func:`drop_cross_split_duplicates` hashes the decoded pixels of
  every item, keeps the first occurrence in split order (train, then val, then test, then any extra
  test sets) and drops the copies from the *later* splits; copies inside one split are kept (they
  cannot leak). Loaders add :func:`duplicates_note` to ``TaskData.notes`` so the terminal says
  ``"N exact-duplicate images across splits: ..."``.

``TaskDataWithExtras`` adds extra named test sets (zero-shot transfer sets, the other wood mode)
to ``TaskData`` until ``base.TaskData`` carries the field itself.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from specialsam.tasks.base import Sample, TaskData, pixel_hash

T = TypeVar("T")

SPLITS = ("train", "val", "test")


@dataclass
class TaskDataWithExtras(TaskData):
    """``TaskData`` plus extra named test sets, evaluated like ``test`` but reported separately."""

    extra_tests: dict[str, list[Sample]] = field(default_factory=dict)

    def summary(self) -> str:
        base = super().summary()
        if not self.extra_tests:
            return base
        extras = ", ".join(f"{k} {len(v)}" for k, v in self.extra_tests.items())
        return f"{base}; extra test sets: {extras}"


def stable_rng(seed: int, *salt: str | int) -> np.random.Generator:
    """A generator that depends only on ``seed`` and the salt (not on Python's hash seed)."""
    parts = [int(seed)] + [zlib.crc32(s.encode()) if isinstance(s, str) else int(s) for s in salt]
    return np.random.default_rng(parts)


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for ``n`` items; a non-zero fraction gets at least one item when
    there are at least three items, and train always keeps at least one."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:
        n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test = max(n_test, 1 if test_fraction > 0 else 0)
    while n_val + n_test > max(n - 1, 0):
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        elif n_val > 0:
            n_val -= 1
        else:
            break
    return n - n_val - n_test, n_val, n_test


def split_keys(
    keys: Sequence[T], val_fraction: float, test_fraction: float, seed: int, salt: str = ""
) -> tuple[list[T], list[T], list[T]]:
    """Seeded train/val/test split of ``keys`` (sources, not samples).

    The result depends only on the *set* of keys and the seed: keys are sorted by their string
    form before shuffling, so listing order on disk does not matter. Train comes out shuffled, so
    its first ``n`` keys are a seeded random subset (nested across ``n``).
    """
    ordered = sorted(keys, key=str)
    perm = stable_rng(seed, "split", salt).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    n_train, n_val, _ = split_counts(len(shuffled), val_fraction, test_fraction)
    return shuffled[:n_train], shuffled[n_train : n_train + n_val], shuffled[n_train + n_val :]


content_hash = pixel_hash
"""Hash of decoded pixels (shape included): equal for the same picture saved under two names."""


@dataclass(frozen=True)
class Duplicate:
    """An exact copy found in a later split than its first occurrence (and dropped from it)."""

    kept_key: str
    kept_split: str
    dropped_key: str
    dropped_split: str


def drop_cross_split_duplicates(
    splits: Mapping[str, Sequence[T]],
    hash_of: Callable[[T], str],
    key_of: Callable[[T], str],
) -> tuple[dict[str, list[T]], list[Duplicate]]:
    """Drop exact duplicates of earlier splits' items from later splits.

    ``splits`` is ordered by priority (train, val, test, extra sets...). An item whose hash
    appeared in an earlier split is dropped; items sharing a hash within one split are kept (e.g.
    several instance masks of one image). Returns the filtered splits and what was dropped.
    """
    first_seen: dict[str, tuple[str, str]] = {}
    out: dict[str, list[T]] = {}
    dups: list[Duplicate] = []
    for name, items in splits.items():
        kept: list[T] = []
        local: dict[str, tuple[str, str]] = {}
        for item in items:
            h = hash_of(item)
            prior = first_seen.get(h)
            if prior is not None and prior[1] != name:
                dups.append(Duplicate(prior[0], prior[1], key_of(item), name))
                continue
            local.setdefault(h, (key_of(item), name))
            kept.append(item)
        for h, v in local.items():
            first_seen.setdefault(h, v)
        out[name] = kept
    return out, dups


def dedupe_samples(
    splits: Mapping[str, Sequence[Sample]],
) -> tuple[dict[str, list[Sample]], list[Duplicate]]:
    """:func:`drop_cross_split_duplicates` on samples, hashed by their image content."""
    return drop_cross_split_duplicates(splits, Sample.image_hash, lambda s: s.key)


def duplicates_note(dups: Sequence[Duplicate], listed: int = 3) -> str | None:
    """The terminal line for dropped duplicates (None when there were none)."""
    if not dups:
        return None
    shown = "; ".join(
        f"{d.dropped_key} ({d.dropped_split}) = {d.kept_key} ({d.kept_split})" for d in dups[:listed]
    )
    more = f"; and {len(dups) - listed} more" if len(dups) > listed else ""
    return (
        f"{len(dups)} exact-duplicate images across splits: {shown}{more} (each dropped from the later split)"
    )
