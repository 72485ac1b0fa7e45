"""Streamed images (#21 item 3): samples reference their pixels, the pack build decodes them a
batch at a time, and the numbers (content hashes, so cache keys and packs) are those of arrays
held in memory."""

from __future__ import annotations

import weakref
from functools import partial

import numpy as np
import pytest

from specialsam.finetune.cache import EmbeddingCache
from specialsam.finetune.pack import PackSettings, build_pack, model_identity
from specialsam.models.tiny import build_tiny_sam
from specialsam.tasks import io as tio
from specialsam.tasks import load_task
from specialsam.tasks.base import ImageSource, Sample


def _folder(root, n=30, side=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (side, side + 4, 3), np.uint8)
        m = np.zeros((side, side + 4), bool)
        y, x = rng.integers(2, side // 2, 2)
        m[y : y + 8, x : x + 9] = True
        tio.write_image(root / "images" / f"{i:03d}.png", img)
        tio.write_mask(root / "masks" / f"{i:03d}.png", m)
    return root


@pytest.fixture(scope="module")
def sam():
    return build_tiny_sam("tiny-s").eval()


def _build(task, sam, cache):
    return build_pack(
        task, sam, model_identity(sam, "tiny-s", "sha"), cache, PackSettings(flip=True), progress=False
    )


def test_a_folder_task_holds_no_pixels_and_packs_like_arrays_in_memory(tmp_path, sam):
    task = load_task("folder", _folder(tmp_path / "data"))
    every = task.train + task.val + task.test
    assert not any(s.source.in_memory for s in every)
    cache = EmbeddingCache(tmp_path / "cache")
    streamed = _build(task, sam, cache)
    assert cache.encoder_calls == 2 * len(task.train) + len(task.val) + len(task.test)  # + flips
    for split in ("train", "val", "test"):  # the same samples with their arrays in memory
        setattr(task, split, [Sample(s.key, s.image, s.mask, s.category) for s in getattr(task, split)])
    held = _build(task, sam, cache)
    assert held == streamed and cache.encoder_calls == 2 * len(task.train) + len(task.val) + len(task.test)


def test_the_pack_build_decodes_a_batch_at_a_time_not_every_image(tmp_path, sam):
    task = load_task("folder", _folder(tmp_path / "data"))
    alive, peak = set(), [0]

    def tracked(source: ImageSource) -> np.ndarray:
        arr = source.pixels()
        alive.add(id(arr))
        peak[0] = max(peak[0], len(alive))
        weakref.finalize(arr, alive.discard, id(arr))
        return arr

    for split in ("train", "val", "test"):
        setattr(
            task,
            split,
            [s.replace(image=ImageSource(partial(tracked, s.source))) for s in getattr(task, split)],
        )
    _build(task, sam, EmbeddingCache(tmp_path / "cache"))
    n = len(task.train) * 2 + len(task.val) + len(task.test)
    assert n >= 40 and 1 <= peak[0] <= 8 + 2  # one encoder batch (8) decoded at once, never all n
