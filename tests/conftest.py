"""Shared fixtures. One torch thread: tests run on 2-core CI machines beside Ray workers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SPECIALSAM_CACHE", str(d))
    return d


def scene_task(n_train: int = 24, n_val: int = 8, n_test: int = 8, name: str = "scenes"):
    """A small TaskData built from generalist scenes (independent of any task module)."""
    from specialsam.scenes import make_scene
    from specialsam.tasks.base import Sample, TaskData

    def samples(split: str, n: int, base: int):
        out = []
        for i in range(n):
            sc = make_scene((4242, base + i))
            j = int(np.argmax([m.sum() for m in sc.targets]))
            out.append(Sample(key=f"{split}-{i}", image=sc.image, mask=sc.targets[j], category=f"c{i % 2}"))
        return out

    return TaskData(
        name=name,
        data="procedural",
        train=samples("train", n_train, 0),
        val=samples("val", n_val, 1000),
        test=samples("test", n_test, 2000),
        source="scenes",
    )
