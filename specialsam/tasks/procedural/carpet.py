"""Procedural stand-in for MVTec AD *carpet*, used when no real data is configured.

What it makes, all at ``size`` x ``size`` (512 by default):

* **Good images**: a woven (basket-weave) carpet texture, one fixed carpet design (so the images
  look like photographs of one product, as in MVTec AD) with per-image variation: the weave's
  phase, a slight rotation and waviness, per-loop brightness and colour variation, fibre detail
  from a real photograph (scikit-image's ``grass``, randomly cropped, rotated, flipped), yarn
  streaks, uneven lighting and sensor noise.
* **Test images with real-looking defects**, each on a further carpet piece, made by a process
  that is deliberately *not* the synthetic training generator (as in the study, where the model
  is trained on synthetic defects and tested on MVTec's real ones). The five categories and their
  counts mirror MVTec AD carpet's test set (89 defect images): ``color`` (irregular stains that
  tint the fibres), ``cut`` (a slit showing the dark backing, with pushed-apart lips), ``hole``
  (an irregular hole with frayed edges), ``metal_contamination`` (clusters of bright metallic
  specks with shadows) and ``thread`` (a stray curved yarn lying on the carpet). Edges are soft
  and the ground truth is the region a careful annotator would outline (the smooth outline at
  ``alpha > 0.5``, specks closed into one region), not an exact pixel footprint, like real
  hand-drawn masks.

Everything is a pure function of the seed; the carpet *design* (colours, loop size) is fixed and
does not depend on the seed, only the individual pieces do.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np

REFERENCE_SIZE = 512
TEST_DEFECTS: tuple[tuple[str, int], ...] = (
    ("color", 19),
    ("cut", 17),
    ("hole", 17),
    ("metal_contamination", 17),
    ("thread", 19),
)
"""MVTec AD carpet's defect categories and test counts (89 in all)."""

# The fixed carpet design.
_PERIOD = 14.0  # loop length in px at 512 px
_THREADS = 3  # parallel yarns per loop
_WARP = np.array([172.0, 157.0, 137.0], np.float32)  # yarn colour of loops along x
_WEFT = np.array([158.0, 149.0, 133.0], np.float32)  # yarn colour of loops along y
_CELLS = 64  # per-loop variation table (even, so a table cell keeps its loop's orientation)
_TILE_RES = 24  # tile pixels per loop cell
_COARSE = 8  # coordinate maps are computed on a grid this many pixels apart, then interpolated


@functools.cache
def _weave_tile() -> np.ndarray:
    """One period (2 x 2 loop cells) of the basket weave, two channels: the loop relief's
    brightness (height + shading from a light at the top left) and the loop's orientation
    (1 where it runs along y)."""
    n = 2 * _TILE_RES
    c = (np.arange(n, dtype=np.float32) + 0.5) / _TILE_RES
    cv_, cu = np.meshgrid(c, c, indexing="ij")
    i, j = np.floor(cu), np.floor(cv_)
    fu, fv = cu - i, cv_ - j
    o = ((i + j) % 2).astype(np.float32)
    along = np.where(o > 0, fv, fu)
    across = np.where(o > 0, fu, fv)
    envelope = np.sin(np.pi * along) ** 0.7
    yarns = np.abs(np.sin(np.pi * _THREADS * across)) ** 0.6
    height = envelope * (0.45 + 0.55 * yarns)
    pad = np.pad(height, 1, mode="wrap")  # gradients per loop cell, wrapped: the tile repeats
    gx = (pad[1:-1, 2:] - pad[1:-1, :-2]) * (_TILE_RES / 2)
    gy = (pad[2:, 1:-1] - pad[:-2, 1:-1]) * (_TILE_RES / 2)
    relief = 0.45 * height - 0.18 * 0.35 * (gx + gy)
    return np.ascontiguousarray(np.stack([relief, o], -1).astype(np.float32))


