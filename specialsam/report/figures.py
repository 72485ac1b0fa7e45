"""Per-trial pictures logged to MLflow: training curves, a mask-overlay grid, storage thumbnails.

Everything is drawn on an Agg canvas through ``matplotlib.figure.Figure`` (no pyplot, no global
backend state), so the functions are safe inside Ray workers. Each drawing function writes a PNG
and returns its path. They run once per trial, so they are kept cheap: small figures, dpi 80.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from specialsam.prompts import BOX_BR, BOX_TL, NEG_LABEL, POS_LABEL

DPI = 80
PANEL_IN = 3.0
"""Inches per overlay panel; at DPI 80 a panel is 240 px."""
MAX_GRID_BYTES = 1_000_000
"""An overlay grid larger than this on disk is re-saved with an adaptive 256-colour palette."""
COLLAPSE_LOSS = 0.01
"""The loss-collapse level the health flags use (drawn when the trial was flagged for it)."""

GT_COLOUR = (40, 200, 40)
BASELINE_COLOUR = (255, 140, 0)
SPECIALISED_COLOUR = (30, 144, 255)
ALPHA = 0.45
_TITLE_IN = 0.3


# --------------------------------------------------------------------------------------------- helpers


def _figure(size: tuple[float, float]) -> Figure:
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, max_bytes: int | None = None) -> Path:
    """Write ``fig`` as a PNG of exactly figsize * DPI pixels.

    With ``max_bytes`` (overlay grids: photographic content compresses poorly) the figure is drawn
    once and encoded by Pillow at zlib level 1; when that exceeds ``max_bytes`` it is re-encoded
    with an adaptive palette (octree, Floyd-Steinberg dithered; 256 colours, fewer if still too
    big). Drawing once and the fast first encode save ~0.7 s per trial against matplotlib's own
    level-6 PNG (benchmarks/overhead.py: plotting was the largest part of a trial's overhead).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if max_bytes is None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI)
        path.write_bytes(buf.getvalue())
        return path
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    data = _encode_png(rgb, compress_level=1)
    if len(data) > max_bytes:
        data = _palette_png(rgb, max_bytes)
    path.write_bytes(data)
    return path


def _encode_png(image, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **options)
    return buf.getvalue()


def _palette_png(rgb, max_bytes: int) -> bytes:
    """``rgb`` (a Pillow RGB image) as a palette PNG of at most ``max_bytes`` if it can be done."""
    from PIL import Image

    out = b""
    for colours in (256, 128, 64, 32, 16):
        pal = rgb.quantize(colours, method=Image.Quantize.FASTOCTREE)
        palette = np.asarray(pal.getpalette()[: 3 * colours], np.int64).reshape(-1, 3)
        near_white = int(np.argmin(((palette - 255) ** 2).sum(1)))
        if ((palette[near_white] - 255) ** 2).sum() <= 3 * 6**2:  # keep the page background pure white
            palette[near_white] = 255
            pal.putpalette(palette.astype(np.uint8).ravel().tolist())
        q = rgb.quantize(palette=pal, dither=Image.Dither.FLOYDSTEINBERG)
        out = _encode_png(q, optimize=True)
        if len(out) <= max_bytes:
            break
    return out


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxW / HxWx1 / HxWx3 / HxWx4, uint8 or float in [0, 1] -> HxWx3 uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"image must be HxW or HxWxC, got shape {img.shape}")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    elif img.shape[2] != 3:
        raise ValueError(f"image must have 1, 3 or 4 channels, got shape {img.shape}")
    if img.dtype != np.uint8:
        f = img.astype(np.float64)
        if np.nanmax(f, initial=0.0) <= 1.0:
            f = f * 255.0
        img = np.clip(np.nan_to_num(f), 0, 255).round().astype(np.uint8)
    return img


