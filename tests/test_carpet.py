"""Carpet task: the study's synthetic-defect generator, the MVTec AD loader, the stand-in."""

from __future__ import annotations

import shutil
from collections import Counter

import cv2
import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import carpet, load_task
from specialsam.tasks import io as tio
from specialsam.tasks.procedural import carpet as pc
from specialsam.tasks.procedural import synthetic_defects as sd


def _texture(size: int = 256, seed: int = 0) -> np.ndarray:
    """A saturated, busy colour texture: every defect kind changes (nearly) every pixel it touches."""
    rng = np.random.default_rng(seed)
    hsv = np.empty((size, size, 3), np.uint8)
    hsv[..., 0] = rng.integers(0, 180, (size, size))
    hsv[..., 1] = rng.integers(140, 256, (size, size))
    hsv[..., 2] = rng.integers(90, 230, (size, size))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


# ---------------------------------------------------------------- synthetic defects


@pytest.mark.parametrize("kind", sd.DEFECT_KINDS)
def test_mask_is_exactly_the_changed_region(kind):
    image = _texture()
    before = image.copy()
    for seed in range(6):
        d = sd.inject_defect(image, np.random.default_rng(seed), kind)
        assert (image == before).all()  # the input is not modified
        assert d.kind == kind and d.mask.dtype == bool and d.mask.shape == image.shape[:2] and d.mask.any()
        changed = (d.image != image).any(-1)
        assert not changed[~d.mask].any()  # outside the footprint: bit-identical
        assert changed[d.mask].mean() > 0.97  # inside: (almost) every pixel differs


def test_scaled_ranges():
    assert sd.scaled_ranges((1024, 1024)) == {
        "patch_side": (20, 60),
        "line_thickness": (2, 5),
        "line_length": (100, 500),
        "circle_radius": (40, 100),
    }
    r512 = sd.scaled_ranges((512, 700))  # the shorter side sets the scale
    assert r512 == {
        "patch_side": (10, 30),
        "line_thickness": (1, 2),
        "line_length": (50, 250),
        "circle_radius": (20, 50),
    }
    r64 = sd.scaled_ranges((64, 64))  # clamped below so tiny images still get a visible defect
    assert r64["patch_side"] == (sd.MIN_PATCH_SIDE, 4) and r64["circle_radius"] == (3, 6)


@pytest.mark.parametrize("side", [256, 1024])
def test_patch_size_placement_and_modes(side):
    image = _texture(side)
    lo, hi = sd.scaled_ranges((side, side))["patch_side"]
    modes = set()
    for seed in range(10):
        d = sd.paste_patch(image, np.random.default_rng(seed))
        p = d.params
        ys, xs = np.nonzero(d.mask)
        w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert lo <= w <= hi and lo <= h <= hi and d.mask.sum() == w * h  # a filled rectangle
        assert (w, h) == (p["width"], p["height"]) and (xs.min(), ys.min()) == p["dst"]
        assert p["src"] != p["dst"]
        (sx, sy), (dx, dy) = p["src"], p["dst"]
        src = image[sy : sy + h, sx : sx + w].astype(np.float64)
        got = d.image[dy : dy + h, dx : dx + w].astype(np.float64)
        if p["mode"] == "darken":
            assert 0.4 <= p["factor"] <= 0.7
            assert (got == np.clip(np.rint(src * p["factor"]), 0, 255)).all()
        else:
            assert 15 <= p["sigma"] <= 35
            assert abs((got - src).std() - p["sigma"]) < 0.35 * p["sigma"]  # clipping trims a little
        modes.add(p["mode"])
    assert modes == {"darken", "noise"}


@pytest.mark.parametrize("side", [512, 1024])
def test_line_thickness_colour_and_length(side):
    image = _texture(side)
    r = sd.scaled_ranges((side, side))
    for seed in range(10):
        d = sd.dark_line(image, np.random.default_rng(seed))
        p = d.params
        assert r["line_thickness"][0] <= p["thickness"] <= r["line_thickness"][1]
        assert r["line_length"][0] <= p["length"] <= r["line_length"][1]
        assert all(0 <= c <= 50 for c in p["colour"])
        assert (d.image[d.mask] == np.array(p["colour"], np.uint8)).all()
        t, length = p["thickness"], p["length"]
        dist = cv2.distanceTransform(np.pad(d.mask, 1).astype(np.uint8), cv2.DIST_L2, 5)
        assert dist.max() <= t / 2 + 1  # thin: half-width about half the thickness
        if all(0 <= c <= side - 1 for c in p["p1"]):  # not clipped: area = length x thickness + caps
            expected = length * t + np.pi * t * t / 4
            assert abs(d.mask.sum() - expected) <= 0.08 * expected + 2