@functools.cache
def _grass(size: int) -> np.ndarray:
    """scikit-image's grass photograph, zero mean / unit std, resized to 1.5 * size."""
    spec = importlib.util.find_spec("skimage")
    path = Path(spec.submodule_search_locations[0]) / "data" / "grass.png" if spec else None
    g = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path is not None and path.is_file() else None
    if g is None:  # an unusual install: let scikit-image find it
        from skimage import data

        g = data.grass()
    g = g.astype(np.float32)
    g = (g - g.mean()) / g.std()
    n = int(round(1.5 * size))
    return cv2.resize(g, (n, n), interpolation=cv2.INTER_AREA if n < g.shape[0] else cv2.INTER_LINEAR)


@functools.cache
def _noise_bank(size: int) -> np.ndarray:
    """Fixed noise that per-image crops are drawn from (cheaper than fresh normals per image):
    x-streaks, y-streaks and three channels of sensor noise, unit std, 1.5 * size square."""
    n = int(round(1.5 * size))
    g = np.random.default_rng(20240611)
    base = g.standard_normal((n, n), dtype=np.float32)
    sx, sy = cv2.blur(base, (7, 1)), cv2.blur(base, (1, 7))
    sensor = g.standard_normal((n, n, 3), dtype=np.float32)
    return np.ascontiguousarray(
        np.concatenate([(sx / sx.std())[..., None], (sy / sy.std())[..., None], sensor], -1)
    )


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth noise, about [-1, 1]: a random grid upsampled bicubically."""
    g = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_CUBIC)


def _crop(rng: np.random.Generator, bank: np.ndarray, size: int) -> np.ndarray:
    y, x = (int(v) for v in rng.integers(0, bank.shape[0] - size + 1, 2))
    return bank[y : y + size, x : x + size]


def _fibre_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    crop = np.rot90(_crop(rng, _grass(size), size), int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _weave_coords(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel position in loop-cell units: slight rotation, random phase, gentle waviness.
    Smooth, so computed on a coarse grid and interpolated."""
    n = size // _COARSE + 2
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) * _COARSE
    p = _PERIOD * size / REFERENCE_SIZE * float(rng.uniform(0.97, 1.03))
    a = np.deg2rad(float(rng.uniform(-2.5, 2.5)))
    wave = 0.3  # in loop cells
    u = (xx * np.cos(a) + yy * np.sin(a)) / p + rng.uniform(0, 64) + _lowfreq(rng, n, 5) * wave
    v = (yy * np.cos(a) - xx * np.sin(a)) / p + rng.uniform(0, 64) + _lowfreq(rng, n, 5) * wave
    big = (n - 1) * _COARSE + 1  # coarse sample k sits at pixel k * _COARSE
    u = cv2.resize(u.astype(np.float32), (big, big), interpolation=cv2.INTER_LINEAR)[:size, :size]
    v = cv2.resize(v.astype(np.float32), (big, big), interpolation=cv2.INTER_LINEAR)[:size, :size]
    return np.ascontiguousarray(u), np.ascontiguousarray(v)


