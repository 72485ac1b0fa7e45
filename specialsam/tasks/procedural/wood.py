"""Procedural wood textures: the stand-in for the wood task's photographs.

Rings and grain from sinusoids of distorted radial/linear coordinates, fibre streaks,
low-frequency colour and knots, in five colour families (pale, oak, walnut, reddish, grey). Grain
runs along one axis (within 15 degrees) in every texture, as in photographs of boards, so tiles of
one cluster differ by ring pattern, period, figure and shade rather than by a rotated grain. The
wood task (:mod:`specialsam.tasks.wood`) clusters, splits and cuts these into mosaics exactly as it
does real photographs.
"""

from __future__ import annotations

import cv2
import numpy as np

from specialsam.tasks.splits import stable_rng

FAMILIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float]]] = {
    # name: (earlywood RGB, latewood RGB, ring period range in px at 512)
    "pale": ((232, 208, 170), (205, 172, 128), (5, 14)),
    "oak": ((206, 164, 110), (150, 104, 58), (10, 28)),
    "walnut": ((128, 90, 62), (68, 44, 30), (8, 22)),
    "reddish": ((192, 108, 74), (132, 60, 40), (7, 18)),
    "grey": ((176, 172, 162), (112, 108, 102), (9, 26)),
}


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    g = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)


def procedural_wood(rng: np.random.Generator, size: int, family: str) -> np.ndarray:
    """One wood texture (size x size RGB uint8) of a colour family.

    Colour variation is mostly brightness (shared by the channels) with a small per-channel part,
    so a family keeps its hue the way real boards of one species do. Grain runs vertically
    (rotated by at most 15 degrees).
    """
    early, late, (pmin, pmax) = FAMILIES[family]
    jitter = rng.normal(0, 10) + rng.normal(0, 3, 3)
    early_c = np.asarray(early, np.float32) + jitter
    late_c = np.asarray(late, np.float32) + jitter + rng.normal(0, 6) + rng.normal(0, 2, 3)
    scale = size / 512
    period = rng.uniform(pmin, pmax) * scale
    big = int(size * 1.25) + 2  # generated larger, then rotated (<= 15 deg) and centre-cropped
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32)
    warp = _lowfreq(rng, big, int(rng.integers(3, 7))) * np.float32(rng.uniform(4, 18) * scale)
    if rng.random() < 0.6:  # flat-sawn: elongated rings ("cathedrals")
        cx = big / 2 + rng.uniform(-0.3, 0.3) * big
        cy = rng.choice([-1, 1]) * rng.uniform(0.6, 2.0) * big + big / 2
        k = rng.uniform(0.04, 0.25)
        r = np.sqrt((xx - np.float32(cx)) ** 2 + ((yy - np.float32(cy)) * np.float32(k)) ** 2)
    else:  # quarter-sawn: straight grain
        r = xx
    phase = (r + warp) / np.float32(period) + 0.35 * _lowfreq(rng, big, int(rng.integers(4, 10)))
    t = phase - np.floor(phase)
    band = t ** np.float32(rng.uniform(2.0, 6.0))  # sharp latewood bands
    band *= np.float32(rng.uniform(0.7, 1.1))
    # fibre streaks along the grain (y), blotchy brightness, slight colour blotches, fine noise
    fib = cv2.resize(
        rng.standard_normal((max(4, big // 24), big), dtype=np.float32),
        (big, big),
        interpolation=cv2.INTER_LINEAR,
    )
    lum = fib * np.float32(rng.uniform(3, 9)) + _lowfreq(rng, big, int(rng.integers(2, 5))) * np.float32(
        rng.uniform(5, 14)
    )
    img = early_c + (late_c - early_c) * band[..., None] + lum[..., None]
    img += _lowfreq(rng, big, 3)[..., None] * rng.uniform(-3, 3, 3).astype(np.float32)
    if rng.random() < 0.3:  # a knot: dark core with its own rings
        kx, ky = rng.uniform(0.3, 0.7, 2) * big
        rad = rng.uniform(12, 30) * scale
        rk = np.sqrt(
            (xx - np.float32(kx)) ** 2 + ((yy - np.float32(ky)) * np.float32(rng.uniform(1.3, 2.5))) ** 2
        )
        tk = (rk / np.float32(max(period * 0.4, 1.0))) % 1.0
        alpha = np.exp(-((rk / np.float32(rad)) ** 2))[..., None]
        img = img * (1 - alpha) + (late_c * 0.8 + (early_c - late_c) * 0.3 * tk[..., None]) * alpha
    img += rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * np.float32(2.5)
    img = np.clip(img, 0, 255).astype(np.uint8)
    m = cv2.getRotationMatrix2D((big / 2, big / 2), rng.uniform(-15, 15), 1.0)
    img = cv2.warpAffine(img, m, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    o = (big - size) // 2
    return np.ascontiguousarray(img[o : o + size, o : o + size])


def standin_textures(n: int, size: int, seed: int) -> list[tuple[str, np.ndarray, str]]:
    """``n`` textures of ``size`` px as (key, image, family): families dealt in turn, then shuffled."""
    names = list(FAMILIES)
    rng = stable_rng(seed, "wood-textures")
    fams = [names[i % len(names)] for i in range(n)]
    rng.shuffle(fams)
    return [
        (f"procedural-{i:03d}-{fam}", procedural_wood(stable_rng(seed, "wood", i), size, fam), fam)
        for i, fam in enumerate(fams)
    ]
