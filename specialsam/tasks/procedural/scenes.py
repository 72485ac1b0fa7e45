"""Procedural generalist scenes: what the tiny generalist learns "objects" from.

Each scene is a textured background with 1-4 distinct objects (polygons, ellipses, blobs) and,
often, extra thin structures (lines, cracks), small objects, texture-defined regions and nested
part/whole objects, drawn in order so later objects occlude earlier ones. A share of scenes
(``STUFF_P``) has no plain background: the image is partitioned into 2-5 "stuff" regions
(warped Voronoi cells: ground, wall, fabric) that touch the border and are targets themselves,
as SAM's SA-1B masks include large regions as well as things. The mix is there so
the generalist is good at salient objects but has seen thin and texture-defined things, making
defects and camouflage hard by difficulty rather than out of distribution by construction.

Every scene is a pure function of its seed: the training stream is ``scene(seed, step, i)``, so a
resumed run sees exactly the data it would have seen, and held-out scenes use a disjoint seed.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 256
MIN_AREA = 24
STUFF_P = 0.35
"""Share of scenes partitioned into stuff regions (pretraining stage 2 onwards; 0 = stage 1)."""
HELDOUT_SEED = 999_999
"""Held-out scenes use (HELDOUT_SEED, i); training streams use 3-tuples, so they never coincide."""


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8 RGB
    targets: list[np.ndarray]  # visible masks (bool), prompted by points or boxes
    box_only: list[bool]  # True for "whole" targets of nested objects (a point would be ambiguous)


@functools.cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise in [-1, 1]: random grid upsampled bicubically."""
    g = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC), -1, 1)


def _texture(rng: np.random.Generator, size: int, base: np.ndarray, kind: int) -> np.ndarray:
    """A (size, size, 3) float texture around colour ``base``."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = base.astype(np.float32)
    if kind == 0:  # flat + fine noise
        img += rng.standard_normal((size, size, 1), dtype=np.float32) * rng.uniform(2, 10)
    elif kind == 1:  # stripes at a random angle
        yy, xx = _grid(size)
        a, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        s = np.sin((xx * np.cos(a) + yy * np.sin(a)) * 2 * np.pi / period)
        img += (s[..., None] * rng.uniform(15, 45)) * rng.uniform(0.5, 1, 3)
    elif kind == 2:  # blotchy low-frequency colour variation
        for c in range(3):
            img[..., c] += _lowfreq(rng, size, int(rng.integers(3, 9))) * rng.uniform(10, 40)
    else:  # checker / woven
        yy, xx = _grid(size)
        p = int(rng.integers(3, 12))
        chk = (((xx // p) + (yy // p)) % 2) * 2 - 1
        img += chk[..., None] * rng.uniform(10, 35)
    return img


def _distinct_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    best, best_d = None, -1.0
    for _ in range(12):
        c = rng.uniform(0, 255, 3)
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=1e9)
        if d > 90:
            return c
        if d > best_d:
            best, best_d = c, d
    return best  # type: ignore[return-value]


def _shape_mask(rng: np.random.Generator, size: int, kind: str, scale: float) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    cx, cy = rng.uniform(0.12, 0.88, 2) * size
    r = scale * size
    if kind == "ellipse":
        axes = (max(2, int(r * rng.uniform(0.5, 1))), max(2, int(r * rng.uniform(0.3, 1))))
        cv2.ellipse(m, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.45, 1.0, n)
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "blob":
        ang = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        rad = np.ones_like(ang)
        for k in range(2, 6):
            rad += rng.uniform(0, 0.35 / k * 2) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
        rad = r * rad / rad.max()
        pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
        cv2.fillPoly(m, [pts], 1)
    elif kind == "line":  # thin structure: a crack-like polyline
        n = int(rng.integers(2, 6))
        step = size * rng.uniform(0.08, 0.2)
        a = rng.uniform(0, 2 * np.pi)
        pts = [(cx, cy)]
        for _ in range(n):
            a += rng.normal(0, 0.5)
            pts.append((pts[-1][0] + step * np.cos(a), pts[-1][1] + step * np.sin(a)))
        cv2.polylines(m, [np.array(pts, np.int32)], False, 1, int(rng.integers(1, 5)))
    return m.astype(bool)


def _random_object(rng: np.random.Generator, size: int) -> np.ndarray:
    u = rng.random()
    if u < 0.12:
        return _shape_mask(rng, size, "line", 0)
    if u < 0.24:  # small object
        return _shape_mask(
            rng, size, str(rng.choice(["ellipse", "polygon", "blob"])), rng.uniform(0.02, 0.05)
        )
    kind = str(rng.choice(["ellipse", "polygon", "blob"]))
    return _shape_mask(rng, size, kind, rng.uniform(0.08, 0.3))


def _stuff_labels(rng: np.random.Generator, size: int, k: int) -> np.ndarray:
    """A (size, size) partition into ``k`` warped Voronoi cells with irregular seams."""
    yy, xx = _grid(size)
    amp = rng.uniform(0.02, 0.1) * size
    wy = yy + _lowfreq(rng, size, int(rng.integers(3, 7))) * amp
    wx = xx + _lowfreq(rng, size, int(rng.integers(3, 7))) * amp
    centres = rng.uniform(0, size, (k, 2)).astype(np.float32)
    d = (wy[None] - centres[:, 0, None, None]) ** 2 + (wx[None] - centres[:, 1, None, None]) ** 2
    return d.argmin(0)


Layers = list[tuple[np.ndarray, int | None]]
"""Painted regions in drawing order: (mask, parent layer index for a nested part, else None)."""


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured background, sometimes under an illumination gradient; returns (image, colour)."""
    bg_colour = rng.uniform(0, 255, 3)
    img = _texture(rng, size, bg_colour, int(rng.integers(4)))
    if rng.random() < 0.5:  # illumination gradient
        yy, xx = _grid(size)
        a = rng.uniform(0, 2 * np.pi)
        img += ((xx * np.cos(a) + yy * np.sin(a)) * (rng.uniform(-50, 50) / size))[..., None]
    return img, bg_colour


