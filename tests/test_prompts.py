"""Prompt strategies on hand-made masks: where each prompt lands, and SAM's coordinate mapping."""

from __future__ import annotations

import numpy as np
import pytest

from specialsam import prompts as P


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _square(shape=(64, 64), y0=10, x0=20, size=11) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0 : y0 + size, x0 : x0 + size] = True
    return mask


def _ring(shape=(64, 64), cx=30.0, cy=34.0, r_in=10.0, r_out=16.0) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d = np.hypot(xx - cx, yy - cy)
    return (d >= r_in) & (d <= r_out)


def _c_shape() -> np.ndarray:
    """A thick 'C' opening to the right: its centre of mass lies in the empty middle."""
    mask = np.zeros((60, 60), bool)
    mask[10:50, 10:20] = True  # spine
    mask[10:20, 10:45] = True  # top arm
    mask[40:50, 10:45] = True  # bottom arm
    return mask


def _inside(mask: np.ndarray, xy: np.ndarray) -> bool:
    x, y = np.asarray(xy)
    return x == int(x) and y == int(y) and bool(mask[int(y), int(x)])


def _on_boundary(mask: np.ndarray, x: int, y: int) -> bool:
    """Inside, with a 4-neighbour outside the mask or beyond the image."""
    if not mask[y, x]:
        return False
    h, w = mask.shape
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nx, ny = x + dx, y + dy
        if not (0 <= nx < w and 0 <= ny < h) or not mask[ny, nx]:
            return True
    return False


def _points_of(prompt: P.Prompt) -> np.ndarray:
    """The positive points, after checking SAM's point convention (positives + one pad token)."""
    assert not prompt.is_box
    assert prompt.coords.dtype == np.float32 and prompt.labels.dtype == np.int64
    assert prompt.labels[-1] == P.PAD_LABEL and (prompt.labels[:-1] == P.POS_LABEL).all()
    np.testing.assert_array_equal(prompt.coords[-1], [0, 0])
    return prompt.coords[:-1]


def _box_of(prompt: P.Prompt) -> np.ndarray:
    assert prompt.is_box
    np.testing.assert_array_equal(prompt.labels, [P.BOX_TL, P.BOX_BR])
    return prompt.coords.reshape(4)


# ----------------------------------------------------------------------------- point strategies


def test_center_of_square_is_its_centre():
    pts = _points_of(P.make_prompt(_square(y0=10, x0=20, size=11), "center", _rng()))
    np.testing.assert_array_equal(pts, [[25, 15]])  # x then y


@pytest.mark.parametrize("mask", [_ring(), _c_shape()], ids=["ring", "c_shape"])
def test_center_outside_the_mask_snaps_to_nearest_mask_pixel(mask):
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    assert not mask[int(round(cy)), int(round(cx))]  # the premise: centroid falls in the hole
    (pt,) = _points_of(P.make_prompt(mask, "center", _rng()))
    assert _inside(mask, pt)
    nearest = np.sqrt(((xs - cx) ** 2 + (ys - cy) ** 2).min())
    assert np.hypot(pt[0] - cx, pt[1] - cy) == pytest.approx(nearest)


def test_c_shape_center_snaps_to_inner_edge_of_spine():
    """Worked case: centroid (x≈24.2, y=29.5) sits right of the spine (columns 10..19), so the
    nearest mask pixel is on the spine's inner edge at the centroid's height."""
    (pt,) = _points_of(P.make_prompt(_c_shape(), "center", _rng()))
    assert pt[0] == 19 and pt[1] in (29, 30)


@pytest.mark.parametrize("mask", [_square(), _ring(), _c_shape()], ids=["square", "ring", "c_shape"])
def test_edge_point_lies_on_the_boundary(mask):
    seen = set()
    for seed in range(20):
        (pt,) = _points_of(P.make_prompt(mask, "edge", _rng(seed)))
        assert _on_boundary(mask, int(pt[0]), int(pt[1]))
        seen.add((int(pt[0]), int(pt[1])))
    assert len(seen) > 1  # drawn at random along the boundary, not one fixed pixel


