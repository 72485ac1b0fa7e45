"""Wood mosaics: layouts, modes, texture-level splits, clustering, real folder layout, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from specialsam.errors import UserError
from specialsam.tasks import load_task, wood
from specialsam.tasks.io import write_image
from specialsam.tasks.splits import stable_rng
from specialsam.tasks.texture_features import kmeans

SMALL = dict(mosaic_size=64, tile_size=32, n_textures=40, n_clusters=5, n_train=12, n_val=4, n_test=8)


@pytest.fixture(scope="module")
def standard() -> wood.WoodTaskData:
    return wood.load(None, wood.Options(**SMALL), seed=3)


def _split_of(key: str) -> str:
    return key.split("/")[2]


def test_standin_is_labelled_procedural_and_deterministic(standard):
    again = wood.load(None, wood.Options(**SMALL), seed=3)
    assert standard.data == "procedural" and "procedural" in standard.source
    assert any("--data-root" in n for n in standard.notes)
    for a, b in zip(standard.train + standard.test, again.train + again.test, strict=True):
        assert a.key == b.key and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    other = wood.load(None, wood.Options(**SMALL), seed=4)
    assert not np.array_equal(standard.train[0].image, other.train[0].image)
    assert [len(standard.train), len(standard.val), len(standard.test)] == [12, 4, 8]
    s = standard.train[0]
    assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8 and s.mask.shape == (64, 64)


def test_textures_never_shared_across_splits(standard):
    ts = standard.texture_splits
    assert set(ts["train"]).isdisjoint(ts["val"]) and set(ts["train"]).isdisjoint(ts["test"])
    assert set(ts["val"]).isdisjoint(ts["test"])
    assert sum(len(v) for v in ts.values()) == SMALL["n_textures"]
    samples = standard.train + standard.val + standard.test + sum(standard.extra_tests.values(), [])
    for s in samples:
        assert set(standard.mosaics[s.key].textures) <= set(ts[_split_of(s.key)]), s.key


def test_standard_mode_neighbours_differ_in_cluster_and_target_is_unique(standard):
    checked = 0
    for s in standard.train + standard.test:
        info = standard.mosaics[s.key]
        available = {standard.texture_clusters[t] for t in standard.texture_splits[_split_of(s.key)]}
        if len(available) >= 5:  # target's cluster + 4 colours: any tile map can be coloured
            checked += 1
            for a, b in info.adjacent:
                assert info.clusters[a] != info.clusters[b]
        tc = info.clusters[info.target]
        assert [c for i, c in enumerate(info.clusters) if i != info.target].count(tc) == 0
        assert s.category == f"cluster{tc}"
        # the target's texture appears once
        assert info.textures.count(info.textures[info.target]) == 1
    assert checked >= 12


def test_hard_mode_tiles_share_one_cluster(standard):
    hard = standard.extra_tests["hard"]
    assert len(hard) == SMALL["n_test"]
    for s in hard:
        info = standard.mosaics[s.key]
        assert len(set(info.clusters)) == 1
        assert info.textures.count(info.textures[info.target]) == 1
    # mode=hard makes it the main set, with standard as the extra one
    d = wood.load(None, wood.Options(**{**SMALL, "mode": "hard"}), seed=3)
    assert set(d.extra_tests) == {"standard", "fixed-layout"}
    assert all(len(set(d.mosaics[s.key].clusters)) == 1 for s in d.train)


def test_other_layout_is_an_extra_test_set_of_the_same_mode(standard):
    fixed = standard.extra_tests["fixed-layout"]
    assert len(fixed) == SMALL["n_test"]
    for s in fixed:
        info = standard.mosaics[s.key]
        assert s.key.startswith("wood/fixed-standard/test/")
        assert len(info.clusters) == 4  # the study's 2x2 grid (64 px mosaic, 32 px tiles)
        assert info.clusters.count(info.clusters[info.target]) == 1
        assert s.mask.sum() == 32 * 32 and set(info.textures) <= set(standard.texture_splits["test"])
    d = wood.load(None, wood.Options(**{**SMALL, "layout": "fixed"}), seed=3)
    assert set(d.extra_tests) == {"hard", "random-layout"}
    d = wood.load(None, wood.Options(**{**SMALL, "tile_size": 48}), seed=3)  # no 2x2 grid of 48 in 64
    assert set(d.extra_tests) == {"hard"} and any("no 'fixed-layout'" in n for n in d.notes)


def test_random_layout_varies_tile_count_and_seams_are_wavy(standard):
    counts = {len(standard.mosaics[s.key].clusters) for s in standard.train + standard.test}
    assert counts <= set(range(2, 7)) and len(counts) >= 3
    rng = stable_rng(0, "t")
    for _ in range(10):
        labels = wood.random_layout(rng, 96, 4, 0.05, 0.05)
        assert 2 <= labels.max() + 1 <= 4
        for r in range(labels.max() + 1):
            m = labels == r
            ys, xs = np.nonzero(m)
            bbox = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            assert m.sum() < bbox  # a straight cut would leave rectangles
    # a target is one whole tile region: its mask is not its bounding box either
    s = standard.train[0]
    ys, xs = np.nonzero(s.mask)
    assert s.mask.sum() < (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


def test_fixed_layout_gives_exact_quadrants():
    d = wood.load(None, wood.Options(**{**SMALL, "layout": "fixed"}), seed=1)
    quads = [np.zeros((64, 64), bool) for _ in range(4)]
    for i, (y, x) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        quads[i][y : y + 32, x : x + 32] = True
    for s in d.train + d.test:
        assert any(np.array_equal(s.mask, q) for q in quads)
        info = d.mosaics[s.key]
        assert len(info.clusters) == 4 and set(info.adjacent) == {(0, 1), (0, 2), (1, 3), (2, 3)}
    assert any("fill the clicked quadrant" in n for n in d.notes)


def test_kmeans_is_seeded_and_canonical():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, (10, 2)) for c in (0, 5, 10)])
    labels, _ = kmeans(x, 3, seed=1)
    assert np.array_equal(labels, np.repeat([0, 1, 2], 10))
    assert np.array_equal(kmeans(x[::-1], 3, seed=7)[0], np.repeat([0, 1, 2], 10))


def _write_wood_folder(root: Path, n: int) -> list[str]:
    fams = list(wood.FAMILIES)
    names = []
    (root / "images" / "images").mkdir(parents=True)
    for i in range(n):
        fam = fams[i % 3]
        img = wood.procedural_wood(stable_rng(9, i), 80, fam)[:, :72]  # non-square photographs
        name = f"{i:03d}.jpg"
        write_image(root / "images" / "images" / name, img)
        names.append((name, fam))
    with open(root / "wood.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "filename", "species"])
        for i, (name, fam) in enumerate(names):
            w.writerow([i, name, fam])
    return [n for n, _ in names]


def test_real_layout_with_species_csv(tmp_path):
    names = _write_wood_folder(tmp_path, 24)
    shutil.copy(tmp_path / "images" / "images" / names[0], tmp_path / "images" / "images" / "zz-copy.jpg")
    opts = {**SMALL, "n_clusters": 3, "n_textures": 80}  # n_textures only matters for the stand-in
    d = load_task("wood", tmp_path, opts, seed=0)
    assert d.data == "real" and d.source.endswith("images")
    assert any("species for 24 of 25 images, 3 species" in n for n in d.notes)
    assert any("cluster purity" in n for n in d.notes)
    dup = [n for n in d.notes if "exact-duplicate" in n]
    assert dup and "zz-copy.jpg = 000.jpg" in dup[0]
    all_tex = sum(d.texture_splits.values(), [])
    assert "zz-copy.jpg" not in all_tex and len(all_tex) == 24
    assert all(s.image.shape == (64, 64, 3) for s in d.train)


def test_too_few_images_is_a_user_error_naming_folder_and_counts(tmp_path):
    _write_wood_folder(tmp_path, 10)
    with pytest.raises(UserError) as e:
        wood.load(tmp_path, wood.Options(**{**SMALL, "n_clusters": 3}), seed=0)
    msg = str(e.value)
    assert str(tmp_path / "images" / "images") in msg and "10 images" in msg and "12" in msg


@pytest.mark.parametrize(
    "bad", [{"mode": "easy"}, {"layout": "grid"}, {"layout": "fixed", "tile_size": 48}, {"min_tiles": 1}]
)
def test_bad_options_name_the_setting(bad):
    with pytest.raises(UserError, match=f"data.{next(iter(bad)) if 'tile_size' not in bad else 'tile_size'}"):
        wood.load(None, wood.Options(**{**SMALL, **bad}), seed=0)


def test_texture_split_leaves_two_textures_of_a_cluster_in_val_and_test():
    # 20 textures = 4 x 5 clusters, unevenly clustered: hard mosaics must still be buildable
    sizes = [5, 5, 4, 4, 2]
    textures = [
        wood.Texture(f"t{c}-{i}", np.zeros((1, 1, 3), np.uint8), cluster=c)
        for c, n in enumerate(sizes)
        for i in range(n)
    ]
    split = wood._split_textures(textures, wood.Options(), seed=0)
    assert sorted(sum(split.values(), [])) == sorted(t.key for t in textures)
    for name in ("val", "test"):
        per_cluster = [sum(k.startswith(f"t{c}-") for k in split[name]) for c in range(5)]
        assert max(per_cluster) >= 2, (name, per_cluster)
    for c in range(4):  # every cluster with 3+ textures keeps training textures
        assert any(k.startswith(f"t{c}-") for k in split["train"])


def test_descriptor_clusters_recover_the_stand_ins_wood_families(monkeypatch):
    """Standard mosaics rely on clusters of look-alike woods: with colour weighted 2:1 the
    descriptor recovers the stand-in's five families at the shipped settings (sweeps/wood.yaml:
    80 textures, 256 px); with equal block weights it did not (purity 0.75)."""
    from specialsam.tasks import texture_features
    from specialsam.tasks.wood import Options, cluster_purity, procedural_textures

    tex = procedural_textures(Options(mosaic_size=256, n_textures=80), seed=0)

    def purity() -> float:
        for t, c in zip(tex, texture_features.cluster_textures([t.image for t in tex], 5, seed=0)):
            t.cluster = int(c)
        return cluster_purity(tex)

    weighted = purity()
    monkeypatch.setattr(texture_features, "BLOCK_WEIGHTS", dict.fromkeys(texture_features.BLOCKS, 1.0))
    assert weighted >= 0.95 and weighted > purity() + 0.1