@pytest.mark.parametrize("side", [512, 1024])
def test_circle_radius_hue_shift_and_blend(side):
    image = np.zeros((side, side, 3), np.uint8)
    image[:] = (200, 60, 40)  # a saturated red: hue rotation shows in every pixel
    r = sd.scaled_ranges((side, side))["circle_radius"]
    for seed in range(10):
        d = sd.hue_circle(image, np.random.default_rng(seed))
        p = d.params
        assert r[0] <= p["radius"] <= r[1] and 20 <= abs(p["hue_shift"]) <= 50 and p["opacity"] == 0.4
        ys, xs = np.nonzero(d.mask)
        cx, cy = p["centre"]
        assert ((xs - cx) ** 2 + (ys - cy) ** 2).max() <= p["radius"] ** 2 + 1  # a disc of that radius
        if min(cx, cy, side - 1 - cx, side - 1 - cy) > p["radius"]:  # not clipped by the border
            assert abs(d.mask.sum() - np.pi * p["radius"] ** 2) < 0.08 * np.pi * p["radius"] ** 2
        expected = np.clip(
            np.rint(0.6 * image[:1, :1] + 0.4 * sd.hue_rotate(image[:1, :1], p["hue_shift"])), 0, 255
        )
        assert (d.image[d.mask] == expected[0, 0]).all()


def test_generator_is_deterministic_and_draws_every_kind():
    image = _texture(128)
    a = sd.inject_defect(image, np.random.default_rng(5))
    b = sd.inject_defect(image, np.random.default_rng(5))
    assert a.kind == b.kind and (a.image == b.image).all() and (a.mask == b.mask).all()
    kinds = Counter(sd.inject_defect(image, np.random.default_rng(s)).kind for s in range(60))
    assert set(kinds) == set(sd.DEFECT_KINDS) and min(kinds.values()) >= 10
    others = [sd.inject_defect(image, np.random.default_rng(s)) for s in range(6, 10)]
    assert any(o.mask.shape != a.mask.shape or (o.mask != a.mask).any() for o in others)
    with pytest.raises(ValueError, match="unknown synthetic defect kind"):
        sd.inject_defect(image, np.random.default_rng(0), "smudge")


# ---------------------------------------------------------------- MVTec AD layout


GOOD, DEFECTS = 10, {"cut": 3, "hole": 2}


