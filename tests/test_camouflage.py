"""Camouflage: COD10K-v3 layout, name parsing, splits, extra test sets, errors, stand-in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import camouflage as cam
from specialsam.tasks import load_task
from specialsam.tasks.io import write_image, write_mask

TRAIN = [
    "COD10K-CAM-1-Aquatic-1-BatFish-1",
    "COD10K-CAM-1-Aquatic-3-Crab-2",
    "COD10K-CAM-2-Terrestrial-23-Cat-3",
    "COD10K-CAM-2-Terrestrial-40-Lizard-4",
    "COD10K-CAM-3-Flying-53-Bird-5",
    "COD10K-CAM-3-Flying-55-Butterfly-6",
    "COD10K-CAM-4-Amphibian-67-Frog-7",
    "COD10K-CAM-4-Amphibian-68-Toad-8",
    "COD10K-CAM-5-Other-69-Other-9",
    "COD10K-CAM-1-Aquatic-5-Fish-10",
]
TEST = [
    "COD10K-CAM-1-Aquatic-1-BatFish-100",
    "COD10K-CAM-3-Flying-53-Bird-101",
    "COD10K-CAM-2-Terrestrial-23-Cat-102",
]
NONCAM = "COD10K-NonCAM-5-Background-4-Sky-4833"


def _img(i: int, h: int = 40, w: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[5 + i % 5 : 20 + i % 7, 8:30] = True
    return img, mask


def _write_pair(img_dir: Path, mask_dir: Path, stem: str, i: int, **kw) -> None:
    img, mask = _img(i, **kw)
    write_image(img_dir / f"{stem}.jpg", img)
    write_mask(mask_dir / f"{stem}.png", mask)


@pytest.fixture
def cod(tmp_path) -> Path:
    root = tmp_path / "COD10K-v3"
    for split, names, off in (("Train", TRAIN, 0), ("Test", TEST, 100)):
        (root / split / "Image").mkdir(parents=True)
        (root / split / "GT_Object").mkdir(parents=True)
        for i, n in enumerate(names):
            _write_pair(root / split / "Image", root / split / "GT_Object", n, i + off)
    write_image(root / "Train" / "Image" / f"{NONCAM}.jpg", _img(999)[0])  # NonCAM: no mask
    return root


def test_parse_cod10k_names():
    assert cam.parse_cod10k_name("COD10K-CAM-1-Aquatic-1-BatFish-1") == (True, "Aquatic", "BatFish")
    assert cam.parse_cod10k_name(NONCAM) == (False, "Background", "Sky")
    assert cam.parse_cod10k_name("camourflage_00012") is None
    assert cam.category_of("COD10K-CAM-2-Terrestrial-23-Cat-3", "super") == "Terrestrial"
    assert cam.category_of("COD10K-CAM-2-Terrestrial-23-Cat-3", "class") == "Terrestrial/Cat"
    assert cam.category_of("animal-1", "super") == "unknown"


def test_loads_cod10k_tree_with_categories_and_noncam_skipped(cod):
    d = load_task("camouflage", cod.parent, {"val_fraction": 0.2}, seed=0)  # parent holding COD10K-v3/
    assert d.data == "real" and d.source == str(cod)
    assert len(d.train) == 8 and len(d.val) == 2 and len(d.test) == 3
    keys = [s.key for s in d.train + d.val]
    assert len(set(keys)) == 10 and not any("NonCAM" in k for k in keys)
    assert any("skipped 1 NonCAM" in n for n in d.notes)
    cats = {s.key.split("/")[-1]: s.category for s in d.train + d.val + d.test}
    assert cats[f"{TRAIN[0]}.jpg"] == "Aquatic" and cats[f"{TRAIN[4]}.jpg"] == "Flying"
    assert {s.category for s in d.train + d.val} == {"Aquatic", "Terrestrial", "Flying", "Amphibian", "Other"}
    fine = cam.load(cod, cam.Options(category="class", val_fraction=0.2), seed=0)
    assert {s.category for s in fine.test} == {"Aquatic/BatFish", "Flying/Bird", "Terrestrial/Cat"}
    s = d.test[0]
    assert s.image.shape == (40, 48, 3) and s.mask.shape == (40, 48) and s.mask.any()


def test_val_is_fixed_before_n_train_caps_and_train_is_nested(cod):
    full = cam.load(cod, cam.Options(val_fraction=0.2), seed=5)
    capped = cam.load(cod, cam.Options(val_fraction=0.2, n_train=3), seed=5)
    assert [s.key for s in capped.val] == [s.key for s in full.val]
    assert [s.key for s in capped.train] == [s.key for s in full.train[:3]]
    assert {s.key for s in full.train}.isdisjoint(s.key for s in full.val)
    other_seed = cam.load(cod, cam.Options(val_fraction=0.2), seed=6)
    assert [s.key for s in other_seed.train] != [s.key for s in full.train]


def test_cross_split_duplicate_is_dropped_from_the_later_split(cod):
    src = cod / "Train" / "Image" / f"{TRAIN[1]}.jpg"
    dup = "COD10K-CAM-1-Aquatic-3-Crab-555"
    shutil.copy(src, cod / "Test" / "Image" / f"{dup}.jpg")
    shutil.copy(cod / "Train" / "GT_Object" / f"{TRAIN[1]}.png", cod / "Test" / "GT_Object" / f"{dup}.png")
    d = cam.load(cod, cam.Options(val_fraction=0.2), seed=0)
    assert len(d.test) == 3 and all(dup not in s.key for s in d.test)
    note = next(n for n in d.notes if "exact-duplicate" in n)
    assert note.startswith("1 exact-duplicate images across splits") and dup in note and TRAIN[1] in note


def test_extra_test_sets_in_several_layouts(cod, tmp_path):
    camo = tmp_path / "CAMO"  # Images/Test + GT (CAMO-V.1.0)
    (camo / "Images" / "Test").mkdir(parents=True)
    (camo / "GT").mkdir()
    for i in range(3):
        _write_pair(camo / "Images" / "Test", camo / "GT", f"camourflage_{i:05d}", 200 + i)
    nc4k = tmp_path / "NC4K"  # Imgs + GT
    (nc4k / "Imgs").mkdir(parents=True)
    (nc4k / "GT").mkdir()
    for i in range(2):
        _write_pair(nc4k / "Imgs", nc4k / "GT", f"{i}", 300 + i)
    d = cam.load(cod, cam.Options(extra_test_sets={"CAMO": str(camo), "NC4K": str(nc4k)}), seed=0)
    assert {k: len(v) for k, v in d.extra_tests.items()} == {"CAMO": 3, "NC4K": 2}
    assert all(s.key.startswith("CAMO/") and s.mask.any() for s in d.extra_tests["CAMO"])
    assert "extra test sets: CAMO 3, NC4K 2" in d.summary()
    bad = tmp_path / "CHAMELEON"
    (bad / "pics").mkdir(parents=True)
    with pytest.raises(UserError, match=r"extra_test_sets\.CHAM.*CHAMELEON has no image and mask folders"):
        cam.load(cod, cam.Options(extra_test_sets={"CHAM": str(bad)}), seed=0)


def test_missing_gt_object_folder_names_the_path(cod):
    shutil.rmtree(cod / "Test" / "GT_Object")
    with pytest.raises(UserError) as e:
        cam.load(cod, cam.Options(), seed=0)
    assert str(cod / "Test" / "GT_Object") in str(e.value)


def test_image_without_mask_lists_it(cod):
    (cod / "Train" / "GT_Object" / f"{TRAIN[2]}.png").unlink()
    with pytest.raises(UserError) as e:
        cam.load(cod, cam.Options(), seed=0)
    assert "1 images" in str(e.value) and f"{TRAIN[2]}.jpg" in str(e.value) and "Train/Image" in str(e.value)


def test_mask_size_mismatch_and_max_side(cod):
    name = TRAIN[3]
    img, mask = _img(3, h=120, w=200)
    write_image(cod / "Train" / "Image" / f"{name}.jpg", img)
    write_mask(cod / "Train" / "GT_Object" / f"{name}.png", mask)
    d = cam.load(cod, cam.Options(max_side=100, val_fraction=0.2), seed=0)
    big = next(s for s in d.train + d.val if name in s.key)
    assert big.image.shape == (60, 100, 3) and big.mask.shape == (60, 100)
    write_mask(cod / "Train" / "GT_Object" / f"{name}.png", mask[:100])
    with pytest.raises(UserError, match="must match"):
        cam.load(cod, cam.Options(), seed=0)


def test_standin_is_procedural_deterministic_with_categories():
    opts = cam.Options(procedural_train=8, procedural_test=4, val_fraction=0.25)
    a = cam.load(None, opts, seed=0)
    b = cam.load(None, opts, seed=0)
    assert a.data == "procedural" and any("--data-root" in n for n in a.notes)
    assert [len(a.train), len(a.val), len(a.test)] == [6, 2, 4]
    for x, y in zip(a.train + a.test, b.train + b.test, strict=True):
        assert x.key == y.key and np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    assert {s.category for s in a.train + a.val} == set(cam.TRAIN_BACKGROUNDS)
    assert {s.category for s in a.extra_tests["procedural-transfer"]} == {"Sand"}
    for s in a.test:
        frac = s.mask.mean()
        assert 0.02 < frac < 0.4 and s.image.shape[:2] == s.mask.shape
        # camouflage: inside and outside have nearly the same mean colour
        diff = np.abs(s.image[s.mask].mean(0) - s.image[~s.mask].mean(0)).max()
        assert diff < 40


def test_bad_option_names_setting():
    with pytest.raises(UserError, match="data.category"):
        cam.load(None, cam.Options(category="species"), seed=0)
