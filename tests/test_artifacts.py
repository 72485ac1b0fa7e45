"""Per-trial pictures: valid PNGs of the expected size, the features they promise, and their edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import Rectangle
from PIL import Image

from specialsam.prompts import Prompt
from specialsam.report import figures as A

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(path) -> np.ndarray:
    assert path.exists()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def _legend_texts(ax) -> list[str]:
    leg = ax.get_legend()
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


def _history(n: int = 20) -> list[dict]:
    rows = [
        {
            "epoch": e,
            "train_loss": 0.5 * 0.5 ** (e - 1),
            "val_miou": 0.7 - 0.002 * (e - 10) ** 2,
            "steps": 10 * e,
        }
        for e in range(1, n + 1)
    ]
    return rows


# ------------------------------------------------------------------------------------- training curves


def test_training_curves_png_log_scale_best_epoch_baseline_and_health(tmp_path):
    hist = _history()
    hist[4]["val_miou"] = float("nan")
    out = A.plot_training_curves(
        hist, tmp_path / "sub" / "curves.png", "vit_t", baseline_val_miou=0.6, health="collapse,spike"
    )
    assert out == tmp_path / "sub" / "curves.png"
    arr = _read_png(out)
    assert arr.shape[:2] == (round(3.8 * A.DPI), round(10.0 * A.DPI))

    fig = A.training_curves_figure(hist, "vit_t", baseline_val_miou=0.6, health="collapse,spike")
    ax_loss, ax_iou = fig.axes[:2]
    assert ax_loss.get_yscale() == "log"  # the loss spans ~5 decades
    labels = _legend_texts(ax_iou)
    assert "best 0.700 @ epoch 10" in labels
    assert "baseline 0.600" in labels
    baseline_lines = [ln for ln in ax_iou.get_lines() if ln.get_label() == "baseline 0.600"]
    assert baseline_lines and baseline_lines[0].get_linestyle() == ":"
    assert f"collapse {A.COLLAPSE_LOSS:g}" in _legend_texts(ax_loss)
    health = [t for t in fig.texts if t.get_text().startswith("health:")]
    assert len(health) == 1
    assert health[0].get_text() == "health: collapse,spike"
    assert to_rgb(health[0].get_color()) == to_rgb("red")
    # the NaN epoch is a gap, not a plotted point
    val_line = next(ln for ln in ax_iou.get_lines() if ln.get_label() == "val mIoU")
    assert 5 not in set(val_line.get_xdata()) and len(val_line.get_xdata()) == 19


def test_training_curves_linear_scale_and_no_health_text_when_ok(tmp_path):
    hist = [{"epoch": e, "train_loss": 0.5 - 0.02 * e, "val_miou": 0.5 + 0.01 * e} for e in range(1, 6)]
    fig = A.training_curves_figure(hist)
    assert fig.axes[0].get_yscale() == "linear"  # spans < 10x
    assert not [t for t in fig.texts if t.get_text().startswith("health:")]
    assert "best 0.550 @ epoch 5" in _legend_texts(fig.axes[1])
    _read_png(A.plot_training_curves(hist, tmp_path / "c.png"))


@pytest.mark.parametrize(
    "hist",
    [
        [{"epoch": 1, "train_loss": 0.3, "val_miou": 0.8}],  # single epoch
        [{"epoch": e, "train_loss": 1.0 / e, "val_miou": float("nan")} for e in range(1, 4)],  # NaN val
        [{"train_loss": None}, {"epoch": 2}, {"epoch": 3, "train_loss": 0.1, "val_miou": None}],  # gaps
        [],  # nothing yet
    ],
    ids=["single-epoch", "nan-val", "missing-keys", "empty"],
)
def test_training_curves_edge_cases_still_write_png(tmp_path, hist):
    arr = _read_png(A.plot_training_curves(hist, tmp_path / "c.png", "edge", baseline_val_miou=float("nan")))
    assert arr.shape[:2] == (304, 800)
    fig = A.training_curves_figure(hist)
    vals = [r.get("val_miou") for r in hist]
    has_val = any(v is not None and math.isfinite(v) for v in vals)
    assert any(t.startswith("best ") for t in _legend_texts(fig.axes[1])) == has_val


# ---------------------------------------------------------------------------------------- blending


def test_blend_colours_mask_pixels_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    before = img.copy()
    mask = np.zeros((20, 30), bool)
    mask[5:12, 8:20] = True
    out = A._blend(img, mask, (255, 0, 0), alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == img.shape
    np.testing.assert_array_equal(img, before)  # input untouched
    np.testing.assert_array_equal(out[~mask], img[~mask])
    expected = np.round(0.5 * img[mask].astype(float) + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
    np.testing.assert_array_equal(out[mask], expected)
    assert (out[mask] != img[mask]).any(axis=1).mean() > 0.95

    np.testing.assert_array_equal(A._blend(img, np.zeros((20, 30), bool), (255, 0, 0)), img)
    np.testing.assert_array_equal(A._blend(img, None, (255, 0, 0)), img)
    with pytest.raises(ValueError, match="does not match"):
        A._blend(img, np.ones((10, 10), bool), (255, 0, 0))


# ---------------------------------------------------------------------------------------- overlay grid


def _near(arr: np.ndarray, colour, tol: int = 4) -> np.ndarray:
    return (np.abs(arr.astype(int) - np.asarray(colour)) <= tol).all(axis=-1)


def test_overlay_grid_colours_the_right_panels(tmp_path):
    img = np.full((100, 100, 3), 128, np.uint8)
    gt = np.zeros((100, 100), bool)
    gt[:, :50] = True
    empty = np.zeros_like(gt)
    full = np.ones_like(gt)
    arr = _read_png(A.overlay_grid([img], [gt], [empty], [full], tmp_path / "g.png"))
    assert arr.shape[:2] == (round((A.PANEL_IN + A._TITLE_IN) * A.DPI), round(4 * A.PANEL_IN * A.DPI))

    w = arr.shape[1]
    col = np.arange(w)[None, :].repeat(arr.shape[0], 0) * 4 // w  # which of the 4 columns a pixel is in

    def blended(c):
        return np.round(0.55 * 128 + 0.45 * np.asarray(c)).astype(int)

    gt_px = _near(arr, blended(A.GT_COLOUR))
    sp_px = _near(arr, blended(A.SPECIALISED_COLOUR))
    bl_px = _near(arr, blended(A.BASELINE_COLOUR))
    assert gt_px.sum() > 2000 and set(np.unique(col[gt_px])) == {1}
    assert sp_px.sum() > 4000 and set(np.unique(col[sp_px])) == {3}
    assert bl_px.sum() == 0  # empty baseline mask: nothing coloured
    assert _near(arr, (128, 128, 128))[col == 0].sum() > 4000  # the plain image column stays grey


def test_overlay_grid_mixed_sizes_prompts_and_ious(tmp_path):
    rng = np.random.default_rng(1)
    sq = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    wide = rng.integers(0, 256, (80, 200, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (120, 50), dtype=np.uint8)  # 2-D grayscale is accepted
    images = [sq, wide, gray]
    gts = [np.zeros(im.shape[:2], bool) for im in images]
    gts[1][20:60, 50:150] = True
    base = [g.copy() for g in gts]
    spec = [np.ones(im.shape[:2], bool) for im in images]
    prompts = [
        (np.array([[10.0, 20.0], [0.0, 0.0]]), np.array([1, -1])),  # one point + padding token
        (np.array([[50.0, 20.0], [150.0, 60.0]]), np.array([2, 3])),  # a box
        Prompt(np.array([[25.0, 60.0], [5.0, 5.0]], np.float32), np.array([1, 0])),  # positive + negative
    ]
    ious = ([0.5, float("nan"), 0.25], [0.75, 0.8, None])
    fig = A.overlay_grid_figure(images, gts, base, spec, titles=["a", "b", "c"], prompts=prompts, ious=ious)
    axes = np.asarray(fig.axes).reshape(3, 4)
    assert [ax.get_title() for ax in axes[0]] == [
        "a",
        "ground truth",
        "baseline IoU 0.500",
        "specialised IoU 0.750",
    ]
    assert axes[1, 2].get_title() == "baseline IoU n/a"
    assert axes[2, 3].get_title() == "specialised IoU n/a"
    # data coordinates are each image's own pixels
    assert axes[1, 0].get_xlim() == (-0.5, 199.5) and axes[1, 0].get_ylim() == (79.5, -0.5)
    # padding token skipped: only the real point is drawn
    offsets = np.concatenate([c.get_offsets() for c in axes[0, 0].collections])
    np.testing.assert_allclose(offsets, [[10.0, 20.0]])
    # the box is a rectangle with the corners given
    rects = [p for p in axes[1, 3].patches if isinstance(p, Rectangle)]
    assert len(rects) == 1 and rects[0].get_xy() == (50.0, 20.0)
    assert (rects[0].get_width(), rects[0].get_height()) == (100.0, 40.0)
    # positive and negative points as separate marker sets
    assert len(axes[2, 1].collections) >= 2

    out = A.overlay_grid(images, gts, base, spec, tmp_path / "g.png", prompts=prompts, ious=ious)
    arr = _read_png(out)
    assert arr.shape[1] == round(4 * A.PANEL_IN * A.DPI)


def test_overlay_grid_without_prompts_and_with_empty_masks(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    m = np.zeros((40, 60), bool)
    fig = A.overlay_grid_figure([img, img], [m, m], [m, m], [m, m])
    assert len(fig.axes) == 8
    assert all(not ax.patches for ax in fig.axes)
    _read_png(A.overlay_grid([img], [m], [m], [m], tmp_path / "one.png"))
    arr = _read_png(A.overlay_grid([], [], [], [], tmp_path / "none.png"))
    assert arr.shape[:2] == (240, 960)


def test_overlay_grid_rejects_mismatched_inputs(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    m = np.zeros((40, 60), bool)
    with pytest.raises(ValueError, match="baseline has 0 entries"):
        A.overlay_grid([img], [m], [], [m], tmp_path / "x.png")
    with pytest.raises(ValueError, match="does not match"):
        A.overlay_grid([img], [m], [m], [np.zeros((60, 40), bool)], tmp_path / "x.png")
    with pytest.raises(ValueError, match="ious"):
        A.overlay_grid([img], [m], [m], [m], tmp_path / "x.png", ious=([0.1], []))
    assert not (tmp_path / "x.png").exists()


def test_six_row_grid_of_noise_stays_under_one_megabyte(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(6)]
    yy, xx = np.mgrid[:256, :256]
    masks = [(yy - 128) ** 2 + (xx - 40 * k - 30) ** 2 < 60**2 for k in range(6)]
    out = A.overlay_grid(images, masks, masks, masks, tmp_path / "big.png")
    assert out.stat().st_size < A.MAX_GRID_BYTES
    arr = _read_png(out)
    assert arr.shape[:2] == (round(6 * (A.PANEL_IN + A._TITLE_IN) * A.DPI), 960)
    assert (arr == 255).all(axis=-1).mean() > 0.02  # palette keeps the background pure white


# ------------------------------------------------------------------------------------------- thumbnail


def test_thumbnail_keeps_aspect_ratio_dtype_and_bool_mask():
    img = np.zeros((400, 600, 3), np.uint8)
    img[::2, ::2] = 255  # fine checkerboard-ish pattern: area averaging gives mid-grey, nearest would not
    mask = np.zeros((400, 600), bool)
    mask[100:300, 150:450] = True
    small, small_m = A.thumbnail(img, mask, max_side=256)
    assert small.shape == (171, 256, 3) and small.dtype == np.uint8
    assert small_m.shape == (171, 256) and small_m.dtype == np.bool_
    assert abs(small.shape[1] / small.shape[0] - 600 / 400) < 0.01
    assert 50 < small.mean() < 80  # a quarter of the pixels were 255: ~64 after area averaging
    assert abs(small_m.mean() - mask.mean()) < 0.02

    tall, tall_m = A.thumbnail(np.zeros((1000, 250), np.uint8), np.ones((1000, 250)), max_side=100)
    assert tall.shape == (100, 25) and tall_m.dtype == np.bool_ and tall_m.all()


def test_thumbnail_never_upscales_and_accepts_missing_mask():
    img = np.arange(50 * 40 * 3, dtype=np.uint8).reshape(50, 40, 3)
    mask = np.eye(50, 40, dtype=np.uint8)
    same, same_m = A.thumbnail(img, mask, max_side=256)
    np.testing.assert_array_equal(same, img)
    assert same is not img and same_m.dtype == np.bool_
    np.testing.assert_array_equal(same_m, mask.astype(bool))

    one_channel, none = A.thumbnail(np.zeros((512, 512, 1), np.uint8), None, max_side=64)
    assert one_channel.shape == (64, 64, 1) and none is None
    with pytest.raises(ValueError, match="does not match"):
        A.thumbnail(img, np.zeros((10, 10), bool))