def test_edge_point_reproducible_under_seed():
    a = P.make_prompt(_ring(), "edge", _rng(7))
    b = P.make_prompt(_ring(), "edge", _rng(7))
    np.testing.assert_array_equal(a.coords, b.coords)


def test_grid4_on_square_is_quarter_points():
    mask = _square(y0=10, x0=10, size=21)  # box 10..30: quarter points at 15 and 25
    pts = _points_of(P.make_prompt(mask, "grid4", _rng()))
    np.testing.assert_array_equal(pts, [[15, 15], [25, 15], [15, 25], [25, 25]])


@pytest.mark.parametrize("mask", [_ring(), _c_shape()], ids=["ring", "c_shape"])
def test_grid4_points_all_inside(mask):
    pts = _points_of(P.make_prompt(mask, "grid4", _rng()))
    assert len(pts) == 4
    assert all(_inside(mask, pt) for pt in pts)


def test_grid4_snaps_points_that_fall_in_a_hole():
    """The C's quarter points at x≈28, y≈20/39 lie between its arms; they must be moved inside."""
    mask = _c_shape()
    x0, y0, x1, y1 = P.tight_box(mask)
    raw = [(x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)) for fy in (0.25, 0.75) for fx in (0.25, 0.75)]
    assert any(not mask[int(round(y)), int(round(x))] for x, y in raw)  # the premise
    pts = _points_of(P.make_prompt(mask, "grid4", _rng()))
    assert all(_inside(mask, pt) for pt in pts)


@pytest.mark.parametrize("mask", [_square(), _ring(), _c_shape()], ids=["square", "ring", "c_shape"])
def test_random3_inside_and_reproducible(mask):
    a = _points_of(P.make_prompt(mask, "random3", _rng(3)))
    b = _points_of(P.make_prompt(mask, "random3", _rng(3)))
    c = _points_of(P.make_prompt(mask, "random3", _rng(4)))
    assert a.shape == (3, 2)
    assert all(_inside(mask, pt) for pt in a)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({tuple(p) for p in a}) == 3  # distinct pixels when the mask has enough


def test_random3_on_tiny_mask_repeats_pixels():
    mask = np.zeros((8, 8), bool)
    mask[2, 3] = mask[5, 6] = True
    pts = _points_of(P.make_prompt(mask, "random3", _rng()))
    assert pts.shape == (3, 2) and all(_inside(mask, pt) for pt in pts)


# ----------------------------------------------------------------------------- box strategies


def test_tight_box_is_exact():
    mask = _c_shape()
    np.testing.assert_array_equal(_box_of(P.make_prompt(mask, "box", _rng())), [10, 10, 44, 49])


def test_loose_box_grows_20_percent_per_side():
    mask = np.zeros((100, 100), bool)
    mask[30:50, 40:50] = True  # x 40..49 (10 wide), y 30..49 (20 tall)
    box = _box_of(P.make_prompt(mask, "loose_box", _rng()))
    np.testing.assert_allclose(box, [40 - 2, 30 - 4, 49 + 2, 49 + 4], atol=1e-5)


def test_loose_box_clips_to_the_image():
    mask = np.zeros((40, 60), bool)
    mask[1:21, 50:60] = True  # near the top, touching the right edge
    box = _box_of(P.make_prompt(mask, "loose_box", _rng()))
    np.testing.assert_allclose(box, [50 - 2, 0, 59, 20 + 4], atol=1e-5)


# ----------------------------------------------------------------------------- common behaviour


@pytest.mark.parametrize("strategy", P.STRATEGIES)
def test_empty_mask_gives_none(strategy):
    assert P.make_prompt(np.zeros((16, 16), bool), strategy, _rng()) is None


@pytest.mark.parametrize("strategy", P.STRATEGIES)
def test_every_strategy_prompts_inside_the_object(strategy):
    mask = _c_shape()
    prompt = P.make_prompt(mask, strategy, _rng())
    if prompt.is_box:
        x0, y0, x1, y1 = _box_of(prompt)
        assert x0 <= 10 and y0 <= 10 and x1 >= 44 and y1 >= 49
    else:
        assert all(_inside(mask, pt) for pt in _points_of(prompt))


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown prompt strategy"):
        P.make_prompt(_square(), "centre", _rng())


