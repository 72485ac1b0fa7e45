"""Bring-your-own folder: pairing, splits.csv, seeded split, multi-valued masks, duplicates, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import folder, load_task
from specialsam.tasks.io import write_image, write_mask
from specialsam.tasks.splits import content_hash, drop_cross_split_duplicates, split_counts, split_keys


def _make(root: Path, n: int = 10, h: int = 32, w: int = 40) -> list[str]:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    stems = []
    for i in range(n):
        rng = np.random.default_rng(i)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), bool)
        mask[4 : 12 + i % 10, 6:20] = True
        stem = f"img{i:02d}"
        write_image(root / "images" / f"{stem}.{'png' if i % 2 else 'jpg'}", img)
        write_mask(root / "masks" / f"{stem}.png", mask)
        stems.append(stem)
    return stems


def _csv(root: Path, rows: list[tuple[str, ...]], header: str = "stem,split,category") -> None:
    (root / "splits.csv").write_text(header + "\n" + "\n".join(",".join(r) for r in rows) + "\n")


def test_seeded_split_is_deterministic_disjoint_and_nested(tmp_path):
    _make(tmp_path, 20)
    a = load_task("folder", tmp_path, {"val_fraction": 0.2, "test_fraction": 0.2}, seed=1)
    b = folder.load(tmp_path, folder.Options(val_fraction=0.2, test_fraction=0.2), seed=1)
    assert a.data == "real" and [len(a.train), len(a.val), len(a.test)] == [12, 4, 4]
    assert [s.key for s in a.train] == [s.key for s in b.train]
    keys = [s.key for s in a.train + a.val + a.test]
    assert len(set(keys)) == 20
    c = folder.load(tmp_path, folder.Options(val_fraction=0.2, test_fraction=0.2), seed=2)
    assert [s.key for s in c.train] != [s.key for s in a.train]
    s = a.train[0]
    assert s.image.shape == (32, 40, 3) and s.mask.dtype == bool and s.mask.any()


def test_splits_csv_assigns_splits_and_categories(tmp_path):
    stems = _make(tmp_path, 6)
    rows = [
        (s, sp, cat)
        for s, sp, cat in zip(
            stems,
            ["train", "train", "train", "val", "test", "test"],
            ["a", "a", "b", "b", "a", ""],
            strict=True,
        )
    ]
    _csv(tmp_path, rows)
    d = folder.load(tmp_path, folder.Options(), seed=0)
    assert sorted(s.key for s in d.train) == stems[:3]
    assert [s.key for s in d.val] == [stems[3]] and sorted(s.key for s in d.test) == stems[4:]
    assert {s.key: s.category for s in d.train} == {stems[0]: "a", stems[1]: "a", stems[2]: "b"}
    assert any("splits from" in n for n in d.notes)


def test_splits_csv_errors(tmp_path):
    stems = _make(tmp_path, 3)
    _csv(tmp_path, [(stems[0], "train"), (stems[1], "holdout"), (stems[2], "test")], header="stem,split")
    with pytest.raises(UserError, match=r"splits.csv line 3: split 'holdout'"):
        folder.load(tmp_path, folder.Options(), seed=0)
    _csv(tmp_path, [(stems[0], "train"), (stems[1], "val")], header="stem,split")
    with pytest.raises(UserError, match=rf"no row for 1 images: {stems[2]}"):
        folder.load(tmp_path, folder.Options(), seed=0)
    _csv(tmp_path, [(s, "train") for s in stems] + [("ghost", "test")], header="stem,split")
    with pytest.raises(UserError, match="1 stems with no image in images/: ghost"):
        folder.load(tmp_path, folder.Options(), seed=0)


def _label_mask(path: Path, h: int = 32, w: int = 40) -> None:
    lab = np.zeros((h, w), np.uint8)
    lab[2:10, 2:10] = 1
    lab[12:30, 20:38] = 2
    lab[20:28, 2:10] = 3
    write_image(path, lab)


def test_multi_valued_mask_error_and_split_instances(tmp_path):
    stems = _make(tmp_path, 4)
    _label_mask(tmp_path / "masks" / f"{stems[1]}.png")
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    assert f"{stems[1]}.png has 4 distinct values" in str(e.value) and "split_instances" in str(e.value)
    d = folder.load(
        tmp_path, folder.Options(split_instances=True, val_fraction=0.25, test_fraction=0.25), seed=0
    )
    inst = [s for s in d.train + d.val + d.test if s.key.startswith(f"{stems[1]}#")]
    assert sorted(s.key for s in inst) == [f"{stems[1]}#{v}" for v in (1, 2, 3)]
    split_of = {
        s.key: name for name, ss in (("train", d.train), ("val", d.val), ("test", d.test)) for s in ss
    }
    assert len({split_of[s.key] for s in inst}) == 1  # all instances of one image in one split
    areas = sorted(int(s.mask.sum()) for s in inst)
    assert areas == [64, 64, 18 * 18]
    assert any("1 multi-valued masks split" in n for n in d.notes)


def test_antialiased_and_jpeg_masks_are_binary(tmp_path):
    stems = _make(tmp_path, 3)
    soft = np.zeros((32, 40), np.uint8)
    soft[8:24, 8:30] = 255
    soft[7, 8:30] = 128  # anti-aliased edge rows: rare intermediate values
    soft[24, 8:30] = 60
    write_image(tmp_path / "masks" / f"{stems[0]}.png", soft)
    (tmp_path / "masks" / f"{stems[2]}.png").unlink()
    jpg = np.zeros((32, 40), np.uint8)
    jpg[5:20, 5:25] = 255
    write_image(tmp_path / "masks" / f"{stems[2]}.jpg", jpg)  # lossy: many noisy grey levels
    d = folder.load(tmp_path, folder.Options(val_fraction=0.0, test_fraction=0.0), seed=0)
    by = {s.key: s for s in d.train}
    assert set(by) == set(stems)
    assert by[stems[0]].mask.sum() == 16 * 22 + 22  # the 128 row counts (> half of 255), the 60 row not
    assert abs(int(by[stems[2]].mask.sum()) - 15 * 20) <= 20


def test_exact_duplicates_across_splits_are_reported_and_dropped(tmp_path):
    stems = _make(tmp_path, 6)
    shutil.copy(tmp_path / "images" / f"{stems[0]}.jpg", tmp_path / "images" / "copy.jpg")
    shutil.copy(tmp_path / "masks" / f"{stems[0]}.png", tmp_path / "masks" / "copy.png")
    _csv(
        tmp_path,
        [(s, "train") for s in stems[:4]] + [(stems[4], "val"), (stems[5], "test"), ("copy", "test")],
        header="stem,split",
    )
    d = folder.load(tmp_path, folder.Options(), seed=0)
    assert [s.key for s in d.test] == [stems[5]]
    note = next(n for n in d.notes if "exact-duplicate" in n)
    assert note.startswith("1 exact-duplicate images across splits: copy (test) = img00 (train)")


def test_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="--task folder needs --data-root DIR with images/ and masks/"):
        folder.load(None, folder.Options(), seed=0)
    stems = _make(tmp_path, 8)
    for i in (2, 5, 6):
        (tmp_path / "masks" / f"{stems[i]}.png").unlink()
    with pytest.raises(UserError) as e:
        folder.load(tmp_path, folder.Options(), seed=0)
    assert (
        "3 images" in str(e.value) and "img02.jpg" in str(e.value) and str(tmp_path / "masks") in str(e.value)
    )
    write_mask(tmp_path / "masks" / f"{stems[2]}.png", np.ones((10, 10), bool))
    for i in (5, 6):
        write_mask(tmp_path / "masks" / f"{stems[i]}.png", np.ones((32, 40), bool))
    with pytest.raises(
        UserError, match=rf"{stems[2]}.png is 10x10 \(WxH\) but its image .*{stems[2]}.jpg is 40x32"
    ):
        folder.load(tmp_path, folder.Options(), seed=0)
    shutil.rmtree(tmp_path / "masks")
    with pytest.raises(UserError, match=rf"{tmp_path / 'masks'} does not exist"):
        folder.load(tmp_path, folder.Options(), seed=0)


def test_split_helpers():
    assert split_counts(10, 0.2, 0.2) == (6, 2, 2)
    assert split_counts(3, 0.1, 0.1) == (1, 1, 1)
    assert split_counts(2, 0.1, 0.1) == (2, 0, 0)
    a = split_keys([f"k{i}" for i in range(10)], 0.2, 0.2, seed=3)
    b = split_keys([f"k{i}" for i in reversed(range(10))], 0.2, 0.2, seed=3)
    assert a == b  # the listing order on disk does not matter
    assert sorted(sum(a, [])) == sorted(f"k{i}" for i in range(10))
    img = np.zeros((4, 4, 3), np.uint8)
    items = {
        "train": [("a", img), ("a2", img)],
        "val": [("b", img.copy()), ("c", img + 1)],
        "test": [("d", img)],
    }
    out, dups = drop_cross_split_duplicates(items, lambda t: content_hash(t[1]), lambda t: t[0])
    assert [k for k, _ in out["train"]] == ["a", "a2"]  # copies inside one split are kept
    assert [k for k, _ in out["val"]] == ["c"] and out["test"] == []
    assert [(d.dropped_key, d.kept_key) for d in dups] == [("b", "a"), ("d", "a")]
