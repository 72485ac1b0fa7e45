"""Carpet task: MVTec AD layout (any category) + the study's synthetic training defects.

Real data (``--data-root /path/to/mvtec_anomaly_detection``, category from ``data.category``)::

    <root>/<category>/train/good/*.png              defect-free images
    <root>/<category>/test/<defect>/NNN.png         real defects (test/good has no masks: skipped)
    <root>/<category>/ground_truth/<defect>/NNN_mask.png

Splits, as in the study:

* **test**: every real defect image with its ground-truth mask; the sample category is the
  defect type (``cut``, ``hole``...). The test set is never used for training or validation.
* **train**: ``n_synthetic`` synthetic defects (``synthetic_defects``: patch / line / circle)
  injected into ``train/good`` images. A fixed pool, so the training-size grid is well defined;
  sample ``i`` depends only on the seed and ``i`` (not on ``n_synthetic``), so pools of
  different sizes are nested and the first ``n`` samples are the size-``n`` training set.
* **val**: ``n_val`` synthetic defects on a held-out ``val_fraction`` of the good images, which
  are never used for training samples (no leakage of backgrounds between train and val).

Good images are assigned to synthetic samples in shuffled rounds (every training good image is
used once before any is used twice). No flips or other augmentation here: training applies them
after the split. ``max_side`` optionally downscales every image (area) and mask (nearest)
before synthesis; the synthetic defect sizes then scale with the downscaled image. ``max_pixels``
refuses a file whose header claims more pixels than that, before decoding (see ``io``).

Without a data root the procedural carpet stand-in (``tasks.procedural.carpet``) takes the place of
the good images and of the real test defects; train and val go through the same synthesis.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from specialsam.errors import UserError
from specialsam.tasks import io
from specialsam.tasks.base import ImageSource, MaskSource, Sample, TaskData
from specialsam.tasks.procedural import carpet as standin
from specialsam.tasks.procedural.synthetic_defects import draw_kind, inject_defect

NAME = "carpet"
STANDIN_NOTE = (
    "using the procedural carpet stand-in; pass --data-root /path/to/mvtec_anomaly_detection to use MVTec AD"
)
MASK_SUFFIX = "_mask"
N_TRAIN_REMEDY = "raise data.n_synthetic (the synthetic training pool)"
"""What to do when a sweep asks for more training samples than the pool holds."""

# rng stream ids (np.random.default_rng([seed, stream, ...])): one per independent decision
_SPLIT, _TRAIN, _VAL = 1, 2, 3


@dataclass
class Options:
    category: str = "carpet"
    """MVTec AD category folder under the data root (any of the 15 works)."""
    n_synthetic: int = 500
    """Size of the synthetic training pool (the largest training size a sweep can ask for)."""
    n_val: int = 100
    """Synthetic validation samples, made from the held-out good images."""
    val_fraction: float = 0.15
    """Fraction of good images reserved for validation samples (never used for training ones)."""
    max_side: int | None = None
    """Downscale images so the longer side is at most this (None: keep the files' size)."""
    max_pixels: int | None = io.DEFAULT_MAX_PIXELS
    """Refuse image or mask files above this many pixels (read from the header); None: no limit."""
    standin_size: int = 512
    """Stand-in only: image side in pixels."""
    standin_good: int = 60
    """Stand-in only: number of defect-free carpet pieces (train + val pool)."""
    standin_test: int = 89
    """Stand-in only: number of test images with defects (MVTec carpet has 89)."""


def _validate(o: Options) -> None:
    def bad(key: str, rule: str, value: object) -> UserError:
        return UserError(
            f"data.{key} must be {rule} (got {value!r}); fix it in the sweep config's data: section"
        )

    for key in ("n_synthetic", "n_val", "standin_good", "standin_test"):
        v = getattr(o, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise bad(key, "an integer of at least 1", v)
    if not isinstance(o.val_fraction, (int, float)) or not 0 < o.val_fraction < 1:
        raise bad("val_fraction", "a number between 0 and 1 (exclusive)", o.val_fraction)
    if o.standin_good < 2:
        raise bad("standin_good", "at least 2 (train and validation both need good images)", o.standin_good)
    if o.max_side is not None and (not isinstance(o.max_side, int) or o.max_side < 32):
        raise bad("max_side", "null or an integer of at least 32", o.max_side)
    if not isinstance(o.standin_size, int) or o.standin_size < 64:
        raise bad("standin_size", "an integer of at least 64", o.standin_size)
    if not isinstance(o.category, str) or not o.category or "/" in o.category or "\\" in o.category:
        raise bad("category", "an MVTec AD category folder name such as carpet", o.category)
    io.check_max_pixels(o.max_pixels, NAME)


def split_good(n_good: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the good images used for (train, val) synthesis; disjoint, both non-empty."""
    perm = np.random.default_rng([seed, _SPLIT]).permutation(n_good)
    n_val = min(n_good - 1, max(1, round(val_fraction * n_good)))
    return sorted(int(i) for i in perm[n_val:]), sorted(int(i) for i in perm[:n_val])


def synthesise(
    goods: Sequence[tuple[str, Callable[[], np.ndarray]]], n: int, seed: int, stream: int, tag: str
) -> list[Sample]:
    """``n`` synthetic-defect samples on the given good images (key, loader). Sample ``i`` is a
    pure function of (seed, stream, i, the good images); each good image is loaded once and held,
    and a sample's defect is generated when its pixels are read (so a pool of 8,000 holds the good
    images, not 8,000 defect images)."""
    m = len(goods)
    rounds: dict[int, np.ndarray] = {}
    wanted: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        r = i // m
        if r not in rounds:
            rounds[r] = np.random.default_rng([seed, stream, 0, r]).permutation(m)
        wanted[int(rounds[r][i % m])].append(i)
    out: list[Sample | None] = [None] * n
    for g in sorted(wanted):
        key, load = goods[g]
        image = load()  # held (one per good image), the defects generated from it when read
        for i in wanted[g]:
            kind = draw_kind(np.random.default_rng([seed, stream, 1, i]))
            made = partial(_defect, image, (seed, stream, 1, i))
            out[i] = Sample(
                f"{key}#{tag}-{i}-{kind}",
                ImageSource(partial(_part, made, "image")),
                MaskSource(partial(_part, made, "mask")),
                kind,
            )
    return out  # type: ignore[return-value]


def _defect(image: np.ndarray, rng_key: tuple[int, ...]):
    """The synthetic defect of one sample: a pure function of the good image and its rng key."""
    return inject_defect(image, np.random.default_rng(list(rng_key)))


def _part(made: Callable, what: str) -> np.ndarray:
    return getattr(made(), what)


def _seed(seed: int) -> int:
    return int(seed) % (2**32)


def _train_val(goods: Sequence[tuple[str, Callable[[], np.ndarray]]], o: Options, seed: int):
    train_idx, val_idx = split_good(len(goods), o.val_fraction, seed)
    train = synthesise([goods[i] for i in train_idx], o.n_synthetic, seed, _TRAIN, "synth")
    val = synthesise([goods[i] for i in val_idx], o.n_val, seed, _VAL, "val")
    return train, val, len(train_idx), len(val_idx)


def load(data_root: Path | None, options: Options, seed: int) -> TaskData:
    _validate(options)
    if options.category == ALL:
        raise UserError(
            "data.category=all surveys every category zero-shot: add --baseline-only "
            "(a fine-tuning sweep takes one category)"
        )
    seed = _seed(seed)
    if data_root is None:
        return _load_standin(options, seed)
    return _load_mvtec(Path(data_root), options, seed)


# ---------------------------------------------------------------- MVTec AD


def _categories(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train").is_dir())


ALL = "all"
"""``data.category: all``: every category under the root (the zero-shot survey, ``--baseline-only``)."""


def survey_categories(data_root: Path | None, category: str) -> list[str]:
    """The categories a survey scores: every MVTec AD category folder under ``data_root`` for
    ``all`` (none found: a one-line error), else ``category`` alone; the stand-in is one."""
    if data_root is None:
        return [category if category != ALL else "carpet"]
    if category != ALL:
        return [category]
    found = _categories(data_root) if data_root.is_dir() else []
    if not found:
        raise UserError(
            f"data.category=all: no MVTec AD category folders (<category>/train/good) under {data_root}; "
            "pass --data-root pointing at mvtec_anomaly_detection"
        )
    return found


def _category_dir(root: Path, category: str) -> Path:
    cat = root / category
    if cat.is_dir():
        return cat
    if not root.is_dir():
        raise UserError(
            f"data root {root} is not a folder; pass --data-root pointing at mvtec_anomaly_detection"
        )
    available = _categories(root)
    if (root / "train" / "good").is_dir():
        raise UserError(
            f"MVTec category folder {cat} not found; {root} looks like a category folder itself: "
            f"pass its parent {root.parent} as --data-root and set data.category: {root.name}"
        )
    if available:
        raise UserError(
            f"MVTec category folder {cat} not found; available categories under {root}: "
            f"{', '.join(available)} (set data.category)"
        )
    raise UserError(
        f"MVTec category folder {cat} not found and {root} has no category folders "
        f"(expected <root>/<category>/train/good/*.png); pass --data-root pointing at mvtec_anomaly_detection"
    )


def _mask_path(gt_dir: Path, image: Path) -> Path | None:
    for suffix in (".png", *io.IMAGE_SUFFIXES):
        p = gt_dir / f"{image.stem}{MASK_SUFFIX}{suffix}"
        if p.is_file():
            return p
    return None


def _read_test(cat: Path, category: str, o: Options) -> tuple[list[Sample], list[str]]:
    test_dir, gt_root = cat / "test", cat / "ground_truth"
    if not test_dir.is_dir():
        raise UserError(
            f"MVTec category {category} has no test/ folder ({test_dir}); re-extract the category"
        )
    defects = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != "good")
    if not defects:
        raise UserError(
            f"MVTec category {category} has no defect folders under {test_dir} (only good/ or nothing); "
            "re-extract the category"
        )
    if not gt_root.is_dir():
        raise UserError(
            f"MVTec category {category} has no ground_truth/ folder ({gt_root}); the test defects need "
            "their masks: re-extract the category's archive"
        )
    samples, empty = [], []
    for defect in defects:
        for img_path in io.list_images(test_dir / defect):
            mask_path = _mask_path(gt_root / defect, img_path)
            if mask_path is None:
                raise UserError(
                    f"test image {img_path} has no ground-truth mask "
                    f"(expected {gt_root / defect / (img_path.stem + MASK_SUFFIX + '.png')}); "
                    "add the mask or remove the image"
                )
            key = f"test/{defect}/{img_path.name}"
            s = io.streamed_pair(key, img_path, mask_path, defect, o.max_pixels, o.max_side)
            if s is None:
                empty.append(key)
                continue
            samples.append(s)
    if not samples:
        raise UserError(
            f"MVTec category {category}: no test defect image has a non-empty mask under {gt_root}; "
            "check the ground-truth files"
        )
    return samples, empty


def _load_mvtec(root: Path, o: Options, seed: int) -> TaskData:
    cat = _category_dir(root, o.category)
    good_dir = cat / "train" / "good"
    good_paths = io.list_images(good_dir)
    if not good_paths:
        raise UserError(
            f"no good images in {good_dir} (expected *.png); MVTec category {o.category} needs its "
            "train/good/ folder for synthetic training defects"
        )
    if len(good_paths) < 2:
        raise UserError(
            f"only one good image in {good_dir}; at least 2 are needed "
            "(training and validation use separate ones)"
        )
    test, empty = _read_test(cat, o.category, o)

    def loader(path: Path) -> Callable[[], np.ndarray]:
        return lambda: io.resize_image(io.read_image(path, o.max_pixels), o.max_side)

    goods = [(f"train/good/{p.name}", loader(p)) for p in good_paths]
    train, val, n_tr, n_va = _train_val(goods, o, seed)
    defects = sorted({s.category for s in test})
    notes = [
        f"MVTec AD {o.category}: train = {len(train)} synthetic defects on {n_tr} good images, "
        f"val = {len(val)} on {n_va} held-out good images, test = {len(test)} real defect images "
        f"({', '.join(defects)})"
    ]
    if empty:
        notes.append(f"skipped {len(empty)} test images with empty masks (e.g. {empty[0]})")
    first = io.read_image(good_paths[0], o.max_pixels)
    if (first[..., 0] == first[..., 1]).all() and (first[..., 1] == first[..., 2]).all():
        notes.append(
            f"MVTec {o.category} is grayscale: the synthetic hue-shifted circle defect leaves grey pixels "
            "unchanged, so those training samples have masks over invisible defects (as in the study)"
        )
    return TaskData(
        name=NAME,
        data="real",
        train=train,
        val=val,
        test=test,
        source=f"MVTec AD category {o.category} at {cat}",
        notes=notes,
    )


# ---------------------------------------------------------------- procedural stand-in


def _load_standin(o: Options, seed: int) -> TaskData:
    size = o.standin_size
    pieces = standin.good_pieces(o.standin_good, size, seed)
    goods = [
        (f"procedural/good/{i:03d}", (lambda im=im: io.resize_image(im, o.max_side)))
        for i, im in enumerate(pieces)
    ]
    counters: dict[str, int] = defaultdict(int)
    test = []
    for defect, image, mask in standin.test_pieces(o.standin_test, size, seed):
        image, mask = io.resize_pair(image, mask, o.max_side)
        k = counters[defect]
        counters[defect] += 1
        test.append(Sample(f"procedural/test/{defect}/{k:03d}", image, mask, defect))
    train, val, n_tr, n_va = _train_val(goods, o, seed)
    return TaskData(
        name=NAME,
        data="procedural",
        train=train,
        val=val,
        test=test,
        source=(
            f"procedural carpet stand-in ({size}px woven texture; train/val: the study's synthetic defects "
            f"on {n_tr}/{n_va} good pieces; test: {len(test)} stand-in defects of MVTec carpet's 5 types)"
        ),
        notes=[STANDIN_NOTE],
    )
