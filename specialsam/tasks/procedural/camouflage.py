"""The camouflage stand-in's scenes: an animal-like blob cut from its own background texture.

Backgrounds are scikit-image's grass, gravel and brick photographs, colourised, and a procedural
bark; the object's interior is the *same* texture sampled elsewhere, shifted slightly in brightness
and hue, composited with soft edges, so a generalist finds it hard by construction. Sand, unseen in
training, makes the stand-in's transfer set. :mod:`specialsam.tasks.camouflage` builds the task
(splits, notes) from these scenes.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

# background type -> (dark RGB, light RGB) of the colour ramp applied to the grey texture
PALETTES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Grass": ((28, 52, 18), (170, 190, 90)),
    "Gravel": ((60, 55, 48), (200, 190, 170)),
    "Brick": ((70, 30, 22), (200, 120, 85)),
    "Bark": ((40, 28, 18), (160, 130, 95)),
    "Sand": ((120, 96, 60), (235, 215, 170)),  # transfer set only
}
TRAIN_BACKGROUNDS = ("Grass", "Gravel", "Brick", "Bark")


def _lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    g = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def _procedural_gray(kind: str, seed: int, size: int = 512) -> np.ndarray:
    """Bark (vertical furrows) or sand (ripples), grey uint8."""
    rng = np.random.default_rng([seed, 77])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == "Bark":
        warp = _lowfreq(rng, size, size, 6) * 18 + _lowfreq(rng, size, size, 20) * 4
        fur = np.abs(np.sin((xx + warp) * 2 * np.pi / 22.0)) ** 0.6
        cracks = cv2.resize(rng.uniform(0, 1, (size // 40, size // 6)).astype(np.float32), (size, size))
        g = 0.6 * fur + 0.25 * cracks + 0.15 * rng.uniform(0, 1, (size, size)).astype(np.float32)
    else:
        warp = _lowfreq(rng, size, size, 5) * 25
        rip = 0.5 + 0.5 * np.sin((yy + 0.3 * xx + warp) * 2 * np.pi / 14.0)
        g = (
            0.55 * rip
            + 0.25 * (0.5 + 0.5 * _lowfreq(rng, size, size, 8))
            + 0.2 * rng.uniform(0, 1, (size, size)).astype(np.float32)
        )
    g = cv2.GaussianBlur(g, (3, 3), 0)
    g = (g - g.min()) / (g.max() - g.min() + 1e-6)
    return (g * 255).astype(np.uint8)


@functools.cache
def background_source(kind: str) -> np.ndarray:
    """The grey 512x512 source texture of a background type."""
    if kind in ("Grass", "Gravel", "Brick"):
        import skimage.data

        return np.ascontiguousarray(getattr(skimage.data, kind.lower())())
    return _procedural_gray(kind, seed=1)


def _crop(
    rng: np.random.Generator, src: np.ndarray, h: int, w: int, rot: bool, scale: float, flip: bool
) -> np.ndarray:
    """Random-position crop of the source at ``scale`` (source px per output px), resized to (h, w)."""
    if rot:
        src = np.rot90(src)
    s = src.shape[0]
    ch, cw = min(s, int(h * scale)), min(s, int(w * scale))
    y0, x0 = int(rng.integers(s - ch + 1)), int(rng.integers(s - cw + 1))
    crop = cv2.resize(
        np.ascontiguousarray(src[y0 : y0 + ch, x0 : x0 + cw]), (w, h), interpolation=cv2.INTER_AREA
    )
    if flip:
        crop = crop[:, ::-1]
    return crop.astype(np.float32) / 255.0


def _colourise(gray: np.ndarray, dark: np.ndarray, light: np.ndarray) -> np.ndarray:
    return dark + (light - dark) * gray[..., None]


def _animal_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A blob body (random radial harmonics) with 0-4 limb/tail strokes, 4-22% of the image."""
    m = np.zeros((h, w), np.uint8)
    area = rng.uniform(0.04, 0.22) * h * w
    elong = rng.uniform(1.0, 2.2)
    ry = np.sqrt(area / np.pi / elong)
    rx = ry * elong
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    rot = rng.uniform(0, np.pi)
    ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    rad = np.ones_like(ang)
    for k in range(2, 6):
        rad += rng.uniform(0, 0.25 / k * 2) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    px, py = rx * rad * np.cos(ang), ry * rad * np.sin(ang)
    pts = np.stack([cx + px * np.cos(rot) - py * np.sin(rot), cy + px * np.sin(rot) + py * np.cos(rot)], 1)
    cv2.fillPoly(m, [pts.astype(np.int32)], 1)
    for _ in range(int(rng.integers(0, 5))):  # limbs, tail, antennae
        i = int(rng.integers(len(pts)))
        a = np.arctan2(pts[i, 1] - cy, pts[i, 0] - cx) + rng.normal(0, 0.4)
        length = rng.uniform(0.3, 0.9) * ry
        end = pts[i] + length * np.array([np.cos(a), np.sin(a)])
        cv2.line(
            m, tuple(pts[i].astype(int)), tuple(end.astype(int)), 1, max(2, int(ry * rng.uniform(0.08, 0.25)))
        )
    return m.astype(bool)


def camouflage_scene(seed: tuple[int, ...], background: str) -> tuple[np.ndarray, np.ndarray]:
    """One stand-in image (RGB uint8) and its object mask."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(256, 385, 2) // 8 * 8)
    src = background_source(background)
    dark, light = (np.asarray(c, np.float32) / 255 for c in PALETTES[background])
    tint = rng.normal(0, 0.03, 3).astype(np.float32)
    dark, light = dark + tint, light + tint
    rot, flip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    scale = rng.uniform(0.55, 1.0) * src.shape[0] / max(h, w)
    bg = _colourise(_crop(rng, src, h, w, rot, scale, flip), dark, light)
    # the object: the same texture (same orientation, similar scale) from elsewhere, a little
    # brighter or darker and nudged in hue
    shift = rng.choice([-1, 1]) * rng.uniform(0.03, 0.12)
    hue = rng.normal(0, 0.015, 3).astype(np.float32)
    obj_scale = min(scale * rng.uniform(0.85, 1.15), src.shape[0] / max(h, w))
    obj = _colourise(_crop(rng, src, h, w, rot, obj_scale, flip), dark + hue, light + hue) * (1 + shift)
    mask = _animal_mask(rng, h, w)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(1.0, 2.5))[..., None]
    img = bg * (1 - alpha) + obj * alpha
    img *= 1 + 0.12 * _lowfreq(rng, h, w, 3)[..., None]  # illumination that ignores the object
    img += rng.normal(0, 0.012, (h, w, 1)).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8), mask
