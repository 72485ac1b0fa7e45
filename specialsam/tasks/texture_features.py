"""Texture descriptors and k-means for grouping wood textures without pretrained weights.

The study grouped its wood photographs into clusters of look-alike textures with ResNet18
features. Offline we have no pretrained weights, so the default descriptor is hand-made and
computed from the pixels alone:

* colour: HSV histograms (hue 12, saturation 8, value 8 bins) and CIE Lab mean/std,
* oriented frequency content: log energies of a Gabor filter bank (4 orientations x 3 wavelengths),
* micro-texture: the histogram of uniform local binary patterns (8 neighbours, radius 1).

Each column is standardised over the collection and each block (HSV histograms, Lab statistics,
Gabor energies, LBP) is scaled to a fixed total weight (``BLOCK_WEIGHTS``), so no block wins by
having more columns. Colour columns are scaled by 2 against texture (4x in squared distance):
with equal weights, k-means grouped textures by ring period and cut (flat- vs quarter-sawn) as
much as by wood, and recovered the procedural stand-in's five colour families with a purity of
only 0.64-0.75 (seeds 0-2), so a "standard" mosaic put two boards of one wood side by side in ~22%
of cases. Weighted 2:1 the purity is 0.97-1.00, and grain figure separates textures within a
cluster (hard mode). On photographs, where colour and tone differ between species too, this is a
judgement call.
Clusters come from a seeded k-means++ (several restarts, best inertia). When a ResNet18
checkpoint is configured, :func:`resnet18_features` gives the study's descriptor instead (loaded
with ``weights_only=True``; nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from specialsam.errors import UserError

ANALYSIS_SIDE = 128
GABOR_THETAS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GABOR_WAVELENGTHS = (4.0, 8.0, 16.0)


def _analysis_view(image: np.ndarray, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Centre square crop resized to ``side`` (textures are homogeneous; a crop keeps the scale)."""
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = image[y0 : y0 + s, x0 : x0 + s]
    interp = cv2.INTER_AREA if s > side else cv2.INTER_LINEAR
    return cv2.resize(crop, (side, side), interpolation=interp)


def _hist(values: np.ndarray, bins: int, upper: float) -> np.ndarray:
    h, _ = np.histogram(values, bins=bins, range=(0, upper))
    return h.astype(np.float64) / max(h.sum(), 1)


def _uniform_lbp_hist(gray: np.ndarray) -> np.ndarray:
    """Histogram (10 bins) of rotation-invariant uniform LBP codes, 8 neighbours at radius 1."""
    g = gray.astype(np.int16)
    c = g[1:-1, 1:-1]
    offsets = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    bits = np.stack(
        [(g[1 + dy : g.shape[0] - 1 + dy, 1 + dx : g.shape[1] - 1 + dx] >= c) for dy, dx in offsets]
    ).astype(np.int8)
    transitions = np.abs(np.diff(np.concatenate([bits, bits[:1]]), axis=0)).sum(0)
    ones = bits.sum(0)
    codes = np.where(transitions <= 2, ones, 9)  # 0..8 uniform by number of ones, 9 non-uniform
    h = np.bincount(codes.ravel(), minlength=10).astype(np.float64)
    return h / h.sum()


def _gabor_energies(gray: np.ndarray) -> np.ndarray:
    g = gray.astype(np.float32) / 255.0
    g -= g.mean()
    out = []
    for lam in GABOR_WAVELENGTHS:
        ksize = int(2 * round(lam * 1.5) + 1)
        for theta in GABOR_THETAS:
            k = cv2.getGaborKernel((ksize, ksize), 0.56 * lam, theta, lam, 0.5, 0, ktype=cv2.CV_32F)
            k -= k.mean()
            r = cv2.filter2D(g, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)
            out.append(np.log1p(float(np.mean(r * r)) * 100.0))
    return np.asarray(out)


BLOCKS = ("hsv_hist", "lab_stats", "gabor", "lbp")
BLOCK_WEIGHTS = {"hsv_hist": 2.0, "lab_stats": 2.0, "gabor": 1.0, "lbp": 1.0}
"""Relative weight of each block in the k-means distance (see the module docstring)."""


