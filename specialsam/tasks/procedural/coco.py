"""The COCO task's stand-in: litter scenes written as a real COCO dataset (json + PNG files).

Each scene is a textured floor (the generalist scenes' backgrounds) with 2-5 pieces of litter in
four categories under two supercategories, painted in order so later pieces occlude earlier ones:

* ``container/bottle``: long rounded bar, translucent (the floor shows through), a highlight;
* ``container/can``: short rounded bar, metallic shading with a coloured band;
* ``soft/bag``: large thin blob, strongly translucent: low contrast, hard for a generalist;
* ``soft/wrapper``: small crumpled polygon, saturated stripes.

Some scenes add a cluster of bottle caps annotated as one ``iscrowd`` region and a few caps too
small for the default ``data.min_area``, so the stand-in exercises the loader's skipping.
Segmentations are polygons (from the visible mask's contours) except bags and masks with holes,
stored as compressed RLE, and crowds, stored as uncompressed RLE, as in COCO itself. Every scene
is a pure function of ``(seed, index)``; :func:`write_coco_standin` writes a dataset that the COCO
loader then reads like any other, so the stand-in runs through the same code as real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from specialsam.tasks.io import write_image
from specialsam.tasks.procedural.scenes import _background, _lowfreq, _texture

SIZE = 256
CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "bottle", "supercategory": "container"},
    {"id": 2, "name": "can", "supercategory": "container"},
    {"id": 3, "name": "bag", "supercategory": "soft"},
    {"id": 4, "name": "wrapper", "supercategory": "soft"},
    {"id": 5, "name": "cap", "supercategory": "container"},
)
_PAINTED = (1, 2, 3, 4)  # categories drawn as single objects (caps come as clusters or crumbs)


def _bar(rng: np.random.Generator, size: int, length: float, aspect: float) -> np.ndarray:
    """A rotated rounded bar (bottle, can) as a bool mask."""
    m = np.zeros((size, size), np.uint8)
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    a = rng.uniform(0, np.pi)
    half = length * size / 2
    width = max(3, int(length * size / aspect))
    p0 = (int(cx - half * np.cos(a)), int(cy - half * np.sin(a)))
    p1 = (int(cx + half * np.cos(a)), int(cy + half * np.sin(a)))
    cv2.line(m, p0, p1, 1, width)
    cv2.circle(m, p0, width // 2, 1, -1)
    cv2.circle(m, p1, width // 2, 1, -1)
    return m.astype(bool)


def _blob(rng: np.random.Generator, size: int, scale: float, vertices: int = 48) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    rad = np.ones_like(ang)
    for k in range(2, 6):
        rad += rng.uniform(0, 0.5 / k) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rad = scale * size * rad / rad.max()
    cx, cy = rng.uniform(0.2, 0.8, 2) * size
    pts = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], 1).astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m.astype(bool)


def _paint(rng: np.random.Generator, img: np.ndarray, cat: int) -> np.ndarray:
    """Paint one piece of litter of category ``cat`` into ``img`` (float RGB); returns its mask."""
    size = img.shape[0]
    if cat == 1:  # bottle: translucent green/brown/clear bar with a highlight along it
        m = _bar(rng, size, rng.uniform(0.25, 0.45), rng.uniform(2.5, 4.0))
        tint = np.array([(60, 140, 70), (120, 80, 40), (200, 210, 215)][int(rng.integers(3))], np.float32)
        img[m] = 0.45 * img[m] + 0.55 * tint
        core = cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        img[core] += 35
    elif cat == 2:  # can: metallic shading plus a coloured band
        m = _bar(rng, size, rng.uniform(0.14, 0.24), rng.uniform(1.6, 2.2))
        metal = _texture(rng, size, np.array([170, 170, 175]), 1)
        img[m] = metal[m]
        band = _texture(rng, size, rng.uniform(0, 255, 3), 0)
        inner = cv2.erode(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        img[inner] = 0.3 * img[inner] + 0.7 * band[inner]
    elif cat == 3:  # bag: large, thin, strongly translucent
        m = _blob(rng, size, rng.uniform(0.18, 0.32))
        wrinkles = _lowfreq(rng, size, int(rng.integers(6, 12)))[..., None] * 25
        film = np.array([(235, 235, 240), (90, 120, 200), (40, 40, 45)][int(rng.integers(3))], np.float32)
        img[m] = (0.7 * img + 0.3 * film + wrinkles)[m]
    else:  # wrapper: small crumpled polygon, saturated stripes
        m = _blob(rng, size, rng.uniform(0.06, 0.12), vertices=int(rng.integers(5, 10)))
        stripes = _texture(rng, size, rng.uniform(0, 255, 3), 1)
        img[m] = stripes[m]
    return m


def _caps(rng: np.random.Generator, img: np.ndarray, n: int, radius: tuple[int, int]) -> list[np.ndarray]:
    """``n`` small bright discs (bottle caps); returns their masks."""
    size = img.shape[0]
    out = []
    centre = rng.uniform(0.2, 0.8, 2) * size
    for _ in range(n):
        m = np.zeros((size, size), np.uint8)
        c = centre + rng.normal(0, size * 0.04, 2)
        cv2.circle(m, (int(c[0]), int(c[1])), int(rng.integers(*radius)), 1, -1)
        mb = m.astype(bool)
        img[mb] = rng.uniform(150, 255, 3)
        out.append(mb)
    return out


def coco_scene(
    seed: int, index: int, size: int = SIZE
) -> tuple[np.ndarray, list[tuple[int, np.ndarray, bool]]]:
    """One litter scene: (uint8 RGB image, [(category id, visible mask, is crowd)])."""
    rng = np.random.default_rng([seed, index, 4242])
    img, _ = _background(rng, size)
    layers: list[tuple[int, np.ndarray, bool]] = []
    for _ in range(int(rng.integers(2, 6))):
        cat = int(rng.choice(_PAINTED))
        layers.append((cat, _paint(rng, img, cat), False))
    if rng.random() < 0.25:  # a cluster of caps: one crowd region
        crowd = np.logical_or.reduce(_caps(rng, img, int(rng.integers(4, 8)), (3, 6)))
        layers.append((5, crowd, True))
    if rng.random() < 0.3:  # a stray cap below the default min_area
        layers.append((5, _caps(rng, img, 1, (2, 4))[0], False))
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(1, 5)
    image = np.clip(img, 0, 255).astype(np.uint8)
    out = []
    for i, (cat, m, crowd) in enumerate(layers):
        later = np.logical_or.reduce([mj for _, mj, _ in layers[i + 1 :]] or [np.zeros_like(m)])
        vis = m & ~later
        if vis.any():
            out.append((cat, vis, crowd))
    return image, out


def _polygon_ok(mask: np.ndarray) -> bool:
    """Whether polygons describe the mask: no holes, and no fragment thinner than a triangle."""
    contours, hierarchy = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    if hierarchy is None or bool((hierarchy[0][:, 3] >= 0).any()):
        return False
    return all(len(c) >= 3 for c in contours)


def _polygons(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


def segmentation(mask: np.ndarray, kind: str) -> list | dict:
    """A mask as a COCO segmentation: ``polygon``, ``rle`` (compressed) or ``rle-list`` (uncompressed)."""
    if kind == "polygon":
        return _polygons(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    if kind == "rle":
        return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")  # column-major, starting with a run of zeros
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _annotation(ann_id: int, image_id: int, cat: int, mask: np.ndarray, crowd: bool) -> dict:
    kind = "rle-list" if crowd else "rle" if cat == 3 or not _polygon_ok(mask) else "polygon"
    ys, xs = np.nonzero(mask)
    bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": segmentation(mask, kind),
        "area": float(mask.sum()),
        "bbox": bbox,
        "iscrowd": int(crowd),
    }


def write_coco_standin(folder: Path, n_images: int, seed: int = 0) -> Path:
    """Write ``n_images`` scenes as ``folder/images/*.png`` + ``folder/annotations.json`` (COCO
    instances format); returns the json's path."""
    folder = Path(folder)
    images, annotations = [], []
    for i in range(n_images):
        image, instances = coco_scene(seed, i)
        name = f"scene_{i:05d}.png"
        write_image(folder / "images" / name, image)
        images.append({"id": i + 1, "file_name": name, "height": image.shape[0], "width": image.shape[1]})
        for cat, m, crowd in instances:
            annotations.append(_annotation(len(annotations) + 1, i + 1, cat, m, crowd))
    doc = {
        "info": {"description": f"SpecialSAM procedural litter scenes (seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }
    path = folder / "annotations.json"
    path.write_text(json.dumps(doc))
    return path