def carpet_texture(rng: np.random.Generator, size: int = REFERENCE_SIZE) -> np.ndarray:
    """One defect-free piece of the carpet: size x size x 3 uint8 RGB."""
    u, v = _weave_coords(rng, size)
    half = np.float32(0.5)
    weave = cv2.remap(
        _weave_tile(),
        u * _TILE_RES - half,
        v * _TILE_RES - half,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_WRAP,
    )
    relief, o = weave[..., 0], weave[..., 1]
    # per-loop colour: the yarn colour of the loop's orientation, jittered brightness and tint
    ci, cj = np.meshgrid(np.arange(_CELLS), np.arange(_CELLS), indexing="xy")
    cell_o = ((ci + cj) % 2)[..., None].astype(np.float32)
    jitter = rng.normal(0, 1, (_CELLS, _CELLS, 2)).astype(np.float32)
    tint = (1.0 + rng.normal(0, 0.015, 3)).astype(np.float32) * float(rng.uniform(0.93, 1.07))
    table = (_WARP + cell_o * (_WEFT - _WARP)) * tint * (1 + 0.065 * jitter[..., :1])
    table += jitter[..., 1:] * 3.0 * np.array([1.0, 0.6, 0.2], np.float32)
    colour = cv2.remap(
        table.astype(np.float32), u - half, v - half, cv2.INTER_NEAREST, borderMode=cv2.BORDER_WRAP
    )
    # fibres: a real photograph's fine structure + streaks along each loop's yarn
    bank = _crop(rng, _noise_bank(size), size)
    lum = (
        relief
        + 0.06 * _fibre_crop(rng, size)
        + 0.04 * bank[..., 0]
        + 0.04 * o * (bank[..., 1] - bank[..., 0])
    )
    lum += 0.5
    lum *= 1.0 + 0.05 * _lowfreq(rng, size, 3)  # uneven lighting
    img = colour * lum[..., None]
    img += bank[..., 2:] * 1.5
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- test defects (not the training generator)
#
# Each renderer draws one defect on a square float32 canvas cut from the carpet piece and returns
# (canvas, mask); sizes are given for 512 px images and scaled by ``s = size / 512``.

_CANVAS = 200  # canvas side at 512 px: room for the largest defect


def _place(rng: np.random.Generator, pts: np.ndarray, size: int, margin: float) -> np.ndarray:
    """Translate a point set (N x 2, x then y) to a random place where it lies ``margin`` px
    inside a ``size`` canvas (centred when it is too big for that)."""
    lo, hi = pts.min(0), pts.max(0)
    out = pts.copy()
    for k in range(2):
        a, b = margin - lo[k], size - margin - hi[k]
        out[:, k] += rng.uniform(a, b) if b > a else (a + b) / 2
    return out


def _outline(rng: np.random.Generator, radius: float, roughness: float) -> np.ndarray:
    """An irregular closed outline around the origin: a radius with random harmonics."""
    ang = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    rad = np.ones_like(ang)
    for k in range(2, 12):
        rad += rng.uniform(0, roughness / k**1.5) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rad = radius * np.maximum(rad / rad.mean(), 0.3)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)


def _fill(pts: np.ndarray, size: int, soften: float) -> np.ndarray:
    """Soft (alpha 0..1) filled polygon, anti-aliased, blurred by ``soften`` px."""
    m = np.zeros((size, size), np.float32)
    cv2.fillPoly(m, [np.rint(pts * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    return cv2.GaussianBlur(m, (0, 0), soften) if soften > 0 else m


def _curve(rng: np.random.Generator, length: float, wiggle: float) -> np.ndarray:
    """A smooth random curve (N x 2 points, x then y) of about ``length`` px from the origin."""
    n = max(8, int(length / 3))
    turn = np.convolve(rng.normal(0, wiggle, n), np.ones(5) / 5, mode="same")
    ang = rng.uniform(0, 2 * np.pi) + np.cumsum(turn)
    steps = np.stack([np.cos(ang), np.sin(ang)], 1) * (length / n)
    return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)])