def _paint_stuff(seed: int | tuple[int, ...], img: np.ndarray, colours: list, layers: Layers) -> None:
    """Stuff regions (their own rng) replace the plain background; each is a target itself."""
    size = img.shape[0]
    srng = np.random.default_rng((*np.atleast_1d(seed), 8))
    labels = _stuff_labels(srng, size, int(srng.integers(2, 6)))
    for c in range(int(labels.max()) + 1):
        m = labels == c
        if m.sum() < MIN_AREA:
            continue
        similar = srng.random() < 0.3  # told apart by texture more than by colour
        colour = colours[-1] + srng.normal(0, 20, 3) if similar else _distinct_colour(srng, colours)
        colours.append(colour)
        tex = _texture(srng, size, colour, int(srng.integers(4)))
        img[m] = tex[m]
        layers.append((m, None))


def _part_of(rng: np.random.Generator, m: np.ndarray) -> np.ndarray:
    """An ellipse inside object ``m`` around its centre (clipped to it): a nested part."""
    ys, xs = np.nonzero(m)
    part = np.zeros_like(m)
    cy, cx = ys.mean(), xs.mean()
    rad = np.sqrt(m.sum() / np.pi) * rng.uniform(0.25, 0.5)
    cv2.ellipse(
        part.view(np.uint8),
        (int(cx), int(cy)),
        (max(2, int(rad)), max(2, int(rad * rng.uniform(0.5, 1)))),
        rng.uniform(0, 180),
        0,
        360,
        1,
        -1,
    )
    part &= m
    return part