def _blend(
    image: np.ndarray, mask: np.ndarray | None, colour: Sequence[int], alpha: float = ALPHA
) -> np.ndarray:
    """A copy of ``image`` (HxWx3 uint8) with ``colour`` alpha-blended over the pixels where ``mask`` is set.

    Pixels outside the mask are returned unchanged; ``mask`` None or empty returns a plain copy.
    """
    img = _as_rgb_uint8(image)
    out = img.copy()
    if mask is None:
        return out
    m = np.asarray(mask).astype(bool)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match image shape {img.shape[:2]}")
    if not m.any():
        return out
    col = np.asarray(colour, np.float64).reshape(1, 3)
    px = img[m].astype(np.float64)
    out[m] = np.clip((1.0 - alpha) * px + alpha * col, 0, 255).round().astype(np.uint8)
    return out


def _draw_contour(
    ax: Any, mask: np.ndarray | None, colour: Sequence[int], extent: tuple | None = None
) -> None:
    """The mask's outline; ``extent`` (as for imshow, origin upper) maps a resized mask onto image pixels."""
    if mask is None:
        return
    m = np.asarray(mask).astype(bool)
    if not m.any() or m.all():  # no 0.5 level inside the array: nothing to draw (and no warning)
        return
    ax.contour(
        m.astype(np.float32),
        levels=[0.5],
        colors=[tuple(np.asarray(colour) / 255.0)],
        linewidths=1.2,
        origin="upper",
        extent=extent,
    )


