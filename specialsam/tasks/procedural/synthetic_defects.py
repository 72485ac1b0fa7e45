"""The study's synthetic-defect generator: one defect injected into a defect-free image.

Three defect kinds, named as the sample category:

``patch``
    A rectangle of width and height each 20-60 px is cut from one place of the image and pasted
    elsewhere (at a non-overlapping place when the image has room), then either darkened to
    40-70% brightness (all channels multiplied by one factor) or given additive Gaussian noise
    (per pixel and channel, sigma 15-35 grey levels; the study does not state sigma, this is
    our choice). Each mode has probability 1/2.
``line``
    A thin straight dark line, 2-5 px thick, in a colour whose channels are each drawn from
    0-50, from a random point inside the image at a random angle, 100-500 px long (the study
    gives no length; ours), clipped at the image border. Rasterised geometrically: the pixels
    whose centre lies within thickness / 2 of the segment (OpenCV's thick ``cv2.line`` draws
    3, 5, 5, 7 px for thickness 2, 3, 4, 5, so it is not used).
``circle``
    A disc of radius 40-100 px centred anywhere inside the image (clipped at the border) whose
    hue is rotated by 20-50 degrees (random sign) in HSV and blended over the original at 40%
    opacity: ``out = 0.6 * original + 0.4 * hue_shifted``.

**Scale.** The sizes above are the study's, for 1024 px MVTec AD images. They scale linearly
with ``min(H, W) / 1024`` (a 512 px image gets 10-30 px patches, 1-2 px lines, 20-50 px
radii), are rounded to whole pixels inside the scaled range (lower bound up, upper bound
down), and are clamped below at ``MIN_PATCH_SIDE``, ``MIN_THICKNESS``, ``MIN_RADIUS`` and
``MIN_LENGTH`` so tiny images still get a visible defect. ``scaled_ranges`` gives the ranges for
an image size. Colours, brightness factors, noise sigma, hue shift and opacity do not scale.

**The mask is the defect's footprint**, i.e. exactly the set of pixels the defect operation
writes: the pasted rectangle, the rasterised line (no anti-aliasing), the rasterised disc
(``cv2.circle``, no anti-aliasing). Every pixel outside the mask is bit-identical to the input;
every pixel inside is replaced by the defect's value. A footprint pixel can keep its value only
where the operation is a no-op there (a line colour equal to the pixel, a hue rotation of a
grey pixel, darkening a black pixel, noise that rounds to zero), so on textured images almost
every mask pixel differs from the input.

Deterministic: the output is a pure function of the input image and the ``np.random.Generator``
state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("patch", "line", "circle")

REFERENCE_SIDE = 1024
PATCH_SIDE = (20, 60)
PATCH_DARKEN = (0.4, 0.7)
PATCH_NOISE_SIGMA = (15.0, 35.0)
LINE_THICKNESS = (2, 5)
LINE_COLOUR = (0, 50)
LINE_LENGTH = (100, 500)
CIRCLE_RADIUS = (40, 100)
CIRCLE_HUE_SHIFT = (20.0, 50.0)
CIRCLE_OPACITY = 0.4

MIN_PATCH_SIDE, MIN_THICKNESS, MIN_RADIUS, MIN_LENGTH = 4, 1, 3, 8


@dataclass
class SyntheticDefect:
    image: np.ndarray
    """H x W x 3 uint8 RGB, the input with the defect applied (a new array)."""
    mask: np.ndarray
    """H x W bool, the defect's footprint (see the module docstring)."""
    kind: str
    params: dict[str, float | int | str | tuple] = field(default_factory=dict)
    """What was drawn, in pixels of this image (sizes, positions, mode...)."""


def scale_factor(hw: tuple[int, int]) -> float:
    return min(hw[0], hw[1]) / REFERENCE_SIDE


def _scaled(rng: tuple[float, float], s: float, floor: int) -> tuple[int, int]:
    """Whole pixels inside the scaled range (lower bound rounded up, upper rounded down), at
    least ``floor``."""
    lo = max(floor, int(np.ceil(round(rng[0] * s, 6))))
    hi = max(lo, int(np.floor(round(rng[1] * s, 6))))
    return lo, hi


