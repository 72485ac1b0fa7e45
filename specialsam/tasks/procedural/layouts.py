"""Mosaic layouts: how a square is cut into tiles (the study's fixed grid, or random wavy seams).

Used by the wood task for real photographs and procedural textures alike.
"""

from __future__ import annotations

import cv2
import numpy as np


def fixed_layout(size: int, tile: int) -> np.ndarray:
    """Label map of the regular grid (row-major tile ids)."""
    g = size // tile
    yy, xx = np.mgrid[0:size, 0:size]
    return ((yy // tile) * g + xx // tile).astype(np.int32)


def _connected(region: np.ndarray) -> bool:
    n, _ = cv2.connectedComponents(region.astype(np.uint8), connectivity=4)
    return n == 2


def random_layout(
    rng: np.random.Generator, size: int, n_tiles: int, amplitude: float, min_fraction: float
) -> np.ndarray:
    """Label map with ``n_tiles`` connected regions (fewer only if cuts keep failing) separated by
    wavy seams at random positions: repeatedly cut the largest region."""
    labels = np.zeros((size, size), np.int32)
    coord = np.arange(size, dtype=np.float32)
    min_area = min_fraction * size * size
    for new in range(1, n_tiles):
        areas = np.bincount(labels.ravel(), minlength=new)
        for _attempt in range(40):
            r = int(rng.choice(new, p=areas / areas.sum()))
            region = labels == r
            ys, xs = np.nonzero(region)
            y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
            h, w = y1 - y0 + 1, x1 - x0 + 1
            vertical = rng.random() < w / (w + h)  # a vertical seam splits along x
            lo, ext = (x0, w) if vertical else (y0, h)
            wave = np.zeros(size, np.float32)  # seam offset as a function of the position along it
            for _ in range(2):
                freq = rng.uniform(0.6, 3.0)
                wave += (amplitude * size / 2 * rng.uniform(0.5, 1.0)) * np.sin(
                    2 * np.pi * freq * coord / size + rng.uniform(0, 2 * np.pi)
                )
            offset = coord - (lo + rng.uniform(0.3, 0.7) * ext)
            side = (
                (offset[None, :] - wave[:, None] > 0) if vertical else (offset[:, None] - wave[None, :] > 0)
            )
            a, b = region & side, region & ~side
            if a.sum() < min_area or b.sum() < min_area or not (_connected(a) and _connected(b)):
                continue
            labels[a] = new
            break
        else:
            break
    return labels


def adjacency(labels: np.ndarray, min_pixels: int = 3) -> set[tuple[int, int]]:
    """Pairs (a < b) of labels sharing at least ``min_pixels`` 4-neighbour boundary pixels."""
    pairs: dict[tuple[int, int], int] = {}
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:], labels[:-1])):
        d = a != b
        lo, hi = np.minimum(a[d], b[d]), np.maximum(a[d], b[d])
        codes, counts = np.unique(lo.astype(np.int64) * 1000 + hi, return_counts=True)
        for code, cnt in zip(codes, counts, strict=True):
            key = (int(code // 1000), int(code % 1000))
            pairs[key] = pairs.get(key, 0) + int(cnt)
    return {k for k, v in pairs.items() if v >= min_pixels}