@pytest.fixture
def mvtec(tmp_path):
    """A small MVTec AD tree in the exact layout (carpet + a second category)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mvtec_anomaly_detection"
    cat = root / "carpet"
    for i in range(GOOD):
        tio.write_image(cat / "train" / "good" / f"{i:03d}.png", _texture(96, seed=i))
    tio.write_image(cat / "test" / "good" / "000.png", _texture(96, seed=100))  # no mask: skipped
    for defect, n in DEFECTS.items():
        for i in range(n):
            tio.write_image(cat / "test" / defect / f"{i:03d}.png", _texture(96, seed=200 + i))
            m = np.zeros((96, 96), bool)
            y, x = rng.integers(10, 60, 2)
            m[y : y + 20, x : x + 12] = True
            tio.write_mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png", m)
    tio.write_image(root / "grid" / "train" / "good" / "000.png", _texture(32))
    return root


def _opts(**kw):
    return carpet.Options(**{"n_synthetic": 20, "n_val": 5, **kw})


def _good_of(sample):
    return sample.key.split("#")[0]


def test_mvtec_splits_categories_and_keys(mvtec):
    td = carpet.load(mvtec, _opts(), seed=0)
    assert td.data == "real" and td.name == "carpet" and "carpet" in td.source
    assert not any("grayscale" in n for n in td.notes)  # colour images: no grayscale warning
    assert (len(td.train), len(td.val), len(td.test)) == (20, 5, 5)
    assert Counter(s.category for s in td.test) == Counter(DEFECTS)  # test/good skipped
    assert {s.category for s in td.train + td.val} <= set(sd.DEFECT_KINDS)
    assert sorted(s.key for s in td.test) == [
        "test/cut/000.png",
        "test/cut/001.png",
        "test/cut/002.png",
        "test/hole/000.png",
        "test/hole/001.png",
    ]
    assert td.train[0].key.startswith("train/good/") and "#synth-0-" in td.train[0].key
    assert td.val[0].key.startswith("train/good/") and "#val-0-" in td.val[0].key
    assert len({s.key for s in td.train + td.val + td.test}) == 30
    for s in td.test:  # the real ground truth, unchanged
        ref = tio.read_mask(
            mvtec / "carpet" / "ground_truth" / s.category / s.key.split("/")[-1].replace(".png", "_mask.png")
        )
        assert (s.mask == ref).all() and s.image.shape == (96, 96, 3)
    for s in td.train + td.val:
        assert s.image.shape == (96, 96, 3) and s.mask.any() and s.category in s.key


def test_mvtec_val_good_disjoint_and_no_test_leakage(mvtec):
    td = carpet.load(mvtec, _opts(n_synthetic=40, n_val=10), seed=3)
    train_goods = {_good_of(s) for s in td.train}
    val_goods = {_good_of(s) for s in td.val}
    assert train_goods and val_goods and not train_goods & val_goods
    assert len(train_goods | val_goods) == GOOD and len(val_goods) == round(0.15 * GOOD)
    assert len(train_goods) == GOOD - len(val_goods)  # 40 samples: every training good image is used
    test_hashes = {s.image_hash() for s in td.test}
    assert not test_hashes & {s.image_hash() for s in td.train + td.val}
    # backgrounds: every synthetic image equals one of its good image outside the defect
    goods = {
        f"train/good/{i:03d}.png": tio.read_image(mvtec / "carpet" / "train" / "good" / f"{i:03d}.png")
        for i in range(GOOD)
    }
    for s in td.train[:10] + td.val[:5]:
        assert (s.image[~s.mask] == goods[_good_of(s)][~s.mask]).all()


def test_mvtec_seeded_and_nested(mvtec):
    a = carpet.load(mvtec, _opts(), seed=7)
    b = carpet.load(mvtec, _opts(), seed=7)
    for x, y in zip(a.train + a.val + a.test, b.train + b.val + b.test, strict=True):
        assert x.key == y.key and (x.image == y.image).all() and (x.mask == y.mask).all()
    c = carpet.load(mvtec, _opts(), seed=8)
    assert [s.key for s in c.train] != [s.key for s in a.train]
    small = carpet.load(mvtec, _opts(n_synthetic=8), seed=7)  # a smaller pool is a prefix
    for x, y in zip(small.train, a.train[:8], strict=True):
        assert x.key == y.key and (x.image == y.image).all()


def test_mvtec_max_side_downscales(mvtec):
    td = carpet.load(mvtec, _opts(max_side=48), seed=0)
    assert all(s.image.shape == (48, 48, 3) and s.mask.shape == (48, 48) for s in td.train + td.val + td.test)
    assert all(s.mask.any() for s in td.test)


def test_mvtec_grayscale_category_is_noted(mvtec):
    cat = mvtec / "carpet"
    for p in tio.list_images(cat / "train" / "good"):
        cv2.imwrite(str(p), cv2.cvtColor(tio.read_image(p), cv2.COLOR_RGB2GRAY))
    td = carpet.load(mvtec, _opts(), seed=0)
    assert any("grayscale" in n for n in td.notes)
    assert all(s.image.shape == (96, 96, 3) for s in td.train)


def test_registry_loads_carpet_with_settings(mvtec):
    td = load_task("carpet", mvtec, {"n_synthetic": 6, "n_val": 2}, seed=0)
    assert (len(td.train), len(td.val)) == (6, 2)


def test_error_missing_category_lists_available(mvtec):
    with pytest.raises(UserError, match=r"carpetz not found; available categories .*: carpet, grid"):
        carpet.load(mvtec, _opts(category="carpetz"), seed=0)
    with pytest.raises(UserError, match=r"looks like a category folder itself.*data.category: carpet"):
        carpet.load(mvtec / "carpet", _opts(), seed=0)


def test_error_missing_ground_truth(mvtec):
    shutil.rmtree(mvtec / "carpet" / "ground_truth")
    with pytest.raises(UserError, match=r"MVTec category carpet has no ground_truth/ folder"):
        carpet.load(mvtec, _opts(), seed=0)


def test_error_test_image_without_mask_names_it(mvtec):
    (mvtec / "carpet" / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(
        UserError, match=r"test image .*test/hole/001\.png has no ground-truth mask .*001_mask\.png"
    ):
        carpet.load(mvtec, _opts(), seed=0)


def test_error_mask_size_mismatch(mvtec):
    tio.write_mask(mvtec / "carpet" / "ground_truth" / "cut" / "002_mask.png", np.ones((50, 40), bool))
    with pytest.raises(
        UserError, match=r"mask .*cut/002_mask\.png is 40x50 .* its image .*cut/002\.png is 96x96"
    ):
        carpet.load(mvtec, _opts(), seed=0)


def test_error_unreadable_images(mvtec):
    (mvtec / "carpet" / "test" / "cut" / "001.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot read image file .*test/cut/001\.png"):
        carpet.load(mvtec, _opts(), seed=0)


def test_error_unreadable_good_image(mvtec):
    (mvtec / "carpet" / "train" / "good" / "004.png").write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match=r"cannot read image file .*train/good/004\.png"):
        carpet.load(mvtec, _opts(n_synthetic=40, n_val=10), seed=0)


def test_error_no_good_images(mvtec):
    shutil.rmtree(mvtec / "carpet" / "train" / "good")
    with pytest.raises(UserError, match=r"no good images in .*carpet/train/good"):
        carpet.load(mvtec, _opts(), seed=0)


@pytest.mark.parametrize(
    "setting",
    [{"n_synthetic": 0}, {"n_val": 0}, {"val_fraction": 1.0}, {"max_side": 8}, {"standin_size": 16}],
)
def test_error_bad_settings(setting):
    key = next(iter(setting))
    with pytest.raises(UserError, match=rf"data\.{key} must be"):
        carpet.load(None, _opts(**setting), seed=0)


# ---------------------------------------------------------------- procedural stand-in


SMALL = {"standin_size": 128, "standin_good": 8, "standin_test": 10, "n_synthetic": 12, "n_val": 4}


def test_standin_labelled_sized_and_seeded():
    td = carpet.load(None, carpet.Options(**SMALL), seed=0)
    assert td.data == "procedural" and td.name == "carpet"
    assert carpet.STANDIN_NOTE in td.notes and "--data-root /path/to/mvtec_anomaly_detection" in td.notes[0]
    assert "procedural carpet stand-in" in td.source
    assert (len(td.train), len(td.val), len(td.test)) == (12, 4, 10)
    for s in td.train + td.val + td.test:
        assert s.image.shape == (128, 128, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (128, 128) and s.mask.dtype == bool and s.mask.any()
    assert Counter(s.category for s in td.test) == {d: 2 for d, _ in pc.TEST_DEFECTS}
    assert not {s.category for s in td.test} & set(sd.DEFECT_KINDS)  # test is not the training process
    assert not {_good_of(s) for s in td.train} & {_good_of(s) for s in td.val}
    again = carpet.load(None, carpet.Options(**SMALL), seed=0)
    for x, y in zip(td.train + td.val + td.test, again.train + again.val + again.test, strict=True):
        assert x.key == y.key and (x.image == y.image).all() and (x.mask == y.mask).all()
    other = carpet.load(None, carpet.Options(**SMALL), seed=1)
    assert not (other.test[0].image == td.test[0].image).all()


def test_standin_defaults_mirror_mvtec_carpet():
    o = carpet.Options()
    assert (o.standin_size, o.standin_good, o.standin_test, o.n_synthetic, o.n_val) == (512, 60, 89, 500, 100)
    assert Counter(pc.test_categories(89)) == dict(pc.TEST_DEFECTS)
    assert sum(Counter(pc.test_categories(10)).values()) == 10


def test_standin_texture_is_carpet_like():
    a = pc.carpet_texture(np.random.default_rng(0), 256)
    b = pc.carpet_texture(np.random.default_rng(1), 256)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert 80 < a.mean() < 170 and 15 < a.std() < 60  # mid-tone, textured
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10  # pieces differ
    # periodic weave: strong autocorrelation at the loop period, along both axes
    g = a.mean(-1) - a.mean()
    p = round(pc._PERIOD * 256 / pc.REFERENCE_SIZE) * 2  # two loops = one weave repeat
    corr = (g[:, :-p] * g[:, p:]).mean() / g.var()
    assert corr > 0.2


@pytest.mark.parametrize("defect", [d for d, _ in pc.TEST_DEFECTS])
def test_standin_test_defects_change_the_masked_region(defect):
    for seed in range(2):
        image, mask = pc.defective_carpet(np.random.default_rng([seed, 9]), 256, defect)
        clean = pc.carpet_texture(np.random.default_rng([seed, 9]), 256)  # the same piece, before
        diff = np.abs(image.astype(int) - clean.astype(int)).max(-1)
        assert 10 < mask.sum() < 0.05 * mask.size
        assert diff[mask].mean() > 12  # visibly changed where the ground truth says
        far = cv2.dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
        assert (diff[far] == 0).all()  # and untouched away from it