# ----------------------------------------------------------------------------- training prompts


def test_training_prompt_point_fraction_zero_is_always_a_box():
    rng = _rng()
    assert all(P.training_prompt(_c_shape(), rng, point_fraction=0.0).is_box for _ in range(200))


def test_training_prompt_point_fraction_one_is_always_a_point_inside():
    rng, mask = _rng(), _c_shape()
    for _ in range(200):
        (pt,) = _points_of(P.training_prompt(mask, rng, point_fraction=1.0))
        assert _inside(mask, pt)


def test_training_prompt_mixes_at_intermediate_fraction():
    rng = _rng()
    boxes = sum(P.training_prompt(_square(), rng, point_fraction=0.3).is_box for _ in range(1000))
    assert 620 < boxes < 780  # 700 expected; binomial sd ~14.5


def test_training_prompt_box_jitter_bounds():
    mask = np.zeros((100, 100), bool)
    mask[30:50, 40:50] = True  # tight box (40, 30, 49, 49); sides 10 wide, 20 tall
    tight = np.array([40, 30, 49, 49], np.float32)
    limit = 0.1 * np.array([10, 20, 10, 20], np.float32)
    rng = _rng()
    boxes = np.array([_box_of(P.training_prompt(mask, rng, 0.0, box_jitter=0.1)) for _ in range(500)])
    dev = boxes - tight
    assert (np.abs(dev) <= limit + 1e-5).all()
    assert (np.abs(dev).max(0) > 0.8 * limit).all()  # the jitter range is actually used, per coord
    assert ((dev < 0).any(0) & (dev > 0).any(0)).all()  # in both directions


def test_training_prompt_box_jitter_clips_to_image_and_zero_jitter_is_tight():
    mask = np.zeros((40, 60), bool)
    mask[0:20, 45:60] = True  # touches the top and right edges
    rng = _rng()
    boxes = np.array([_box_of(P.training_prompt(mask, rng, 0.0, box_jitter=0.3)) for _ in range(200)])
    assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 59).all()
    assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 39).all()
    assert (boxes[:, 1] == 0).any() and (boxes[:, 2] == 59).any()  # clipping did happen
    exact = _box_of(P.training_prompt(mask, rng, 0.0, box_jitter=0.0))
    np.testing.assert_array_equal(exact, [45, 0, 59, 19])


def test_training_prompt_empty_mask_gives_none():
    assert P.training_prompt(np.zeros((8, 8), bool), _rng(), point_fraction=0.5) is None


def test_training_prompt_reproducible_under_seed():
    ra, rb = _rng(11), _rng(11)
    a = [P.training_prompt(_ring(), ra, 0.5) for _ in range(8)]
    b = [P.training_prompt(_ring(), rb, 0.5) for _ in range(8)]
    assert {p.is_box for p in a} == {True, False}  # the sequence exercises both branches
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa.coords, pb.coords)
        np.testing.assert_array_equal(pa.labels, pb.labels)


# ----------------------------------------------------------------------------- coordinates


@pytest.mark.parametrize("hw", [(480, 640), (640, 480), (333, 517), (1024, 1024), (77, 1000), (256, 255)])
@pytest.mark.parametrize("side", [256, 1024])
def test_to_model_coords_matches_resize_longest_side(hw, side):
    from segment_anything.utils.transforms import ResizeLongestSide

    h, w = hw
    rng = _rng(h + w)
    coords = np.stack([rng.uniform(0, w - 1, 5), rng.uniform(0, h - 1, 5)], 1).astype(np.float32)
    prompt = P.Prompt(coords, np.ones(5, np.int64))
    expected = ResizeLongestSide(side).apply_coords(coords, (h, w))
    np.testing.assert_allclose(P.to_model_coords(prompt, (h, w), side), expected, rtol=1e-6, atol=1e-4)


def test_to_model_coords_maps_the_image_corner_to_the_resized_corner():
    prompt = P.Prompt(np.array([[640, 480]], np.float32), np.array([1]))
    np.testing.assert_allclose(P.to_model_coords(prompt, (480, 640), 1024), [[1024, 768]])