def _split_prompt(prompt: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(coords (K,2), labels (K,)) from a Prompt-like object, a (coords, labels) pair, a bare (K,2) array of
    positive points, or a bare xyxy box of 4 numbers."""
    if prompt is None:
        return None
    if hasattr(prompt, "coords") and hasattr(prompt, "labels"):
        coords, labels = prompt.coords, prompt.labels
    elif isinstance(prompt, tuple) and len(prompt) == 2:
        coords, labels = prompt
    else:
        arr = np.asarray(prompt, np.float64)
        if arr.size == 4 and arr.ndim == 1:
            coords = arr.reshape(2, 2)
            labels = np.array([BOX_TL, BOX_BR])
        else:
            coords = arr.reshape(-1, 2)
            labels = np.full(len(coords), POS_LABEL)
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(coords) != len(labels):
        raise ValueError(f"prompt has {len(coords)} coordinates but {len(labels)} labels")
    return coords, labels


def _draw_prompt(ax: Any, prompt: Any) -> None:
    parts = _split_prompt(prompt)
    if parts is None:
        return
    coords, labels = parts
    tl, br = coords[labels == BOX_TL], coords[labels == BOX_BR]
    for (x0, y0), (x1, y1) in zip(tl, br):
        ax.add_patch(
            Rectangle((min(x0, x1), min(y0, y1)), abs(x1 - x0), abs(y1 - y0), fill=False, ec="yellow", lw=1.5)
        )
    pos, neg = coords[labels == POS_LABEL], coords[labels == NEG_LABEL]
    if len(pos):
        ax.scatter(pos[:, 0], pos[:, 1], marker="*", s=90, c="lime", edgecolors="black", linewidths=0.7)
    if len(neg):
        ax.scatter(neg[:, 0], neg[:, 1], marker="X", s=60, c="red", edgecolors="black", linewidths=0.7)
    # Padding tokens (label -1) and any other label are not drawn.


def _iou_text(value: float | None) -> str:
    if value is None or not math.isfinite(float(value)):
        return "IoU n/a"
    return f"IoU {float(value):.3f}"


def _finite(values: Sequence[Any]) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            pass
    return out


# ------------------------------------------------------------------------------------- training curves


def plot_training_curves(
    history: Sequence[dict],
    path: Path,
    title: str = "",
    *,
    baseline_val_miou: float | None = None,
    health: str = "ok",
) -> Path:
    """Two panels: train loss per epoch (log scale when it spans more than 10x) and validation mIoU per
    epoch, with the best epoch marked on both, the baseline val mIoU as a dotted line when given, and the
    trial's health flags (comma-separated, e.g. "collapse,spike") in red when they are not "ok". Rows
    missing a key, or holding None/NaN, leave a gap; an empty history still writes a PNG that says so.
    The PNG is 800 x 304 px."""
    fig = training_curves_figure(history, title, baseline_val_miou=baseline_val_miou, health=health)
    return _save(fig, path)


def training_curves_figure(
    history: Sequence[dict],
    title: str = "",
    *,
    baseline_val_miou: float | None = None,
    health: str = "ok",
) -> Figure:
    """The figure ``plot_training_curves`` saves (axes[0] loss, axes[1] val mIoU)."""
    rows = list(history)
    epochs = _finite([r.get("epoch", i + 1) for i, r in enumerate(rows)])
    epochs = np.where(np.isfinite(epochs), epochs, np.arange(1, len(rows) + 1))
    loss = _finite([r.get("train_loss") for r in rows])
    miou = _finite([r.get("val_miou") for r in rows])

    fig = _figure((10.0, 3.8))
    ax_loss, ax_iou = fig.subplots(1, 2)

    ok = np.isfinite(loss)
    ax_loss.plot(epochs[ok], loss[ok], "o-", ms=3, color="tab:blue", label="train loss")
    pos = loss[ok & (loss > 0)]
    if len(pos) == ok.sum() and len(pos) and pos.max() > 10.0 * pos.min():
        ax_loss.set_yscale("log")
    flags = [f.strip() for f in str(health or "ok").split(",") if f.strip()]
    bad = [f for f in flags if f.lower() != "ok"]
    if any("collapse" in f.lower() for f in bad):
        ax_loss.axhline(COLLAPSE_LOSS, color="tab:red", ls="--", lw=0.8, label=f"collapse {COLLAPSE_LOSS:g}")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss")
    ax_loss.set_title("train loss")

    vok = np.isfinite(miou)
    ax_iou.plot(epochs[vok], miou[vok], "o-", ms=3, color="tab:green", label="val mIoU")
    if baseline_val_miou is not None and math.isfinite(float(baseline_val_miou)):
        b = float(baseline_val_miou)
        ax_iou.axhline(b, color="gray", ls=":", lw=1.5, label=f"baseline {b:.3f}")
    if vok.any():
        best = int(np.nanargmax(np.where(vok, miou, -np.inf)))
        be, bv = epochs[best], miou[best]
        ax_iou.plot([be], [bv], "*", ms=13, color="tab:red", label=f"best {bv:.3f} @ epoch {be:g}", zorder=5)
        for ax in (ax_loss, ax_iou):
            ax.axvline(be, color="tab:red", ls="--", lw=0.7, alpha=0.6)
    ax_iou.set_xlabel("epoch")
    ax_iou.set_ylabel("val mIoU")
    ax_iou.set_title("validation mIoU")

    for ax, has in ((ax_loss, ok.any()), (ax_iou, vok.any() or baseline_val_miou is not None)):
        if has:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    if len(epochs) and np.all(epochs == np.round(epochs)):
        for ax in (ax_loss, ax_iou):
            ax.xaxis.get_major_locator().set_params(integer=True)

    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05 if bad else 0, 1, 1))
    if bad:
        fig.text(0.01, 0.01, "health: " + ",".join(bad), color="red", fontsize=9, weight="bold")
    return fig


# ---------------------------------------------------------------------------------------- overlay grid


def overlay_grid(
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    specialised: Sequence[np.ndarray],
    path: Path,
    titles: Sequence[str] | None = None,
    prompts: Sequence[Any] | None = None,
    ious: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Path:
    """One row per image; columns image | ground truth | baseline | specialised.

    Masks are semi-transparent colour overlays with their contour. ``prompts[i]`` is ``(coords, labels)``
    in image ``i``'s pixels with SAM labels (1 positive point, 0 negative point, -1 padding, skipped;
    2/3 box corners), or a Prompt, or None; it is drawn on every panel of its row. ``ious`` is
    (baseline IoUs, specialised IoUs) per image, shown in those columns' titles. Images may differ in
    size; each mask must match its image. Panels are ~3 in at dpi 80, so a 6-row grid stays < 1 MB.
    """
    fig = overlay_grid_figure(images, gts, baseline, specialised, titles=titles, prompts=prompts, ious=ious)
    return _save(fig, path, max_bytes=MAX_GRID_BYTES)


def overlay_grid_figure(
    images: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    baseline: Sequence[np.ndarray],
    specialised: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    prompts: Sequence[Any] | None = None,
    ious: tuple[Sequence[float], Sequence[float]] | None = None,
) -> Figure:
    """The figure ``overlay_grid`` saves: axes[i, j] is row i, column j."""
    n = len(images)
    for name, seq in (("gts", gts), ("baseline", baseline), ("specialised", specialised)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} images")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries for {n} images")
    if prompts is not None and len(prompts) != n:
        raise ValueError(f"prompts has {len(prompts)} entries for {n} images")
    if ious is not None and (len(ious) != 2 or len(ious[0]) != n or len(ious[1]) != n):
        raise ValueError("ious must be (baseline IoUs, specialised IoUs), one per image each")

    if n == 0:
        fig = _figure((4 * PANEL_IN, PANEL_IN))
        fig.text(0.5, 0.5, "no images", ha="center", va="center")
        return fig

    # Row heights follow each row's aspect ratio so landscape images leave no blank bands.
    aspects = [float(np.clip(np.asarray(im).shape[0] / np.asarray(im).shape[1], 0.4, 2.0)) for im in images]
    heights = [PANEL_IN * a + _TITLE_IN for a in aspects]
    fig = _figure((4 * PANEL_IN, sum(heights)))
    axes = np.asarray(fig.subplots(n, 4, squeeze=False, gridspec_kw={"height_ratios": heights}))
    # Draw at about twice the panel's pixel size: cheap for 1024 px inputs, still sharp on screen.
    draw_side = int(2 * PANEL_IN * DPI)

    for i in range(n):
        full = _as_rgb_uint8(images[i])
        h, w = full.shape[:2]
        masks = [None, gts[i], baseline[i], specialised[i]]
        for name, m in zip(("gt", "baseline", "specialised"), masks[1:]):
            if m is not None and np.shape(m) != (h, w):
                raise ValueError(f"row {i}: {name} mask shape {np.shape(m)} does not match image {(h, w)}")
        img, _ = thumbnail(full, None, draw_side)
        small = [None if m is None else _resize_mask(m, img.shape[:2]) for m in masks]
        extent = (-0.5, w - 0.5, h - 0.5, -0.5)  # data coordinates stay in the original image's pixels
        labels = [titles[i] if titles is not None else "image", "ground truth", "baseline", "specialised"]
        if ious is not None:
            labels[2] = f"baseline {_iou_text(ious[0][i])}"
            labels[3] = f"specialised {_iou_text(ious[1][i])}"
        colours = [None, GT_COLOUR, BASELINE_COLOUR, SPECIALISED_COLOUR]
        for j in range(4):
            ax = axes[i, j]
            shown = img if small[j] is None else _blend(img, small[j], colours[j])
            ax.imshow(shown, extent=extent, interpolation="antialiased")
            _draw_contour(ax, small[j], colours[j] or (0, 0, 0), extent)
            if prompts is not None:
                _draw_prompt(ax, prompts[i])
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_title(labels[j], fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout(pad=0.4)
    return fig


# ------------------------------------------------------------------------------------------- thumbnail


def thumbnail(
    image: np.ndarray, mask: np.ndarray | None, max_side: int = 256
) -> tuple[np.ndarray, np.ndarray | None]:
    """Downscale (never upscale) so the longer side is at most ``max_side``, keeping the aspect ratio:
    area interpolation for the image (dtype kept), nearest for the mask (returned as bool)."""
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    img = np.asarray(image)
    h, w = img.shape[:2]
    m = None if mask is None else np.asarray(mask).astype(bool)
    if m is not None and m.shape != (h, w):
        raise ValueError(f"mask shape {m.shape} does not match image shape {(h, w)}")
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return img.copy(), None if m is None else m.copy()
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    if img.ndim == 3 and small.ndim == 2:  # cv2 drops a trailing channel axis of size 1
        small = small[..., None]
    return small, None if m is None else _resize_mask(m, (nh, nw))


def _resize_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a mask to ``hw`` (rows, cols), returned as bool."""
    m = np.asarray(mask).astype(bool)
    if m.shape == tuple(hw):
        return m.copy()
    return cv2.resize(m.astype(np.uint8), (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST_EXACT).astype(bool)