def handmade_features(image: np.ndarray) -> dict[str, np.ndarray]:
    """The descriptor blocks of one RGB uint8 image."""
    view = _analysis_view(image)
    hsv = cv2.cvtColor(view, cv2.COLOR_RGB2HSV)
    lab = cv2.cvtColor(view, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float64)
    gray = cv2.cvtColor(view, cv2.COLOR_RGB2GRAY)
    return {
        "hsv_hist": np.concatenate(
            [_hist(hsv[..., 0], 12, 180), _hist(hsv[..., 1], 8, 256), _hist(hsv[..., 2], 8, 256)]
        ),
        "lab_stats": np.concatenate([lab.mean(0), lab.std(0)]) / 255.0,
        "gabor": _gabor_energies(gray),
        "lbp": _uniform_lbp_hist(gray),
    }


def _standardise(x: np.ndarray) -> np.ndarray:
    mu, sd = x.mean(0), x.std(0)
    return np.where(sd > 1e-9, (x - mu) / np.where(sd > 1e-9, sd, 1.0), 0.0)


def texture_features(images: Sequence[np.ndarray]) -> np.ndarray:
    """(N, D) standardised hand-made descriptor, each block at its ``BLOCK_WEIGHTS`` weight."""
    per = [handmade_features(im) for im in images]
    cols = []
    for b in BLOCKS:
        x = _standardise(np.stack([p[b] for p in per]))
        cols.append(x * (BLOCK_WEIGHTS[b] / np.sqrt(x.shape[1])))
    return np.concatenate(cols, axis=1)


def resnet18_features(
    images: Sequence[np.ndarray], checkpoint: Path | str, batch_size: int = 16
) -> np.ndarray:
    """(N, 512) standardised global-pooled torchvision ResNet18 features from a local checkpoint."""
    import torch
    import torchvision

    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(
            f"data.resnet18_checkpoint {path} does not exist; point it at a resnet18 .pth state dict"
        )
    model = torchvision.models.resnet18(weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise UserError(
            f"data.resnet18_checkpoint {path} is not a torchvision resnet18 state dict "
            f"({type(exc).__name__}); "
            "save one with torch.save(model.state_dict(), path)"
        ) from None
    model.fc = torch.nn.Identity()
    model.eval()
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    feats = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = [
                (_analysis_view(im, 224).astype(np.float32) / 255.0 - mean) / std
                for im in images[i : i + batch_size]
            ]
            x = torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            feats.append(model(x).numpy())
    return _standardise(np.concatenate(feats).astype(np.float64))


def kmeans(
    x: np.ndarray, k: int, seed: int, n_init: int = 8, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means++ with restarts: (labels (N,), centres (k, D)).

    Labels are canonicalised (cluster 0 holds the lowest-index item, cluster 1 the lowest-index
    item not in cluster 0, ...) so equal partitions give equal labels.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters for {n} items")
    rng = np.random.default_rng([int(seed), 4242])
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        centres = [x[rng.integers(n)]]
        for _ in range(1, k):
            d2 = np.min(((x[:, None] - np.asarray(centres)[None]) ** 2).sum(-1), 1)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1 / n)
            centres.append(x[rng.choice(n, p=p)])
        c = np.asarray(centres)
        labels = np.zeros(n, int)
        for it in range(max_iter):
            d = ((x[:, None] - c[None]) ** 2).sum(-1)
            new = d.argmin(1)
            for j in range(k):  # an empty cluster takes the point farthest from its centre
                if not np.any(new == j):
                    far = int(d[np.arange(n), new].argmax())
                    new[far] = j
            if it > 0 and np.array_equal(new, labels):
                break
            labels = new
            c = np.stack([x[labels == j].mean(0) for j in range(k)])
        inertia = float(((x - c[labels]) ** 2).sum())
        if best is None or inertia < best[0] - 1e-9:
            best = (inertia, labels.copy(), c.copy())
    assert best is not None
    _, labels, c = best
    order: list[int] = []
    for lab in labels:
        if lab not in order:
            order.append(int(lab))
    remap = np.empty(k, int)
    remap[order] = np.arange(len(order))
    return remap[labels], c[order]


def cluster_textures(
    images: Sequence[np.ndarray], k: int, seed: int, resnet18_checkpoint: Path | str | None = None
) -> np.ndarray:
    """Cluster label per texture image (hand-made descriptor, or ResNet18 when configured)."""
    feats = (
        resnet18_features(images, resnet18_checkpoint) if resnet18_checkpoint else texture_features(images)
    )
    labels, _ = kmeans(feats, k, seed)
    return labels
