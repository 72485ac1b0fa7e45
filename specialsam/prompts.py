"""Prompt strategies: one definition used by training and by evaluation.

The 75% baseline threshold means nothing without the prompt that produced the baseline, so every
number in this project names its strategy. Coordinates are (x, y) in the *original image's*
pixels; ``to_model_coords`` maps them into the model's resized input. Every prompt follows SAM's
token convention: points carry one padding token (label -1), a box is two corners (labels 2, 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES: tuple[str, ...] = ("center", "edge", "grid4", "random3", "box", "loose_box", "extreme4")
"""centre of mass (snapped inside), a boundary point, a 2x2 grid of points snapped inside,
three random points, the tight box, the box grown by 20% of its size on every side, the four
extreme points (top, bottom, left-most, right-most mask pixels: DEXTR's clicks, which annotators
place faster than a box and which beat loose boxes)."""

EXTREME_JITTER_PX = 5
"""Training jitter of ``extreme4``: each point is any mask pixel within this many pixels of its
extreme coordinate (DEXTR's ``pert=5``); evaluation uses the exact extreme (``jitter_px=0``)."""

PAD_LABEL, NEG_LABEL, POS_LABEL, BOX_TL, BOX_BR = -1, 0, 1, 2, 3


@dataclass(frozen=True)
class Prompt:
    coords: np.ndarray  # (K, 2) float32, x then y, original-image pixels
    labels: np.ndarray  # (K,) int64

    @property
    def is_box(self) -> bool:
        return bool((self.labels == BOX_TL).any())


def _points(xy: np.ndarray) -> Prompt:
    coords = np.concatenate([np.asarray(xy, np.float32).reshape(-1, 2), np.zeros((1, 2), np.float32)])
    labels = np.concatenate([np.full(len(coords) - 1, POS_LABEL), [PAD_LABEL]]).astype(np.int64)
    return Prompt(coords, labels)


def _box(x0: float, y0: float, x1: float, y1: float) -> Prompt:
    return Prompt(np.array([[x0, y0], [x1, y1]], np.float32), np.array([BOX_TL, BOX_BR], np.int64))


def points_prompt(xy) -> Prompt:
    """Foreground points ``[[x, y], ...]`` (original-image pixels) as SAM's prompt tokens."""
    return _points(np.asarray(xy))


def box_prompt(x0: float, y0: float, x1: float, y1: float) -> Prompt:
    """A box (original-image pixels) as SAM's two corner tokens."""
    return _box(x0, y0, x1, y1)


def _snap_inside(mask: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """The mask pixel nearest to (x, y); (x, y) itself when it is inside."""
    h, w = mask.shape
    xi, yi = int(round(min(max(x, 0), w - 1))), int(round(min(max(y, 0), h - 1)))
    if mask[yi, xi]:
        return float(xi), float(yi)
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))
    return float(xs[i]), float(ys[i])


def tight_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())


def boundary_pixels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask pixels with at least one 4-neighbour outside the mask (image border counts as outside)."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return np.nonzero(mask & ~inner)