def _paint_objects(
    rng: np.random.Generator,
    img: np.ndarray,
    bg_colour: np.ndarray,
    colours: list,
    layers: Layers,
    n_obj: int,
) -> None:
    """``n_obj`` objects in distinct colours (some told apart by texture alone), a few with a part."""
    size = img.shape[0]
    for _ in range(n_obj):
        m = _random_object(rng, size)
        if m.sum() < MIN_AREA // 3:
            continue
        texture_defined = rng.random() < 0.15
        colour = bg_colour + rng.normal(0, 12, 3) if texture_defined else _distinct_colour(rng, colours)
        colours.append(colour)
        tex = _texture(
            rng, size, colour, int(rng.integers(1, 4)) if texture_defined else int(rng.integers(4))
        )
        img[m] = tex[m]
        layers.append((m, None))
        if not texture_defined and m.sum() > 1500 and rng.random() < 0.3:  # nested part
            part = _part_of(rng, m)
            if part.sum() >= MIN_AREA:
                pc = _distinct_colour(rng, colours)
                colours.append(pc)
                ptex = _texture(rng, size, pc, int(rng.integers(4)))
                img[part] = ptex[part]
                layers.append((part, len(layers) - 1))


def _visible_targets(layers: Layers) -> tuple[list[np.ndarray], list[bool]]:
    """Visible masks: each layer minus everything drawn after it, except its own parts (a whole
    object's mask includes its part); parts are targets on their own too. Returns (targets,
    box_only: True for a whole with a part, where a point would be ambiguous)."""
    targets, box_only = [], []
    for i, (m, _parent) in enumerate(layers):
        later = np.zeros_like(m)
        for j in range(i + 1, len(layers)):
            if layers[j][1] != i:
                later |= layers[j][0]
        vis = m & ~later
        if vis.sum() < MIN_AREA and not (vis.sum() >= 8 and m.sum() < MIN_AREA * 2):
            continue
        has_part = any(p == i for _, p in layers)
        targets.append(vis)
        box_only.append(has_part)
        if has_part:  # the whole minus its part: where a point on the "body" would be unambiguous
            body = vis.copy()
            for mj, pj in layers:
                if pj == i:
                    body &= ~mj
            if body.sum() >= MIN_AREA:
                targets.append(body)
                box_only.append(False)
    return targets, box_only


def make_scene(seed: int | tuple[int, ...], size: int = SIZE, stuff_p: float = STUFF_P) -> Scene:
    """One scene, a pure function of ``seed`` (and ``stuff_p``: 0 gives the stage-1 scenes)."""
    rng = np.random.default_rng(seed)
    img, bg_colour = _background(rng, size)
    colours = [bg_colour]
    layers: Layers = []
    stuff = stuff_p > 0 and np.random.default_rng((*np.atleast_1d(seed), 7)).random() < stuff_p
    if stuff:
        _paint_stuff(seed, img, colours, layers)
    n_obj = int(rng.integers(1, 5)) + int(rng.random() < 0.5)  # + an extra thin/small/texture one
    if stuff:
        n_obj = n_obj // 2
    _paint_objects(rng, img, bg_colour, colours, layers, n_obj)

    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0, 6)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    targets, box_only = _visible_targets(layers)
    return Scene(img, targets, box_only)


def heldout_scenes(n: int, offset: int = 0, stuff_p: float = STUFF_P) -> list[Scene]:
    """The fixed held-out set (pretraining eval uses 0..999; retention uses offset 10,000)."""
    return [make_scene((HELDOUT_SEED, offset + i), stuff_p=stuff_p) for i in range(n)]


def retention_samples(n: int = 200):
    """A fixed general-purpose set: one point-promptable object per held-out scene.

    Used to measure *retention* - how much general skill a specialised decoder keeps."""
    from specialsam.tasks.base import Sample

    out = []
    for i, sc in enumerate(heldout_scenes(n, offset=10_000)):
        j = next((k for k, b in enumerate(sc.box_only) if not b), None)
        if j is not None:
            out.append(Sample(key=f"generalist-scene-{10_000 + i}", image=sc.image, mask=sc.targets[j]))
    return out