def _stroke(size: int, pts: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, distance to the centre line) of a curve drawn ``width`` px wide, anti-aliased."""
    line = np.full((size, size), 255, np.uint8)
    cv2.polylines(line, [np.rint(pts).astype(np.int32)], False, 0, 1, cv2.LINE_8)
    dist = cv2.distanceTransform(line, cv2.DIST_L2, 5)
    return np.clip(width / 2 + 0.5 - dist, 0, 1).astype(np.float32), dist


def _mix(img: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return img + (other - img) * alpha[..., None]


def _noise(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.standard_normal((size, size), dtype=np.float32)


def _fuzz(rng: np.random.Generator, size: int) -> np.ndarray:
    """Fibrous 0..1 noise."""
    return np.clip(0.5 + cv2.blur(_noise(rng, size), (3, 3)), 0, 1)


def _backing(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """What shows through a hole or cut: the dark backing with a trace of fibres."""
    base = np.array([38.0, 33.0, 28.0], np.float32) * float(rng.uniform(0.7, 1.3))
    grain = cv2.GaussianBlur(_noise(rng, img.shape[0]), (0, 0), 1.0)[..., None] * 6.0
    return base + 0.15 * img + grain


def _shifted(a: np.ndarray, d: int) -> np.ndarray:
    out = np.zeros_like(a)
    out[d:, d:] = a[:-d, :-d]
    return out


def _defect_hole(rng, img, s):
    size = img.shape[0]
    alpha = _fill(
        _place(rng, _outline(rng, float(rng.uniform(9, 24)) * s, 0.9), size, 6 * s + 3), size, 1.5 * s
    )
    band = np.clip(alpha * (1 - alpha) * 4.0, 0, 1)
    fray = np.clip(alpha + band * (_fuzz(rng, size) - 0.5) * 1.2, 0, 1)  # fibres hanging over the edge
    out = _mix(img, _backing(rng, img), fray)
    out += (band * _fuzz(rng, size) * 40.0)[..., None]  # lifted fibres at the rim
    return out, alpha > 0.5  # the annotator's smooth outline, not the frayed edge


def _defect_cut(rng, img, s):
    size = img.shape[0]
    width = float(rng.uniform(2.5, 6.0)) * s
    pts = _place(rng, _curve(rng, float(rng.uniform(30, 85)) * s, wiggle=0.08), size, width + 6 * s + 3)
    alpha, dist = _stroke(size, pts, width)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 0.6 * s)
    lips = np.clip(1 - np.abs(dist - width / 2 - 1.5 * s) / (1.5 * s), 0, 1) * _fuzz(rng, size)
    out = _mix(img, _backing(rng, img), alpha)
    out += (lips * 35.0)[..., None]  # pushed-apart fibres along both lips
    return out, (alpha > 0.5) | (dist <= width / 2 + 2.0 * s)  # the slit and its lips, smoothly


_STAINS = (
    np.array([1.35, 0.70, 0.70], np.float32),  # wine / rust
    np.array([0.70, 0.80, 1.30], np.float32),  # ink
    np.array([1.20, 1.10, 0.55], np.float32),  # yellowed
    np.array([0.80, 1.20, 0.80], np.float32),  # green dye
    np.array([0.95, 0.75, 0.55], np.float32),  # coffee
    np.array([1.15, 0.75, 1.15], np.float32),  # purple
)


def _defect_color(rng, img, s):
    size = img.shape[0]
    r = float(rng.uniform(14, 40)) * s
    alpha = _fill(_place(rng, _outline(rng, r, 1.2), size, 4 * s + 3), size, 2.0 * s)
    tint = _STAINS[int(rng.integers(len(_STAINS)))] * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    tint /= tint.mean()
    stained = img * (tint * float(rng.uniform(0.7, 1.0)))
    strength = float(rng.uniform(0.55, 0.9))
    mottle = np.clip(0.75 + 0.4 * _lowfreq(rng, size, max(4, int(size / (r + 1)))), 0.3, 1.0)
    return _mix(img, stained, alpha * strength * mottle), alpha > 0.5


def _defect_metal(rng, img, s):
    size = img.shape[0]
    rc = float(rng.uniform(6, 18)) * s
    n = int(rng.integers(2, 9))
    offsets = rng.normal(0, rc / 2, (n, 2))
    outlines = [_outline(rng, float(rng.uniform(1.5, 5.0)) * s, 1.5) + off for off in offsets]
    shift = _place(rng, np.concatenate(outlines), size, 4 * s + 3) - np.concatenate(outlines)
    specks = np.zeros((size, size), np.float32)
    for pts in outlines:
        specks = np.maximum(specks, _fill(pts + shift[0], size, 0.5))
    shadow = cv2.GaussianBlur(_shifted(specks, max(1, round(1.5 * s))), (0, 0), 1.0 * s + 0.3)
    out = img * (1 - 0.45 * shadow)[..., None]
    metal = np.array([196.0, 200.0, 208.0], np.float32) * float(rng.uniform(0.75, 1.1))
    glint = np.clip(0.8 + 0.45 * _lowfreq(rng, size, max(8, int(size / (3 * s + 1)))), 0.4, 1.3)
    out = _mix(out, metal * glint[..., None], specks)
    hard = ((specks > 0.5) | (shadow > 0.5)).astype(np.uint8)
    k = max(3, int(round(rc * 0.8)) | 1)
    closed = cv2.morphologyEx(hard, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    return out, closed.astype(bool) | (specks > 0.5)


def _defect_thread(rng, img, s):
    size = img.shape[0]
    width = float(rng.uniform(2.0, 4.5)) * s
    pts = _place(rng, _curve(rng, float(rng.uniform(40, 140)) * s, wiggle=0.25), size, width + 2 * s + 3)
    alpha, dist = _stroke(size, pts, width)
    shade = np.sqrt(np.clip(1 - (dist / (width / 2 + 0.5)) ** 2, 0, 1))
    if rng.random() < 0.7:  # a loose yarn of the carpet itself, lighter where it lies on top
        colour = (_WARP if rng.random() < 0.5 else _WEFT) * float(rng.uniform(1.05, 1.35))
    else:  # a foreign thread
        colour = rng.uniform(20, 230, 3).astype(np.float32)
    yarn = colour * (0.6 + 0.4 * shade * (1 + 0.12 * _fuzz(rng, size)))[..., None]
    out = img * (1 - 0.35 * _shifted(alpha, max(1, round(1.5 * s))))[..., None]
    return _mix(out, yarn, alpha), alpha > 0.5


DEFECT_RENDERERS = {
    "color": _defect_color,
    "cut": _defect_cut,
    "hole": _defect_hole,
    "metal_contamination": _defect_metal,
    "thread": _defect_thread,
}


def defective_carpet(rng: np.random.Generator, size: int, defect: str) -> tuple[np.ndarray, np.ndarray]:
    """A fresh carpet piece with one test-style defect: (image uint8 RGB, mask bool)."""
    image = carpet_texture(rng, size)
    s = size / REFERENCE_SIZE
    w = min(size, int(np.ceil(_CANVAS * s)))
    y, x = (int(v) for v in rng.integers(0, size - w + 1, 2))
    canvas, m = DEFECT_RENDERERS[defect](rng, image[y : y + w, x : x + w].astype(np.float32), s)
    image[y : y + w, x : x + w] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), bool)
    mask[y : y + w, x : x + w] = m
    return image, mask


# ---------------------------------------------------------------- the stand-in's pools


def good_pieces(n: int, size: int, seed: int) -> list[np.ndarray]:
    """``n`` defect-free carpet pieces (the stand-in's ``train/good``)."""
    return [carpet_texture(np.random.default_rng([seed, 101, i]), size) for i in range(n)]


def test_categories(n: int) -> list[str]:
    """Defect category of each of ``n`` test images: MVTec carpet's proportions (exact at 89),
    rounded by largest remainder."""
    total = sum(c for _, c in TEST_DEFECTS)
    quotas = [c * n / total for _, c in TEST_DEFECTS]
    counts = [int(np.floor(q)) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda k: (counts[k] - quotas[k], k))
    for k in by_remainder[: n - sum(counts)]:  # largest remainders first
        counts[k] += 1
    return [name for (name, _), c in zip(TEST_DEFECTS, counts, strict=True) for _ in range(c)]


def test_pieces(n: int, size: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` (category, image, mask) test images with real-looking defects, on carpet pieces
    that are neither the good pool's nor each other's."""
    out = []
    for k, defect in enumerate(test_categories(n)):
        image, mask = defective_carpet(np.random.default_rng([seed, 102, k]), size, defect)
        out.append((defect, image, mask))
    return out