def scaled_ranges(hw: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Inclusive integer pixel ranges of the size parameters for an image of size ``hw``."""
    s = scale_factor(hw)
    return {
        "patch_side": _scaled(PATCH_SIDE, s, MIN_PATCH_SIDE),
        "line_thickness": _scaled(LINE_THICKNESS, s, MIN_THICKNESS),
        "line_length": _scaled(LINE_LENGTH, s, MIN_LENGTH),
        "circle_radius": _scaled(CIRCLE_RADIUS, s, MIN_RADIUS),
    }


def _check(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.shape} {image.dtype}")


def _overlaps(a: tuple[int, int], b: tuple[int, int], w: int, h: int) -> bool:
    return abs(a[0] - b[0]) < w and abs(a[1] - b[1]) < h


def paste_patch(image: np.ndarray, rng: np.random.Generator) -> SyntheticDefect:
    """(a) cut-and-paste a 20-60 px patch elsewhere, darkened to 40-70% or with added noise."""
    _check(image)
    H, W = image.shape[:2]
    lo, hi = scaled_ranges((H, W))["patch_side"]
    pw = min(int(rng.integers(lo, hi + 1)), W)
    ph = min(int(rng.integers(lo, hi + 1)), H)
    src = (int(rng.integers(0, W - pw + 1)), int(rng.integers(0, H - ph + 1)))
    dst = src
    for _ in range(32):  # "elsewhere": non-overlapping when there is room, else any other place
        cand = (int(rng.integers(0, W - pw + 1)), int(rng.integers(0, H - ph + 1)))
        if not _overlaps(cand, src, pw, ph):
            dst = cand
            break
        if cand != src and dst == src:
            dst = cand
    patch = image[src[1] : src[1] + ph, src[0] : src[0] + pw].astype(np.float32)
    params: dict = {"width": pw, "height": ph, "src": src, "dst": dst}
    if rng.random() < 0.5:
        factor = float(rng.uniform(*PATCH_DARKEN))
        patch = patch * factor
        params.update(mode="darken", factor=factor)
    else:
        sigma = float(rng.uniform(*PATCH_NOISE_SIGMA))
        patch = patch + rng.normal(0.0, sigma, patch.shape).astype(np.float32)
        params.update(mode="noise", sigma=sigma)
    out = image.copy()
    out[dst[1] : dst[1] + ph, dst[0] : dst[0] + pw] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), bool)
    mask[dst[1] : dst[1] + ph, dst[0] : dst[0] + pw] = True
    return SyntheticDefect(out, mask, "patch", params)


def _capsule(
    hw: tuple[int, int], p0: tuple[float, float], p1: tuple[float, float], thickness: float
) -> np.ndarray:
    """Pixels whose centre lies within ``thickness / 2`` of the segment p0-p1 (x, y floats): a
    line exactly ``thickness`` px wide with round caps, clipped to the image."""
    H, W = hw
    r = thickness / 2
    x0, x1 = max(0, int(np.floor(min(p0[0], p1[0]) - r))), min(W, int(np.ceil(max(p0[0], p1[0]) + r)) + 1)
    y0, y1 = max(0, int(np.floor(min(p0[1], p1[1]) - r))), min(H, int(np.ceil(max(p0[1], p1[1]) + r)) + 1)
    mask = np.zeros((H, W), bool)
    if x0 >= x1 or y0 >= y1:
        return mask
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((xx - p0[0]) * dx + (yy - p0[1]) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    mask[y0:y1, x0:x1] = (xx - p0[0] - t * dx) ** 2 + (yy - p0[1] - t * dy) ** 2 <= r * r
    return mask


def dark_line(image: np.ndarray, rng: np.random.Generator) -> SyntheticDefect:
    """(b) a thin straight dark line, 2-5 px thick, colour channels in 0-50."""
    _check(image)
    H, W = image.shape[:2]
    r = scaled_ranges((H, W))
    thickness = int(rng.integers(r["line_thickness"][0], r["line_thickness"][1] + 1))
    length = float(rng.uniform(r["line_length"][0], r["line_length"][1]))
    colour = tuple(int(c) for c in rng.integers(LINE_COLOUR[0], LINE_COLOUR[1] + 1, 3))
    x0, y0 = float(rng.uniform(0, W - 1)), float(rng.uniform(0, H - 1))
    angle = float(rng.uniform(0, 2 * np.pi))
    p0, p1 = (x0, y0), (x0 + length * np.cos(angle), y0 + length * np.sin(angle))
    mask = _capsule((H, W), p0, p1, thickness)
    mask[min(H - 1, round(y0)), min(W - 1, round(x0))] = True  # never empty, even for a 1 px line
    out = image.copy()
    out[mask] = np.array(colour, np.uint8)
    params = {"thickness": thickness, "length": length, "colour": colour, "p0": p0, "p1": p1, "angle": angle}
    return SyntheticDefect(out, mask, "line", params)


def hue_rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate the hue of a uint8 RGB array in HSV; returns float32 RGB in 0..255."""
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)  # H in [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + degrees, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


def hue_circle(image: np.ndarray, rng: np.random.Generator) -> SyntheticDefect:
    """(c) a disc of radius 40-100 px, hue rotated by 20-50 degrees, blended at 40% opacity."""
    _check(image)
    H, W = image.shape[:2]
    lo, hi = scaled_ranges((H, W))["circle_radius"]
    radius = int(rng.integers(lo, hi + 1))
    cx, cy = int(rng.integers(0, W)), int(rng.integers(0, H))
    shift = float(rng.uniform(*CIRCLE_HUE_SHIFT)) * (1.0 if rng.random() < 0.5 else -1.0)
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (cx, cy), radius, 1, -1, cv2.LINE_8)
    mask = m.astype(bool)
    x0, x1 = max(0, cx - radius), min(W, cx + radius + 1)
    y0, y1 = max(0, cy - radius), min(H, cy + radius + 1)
    crop = image[y0:y1, x0:x1]
    blended = (1.0 - CIRCLE_OPACITY) * crop.astype(np.float32) + CIRCLE_OPACITY * hue_rotate(crop, shift)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    out = image.copy()
    region = mask[y0:y1, x0:x1]
    out[y0:y1, x0:x1][region] = blended[region]
    params = {"radius": radius, "centre": (cx, cy), "hue_shift": shift, "opacity": CIRCLE_OPACITY}
    return SyntheticDefect(out, mask, "circle", params)


GENERATORS: dict[str, Callable[[np.ndarray, np.random.Generator], SyntheticDefect]] = {
    "patch": paste_patch,
    "line": dark_line,
    "circle": hue_circle,
}


def draw_kind(rng: np.random.Generator) -> str:
    """The defect kind ``inject_defect(image, rng)`` draws first (patch / line / circle, equal odds)."""
    return DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]


def inject_defect(image: np.ndarray, rng: np.random.Generator, kind: str | None = None) -> SyntheticDefect:
    """One synthetic defect; ``kind=None`` draws patch / line / circle with equal probability."""
    if kind is None:
        kind = draw_kind(rng)
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")
    return GENERATORS[kind](image, rng)