def extreme_points(
    mask: np.ndarray, rng: np.random.Generator | None = None, jitter_px: int = 0
) -> np.ndarray:
    """(4, 2) x, y of the top, bottom, left-most and right-most mask pixels.

    Exact (``jitter_px=0``): among the pixels on the extreme row/column, the middle one (sorted
    along the other axis), so the points are deterministic. With ``jitter_px`` and ``rng``: a random
    mask pixel at most ``jitter_px`` from the extreme, as DEXTR trains; points always stay inside."""
    ys, xs = np.nonzero(mask)
    out = []
    for along, other, sign in ((ys, xs, 1), (ys, xs, -1), (xs, ys, 1), (xs, ys, -1)):
        key = sign * along  # top: smallest y, bottom: largest y, left: smallest x, right: largest x
        near = np.nonzero(key <= key.min() + jitter_px)[0]
        if jitter_px and rng is not None:
            i = int(near[rng.integers(len(near))])
        else:
            exact = near[np.argsort(other[near], kind="stable")]
            i = int(exact[(len(exact) - 1) // 2])
        out.append((xs[i], ys[i]))
    return np.asarray(out, np.float32)


def make_prompt(
    mask: np.ndarray, strategy: str, rng: np.random.Generator, jitter_px: int = 0
) -> Prompt | None:
    """The prompt of ``strategy`` for ``mask``; None when the mask is empty (caller counts skips).

    ``jitter_px`` perturbs the strategies that have a training form (``extreme4``: see
    :data:`EXTREME_JITTER_PX`); evaluation prompts use 0."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    if strategy == "extreme4":
        return _points(extreme_points(mask, rng, jitter_px))
    if strategy == "center":
        ys, xs = np.nonzero(mask)
        return _points(_snap_inside(mask, xs.mean(), ys.mean()))
    if strategy == "edge":
        ys, xs = boundary_pixels(mask)
        i = int(rng.integers(len(xs)))
        return _points((xs[i], ys[i]))
    if strategy == "grid4":
        x0, y0, x1, y1 = tight_box(mask)
        pts = [
            _snap_inside(mask, x0 + fx * (x1 - x0), y0 + fy * (y1 - y0))
            for fy in (0.25, 0.75)
            for fx in (0.25, 0.75)
        ]
        return _points(np.array(pts))
    if strategy == "random3":
        ys, xs = np.nonzero(mask)
        idx = rng.choice(len(xs), size=3, replace=len(xs) < 3)
        return _points(np.stack([xs[idx], ys[idx]], 1))
    if strategy == "box":
        return _box(*tight_box(mask))
    if strategy == "loose_box":
        h, w = mask.shape
        x0, y0, x1, y1 = tight_box(mask)
        dx, dy = 0.2 * (x1 - x0 + 1), 0.2 * (y1 - y0 + 1)
        return _box(max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, w - 1), min(y1 + dy, h - 1))
    raise ValueError(f"unknown prompt strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def training_prompt(
    mask: np.ndarray,
    rng: np.random.Generator,
    point_fraction: float,
    box_jitter: float = 0.1,
    extreme_fraction: float = 0.0,
) -> Prompt | None:
    """SAM-style training prompt: with probability ``extreme_fraction`` the four extreme points
    jittered by :data:`EXTREME_JITTER_PX` (``extreme4``'s training form, as DEXTR), else with
    probability ``point_fraction`` one random point inside the mask, else the tight box with each
    coordinate jittered by up to ``box_jitter`` of its side. (No draw is spent on extreme points
    when ``extreme_fraction`` is 0, so earlier prompt sequences are unchanged.)"""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return None
    if extreme_fraction and rng.random() < extreme_fraction:
        return _points(extreme_points(mask, rng, EXTREME_JITTER_PX))
    if rng.random() < point_fraction:
        ys, xs = np.nonzero(mask)
        i = int(rng.integers(len(xs)))
        return _points((xs[i], ys[i]))
    h, w = mask.shape
    x0, y0, x1, y1 = tight_box(mask)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    j = rng.uniform(-box_jitter, box_jitter, 4) * np.array([bw, bh, bw, bh])
    return _box(
        float(np.clip(x0 + j[0], 0, w - 1)),
        float(np.clip(y0 + j[1], 0, h - 1)),
        float(np.clip(x1 + j[2], 0, w - 1)),
        float(np.clip(y1 + j[3], 0, h - 1)),
    )


def stack_prompts(prompts: list[Prompt]) -> tuple[np.ndarray, np.ndarray]:
    """(B, K, 2) coordinates and (B, K) labels of prompts of different lengths, each padded to the
    longest with SAM's padding token (label -1); prompts of one length are simply stacked."""
    k = max(len(p.labels) for p in prompts)
    coords = np.zeros((len(prompts), k, 2), np.float32)
    labels = np.full((len(prompts), k), PAD_LABEL, np.int64)
    for i, p in enumerate(prompts):
        coords[i, : len(p.labels)] = p.coords
        labels[i, : len(p.labels)] = p.labels
    return coords, labels


def to_model_coords(prompt: Prompt, original_hw: tuple[int, int], model_side: int) -> np.ndarray:
    """Map (x, y) from original-image pixels to the resized model input (SAM's ResizeLongestSide)."""
    h, w = original_hw
    scale = model_side / max(h, w)
    new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)  # as ResizeLongestSide rounds
    return prompt.coords * np.array([new_w / w, new_h / h], np.float32)
