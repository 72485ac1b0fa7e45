"""Camouflaged object segmentation: COD10K-v3, plus CAMO / CHAMELEON / NC4K as transfer test sets.

**COD10K-v3 layout** (``data_root`` is the folder holding ``Train/`` and ``Test/``, or its parent
holding ``COD10K-v3/``)::

    Train/Image/COD10K-CAM-1-Aquatic-1-BatFish-1.jpg     Train/GT_Object/COD10K-CAM-1-Aquatic-1-BatFish-1.png
    Test/Image/...                                       Test/GT_Object/...

File names are ``COD10K-<CAM|NonCAM>-<i>-<SuperClass>-<j>-<Class>-<n>``. ``NonCAM`` images contain
no camouflaged object (their masks are empty or absent): they are skipped from segmentation and
counted in a note, as are CAM images whose mask is empty. ``Sample.category`` is the super-class
(``Aquatic``, ``Terrestrial``, ``Flying``, ``Amphibian``, ``Other``) with ``category="super"``
(the default: the report breaks results down by super-class), or ``"Aquatic/BatFish"`` with
``category="class"``; a name that does not follow the pattern gets ``unknown``.

**Splits.** ``test`` is COD10K's Test CAM images (``n_test`` caps it with a seeded subset).
``val`` is carved from Train by ``val_fraction`` with the seed, before ``n_train`` caps the rest,
so the validation set does not move when ``n_train`` changes; ``train`` is seeded-shuffled so its
first ``n`` samples are a nested subset. Exact-duplicate images across train/val/test/extra sets
are dropped from the later one (see ``splits``).

**Extra test sets** (``extra_test_sets: {name: path}``): plain image+mask folders evaluated
zero-shot as transfer sets (``TaskDataWithExtras.extra_tests[name]``). Understood layouts inside
``path`` (first match wins): ``Imgs/``+``GT/`` (the SINet TestDataset packaging of CAMO,
CHAMELEON, COD10K, NC4K), ``Images/``+``GT/`` (CAMO-V.1.0; ``Images/Test`` is used when the
images sit there), ``Image/``+``GT_Object/``, ``Image/``+``GT/``, ``image/``+``mask/``,
``images/``+``masks/``. Masks match images by file stem. ``n_test`` caps each extra set too.

**Memory.** Samples hold decoded pixels. ``max_side`` (default 1024, SAM's input size) downscales
larger images on load (area interpolation; masks nearest) so e.g. 3,000 COD10K train images stay
around 7 GB; lower it (or ``n_train``) on small machines. Horizontal-flip doubling (the study's)
is the sweep's ``train.flip`` (on in ``sweeps/camouflage.yaml``): the pack adds the flipped copies
of the *training* split only, after the split, so no flip of a test image is ever trained on.
``max_pixels`` refuses a file whose header claims more pixels than that, before decoding.

**Empty splits** are one-line errors while loading (e.g. a Test folder holding only NonCAM images,
a Train folder too small to hold out a validation image, an extra test set whose masks are all
empty), never an empty split handed to training or scoring.

**Offline stand-in** (``data_root=None``): an animal-like blob cut from its own background texture
(:mod:`specialsam.tasks.procedural.camouflage`). Its four categories are the background types;
``extra_tests["procedural-transfer"]`` uses an unseen procedural sand background, standing in
for a transfer set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from specialsam.errors import UserError
from specialsam.tasks.base import Sample, empty_split_error
from specialsam.tasks.io import (
    DEFAULT_MAX_PIXELS,
    check_max_pixels,
    list_images,
    streamed_pair,
)
from specialsam.tasks.procedural.camouflage import TRAIN_BACKGROUNDS, camouflage_scene
from specialsam.tasks.splits import (
    TaskDataWithExtras,
    dedupe_samples,
    duplicates_note,
    split_keys,
)

N_TRAIN_REMEDY = "raise data.n_train (or null for all of COD10K Train) or add training images"
"""What to do when a sweep asks for more training samples than the task loaded."""
SUPER_CLASSES = ("Aquatic", "Terrestrial", "Flying", "Amphibian", "Other")
COD_NAME = re.compile(r"^COD10K-(CAM|NonCAM)-(\d+)-([A-Za-z]+)-(\d+)-([A-Za-z0-9_]+)-(\d+)$")
EXTRA_LAYOUTS = (
    ("Imgs", "GT"),
    ("Images", "GT"),
    ("Image", "GT_Object"),
    ("Image", "GT"),
    ("image", "mask"),
    ("images", "masks"),
    ("Imgs", "GT_Object"),
)


@dataclass
class Options:
    n_train: int | None = 6000
    """Cap on training samples (the study used 6,000); None = all."""
    val_fraction: float = 0.1
    """Share of COD10K Train held out for validation (seeded), before n_train applies."""
    n_test: int | None = None
    """Cap on each test set (COD10K Test and every extra set; seeded subset); None = all."""
    max_side: int | None = 1024
    """Downscale images whose longer side exceeds this on load (memory); None keeps full size."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Refuse image or mask files above this many pixels (read from the header); None: no limit."""
    category: str = "super"
    """super: Sample.category = super-class (Aquatic...); class: 'Aquatic/BatFish'."""
    extra_test_sets: dict[str, str] = field(default_factory=dict)
    """name -> folder of a CAMO / CHAMELEON / NC4K style image+mask set, evaluated zero-shot."""
    procedural_train: int = 1000
    """Stand-in only: images generated for train+val."""
    procedural_test: int = 300
    """Stand-in only: images in the test set and in the transfer set."""


def parse_cod10k_name(stem: str) -> tuple[bool, str, str] | None:
    """(is_camouflaged, super-class, class) from a COD10K file stem; None if it does not parse."""
    m = COD_NAME.match(stem)
    if m is None:
        return None
    return m.group(1) == "CAM", m.group(3), m.group(5)


def category_of(stem: str, level: str) -> str:
    parsed = parse_cod10k_name(stem)
    if parsed is None:
        return "unknown"
    _, sup, cls = parsed
    return sup if level == "super" else f"{sup}/{cls}"


def _check_options(o: Options) -> None:
    if o.category not in ("super", "class"):
        raise UserError(f"data.category={o.category!r} for task camouflage; choose super or class")
    if not 0 < o.val_fraction < 0.9:
        raise UserError(f"data.val_fraction={o.val_fraction} for task camouflage; use a value in (0, 0.9)")
    for name in ("n_train", "n_test", "max_side"):
        v = getattr(o, name)
        if v is not None and v < 1:
            raise UserError(f"data.{name}={v} for task camouflage; use a positive number or leave it unset")
    if not isinstance(o.extra_test_sets, dict):
        raise UserError("data.extra_test_sets for task camouflage must map a name to a folder")
    for name in ("procedural_train", "procedural_test"):
        if getattr(o, name) < 3:
            raise UserError(f"data.{name}={getattr(o, name)} for task camouflage; use at least 3")
    check_max_pixels(o.max_pixels, "camouflage")


# ---------------------------------------------------------------------------------------------
# Real data


def cod10k_root(root: Path) -> Path:
    if not (root / "Train").is_dir() and (root / "COD10K-v3" / "Train").is_dir():
        return root / "COD10K-v3"
    return root


def _pairs(img_dir: Path, mask_dir: Path, what: str) -> tuple[list[tuple[Path, Path]], int]:
    """(image, mask) pairs of the camouflaged images in ``img_dir`` and the NonCAM count skipped.
    Any other image without a mask is a UserError listing the first few."""
    if not mask_dir.is_dir():
        raise UserError(
            f"{what}: mask folder {mask_dir} does not exist; the images in {img_dir} need their masks there"
        )
    images = list_images(img_dir)
    if not images:
        raise UserError(f"{what}: no images in {img_dir}; check the dataset path")
    masks = {p.stem: p for p in list_images(mask_dir)}
    pairs, noncam, missing = [], 0, []
    for p in images:
        parsed = parse_cod10k_name(p.stem)
        if parsed is not None and not parsed[0]:
            noncam += 1
            continue
        m = masks.get(p.stem)
        if m is None:
            missing.append(p.name)
        else:
            pairs.append((p, m))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise UserError(
            f"{what}: {len(missing)} images in {img_dir} have no mask in {mask_dir} "
            f"(same file stem expected): {', '.join(missing[:5])}{more}"
        )
    return pairs, noncam


def _load_pairs(
    pairs: list[tuple[Path, Path]], options: Options, prefix: str, keep_empty: bool = False
) -> tuple[list[Sample], int]:
    """Samples from (image, mask) pairs; returns them and how many empty masks were skipped."""
    out, empty = [], 0
    for img_path, mask_path in pairs:
        cat = category_of(img_path.stem, options.category)
        s = streamed_pair(
            f"{prefix}/{img_path.name}",
            img_path,
            mask_path,
            cat,
            options.max_pixels,
            options.max_side,
            keep_empty,
        )
        if s is None:
            empty += 1
        else:
            out.append(s)
    return out, empty


def _cap(pairs: list[tuple[Path, Path]], n: int | None, seed: int, salt: str) -> list[tuple[Path, Path]]:
    if n is None or len(pairs) <= n:
        return pairs
    keep = set(split_keys([p for p, _ in pairs], 0.0, 0.0, seed, salt=salt)[0][:n])
    return [pm for pm in pairs if pm[0] in keep]


def find_image_mask_dirs(path: Path, what: str) -> tuple[Path, Path]:
    """The image and mask folders of a plain test set (see the module docstring's layouts)."""
    if not path.is_dir():
        raise UserError(f"{what}: folder {path} does not exist; fix the path in data.extra_test_sets")
    for img_name, mask_name in EXTRA_LAYOUTS:
        img_dir, mask_dir = path / img_name, path / mask_name
        if not (img_dir.is_dir() and mask_dir.is_dir()):
            continue
        if not list_images(img_dir) and list_images(img_dir / "Test"):
            img_dir = img_dir / "Test"
        if not list_images(mask_dir) and list_images(mask_dir / "Test"):
            mask_dir = mask_dir / "Test"
        return img_dir, mask_dir
    layouts = ", ".join(f"{a}/+{b}/" for a, b in EXTRA_LAYOUTS)
    raise UserError(f"{what}: {path} has no image and mask folders; expected one of {layouts}")


def _empty(split: str, root: Path, why: str, dups: list) -> None:
    """A split with no samples left: a one-line error saying what emptied it."""
    n_dup = sum(d.dropped_split == split for d in dups)
    dropped = f"{n_dup} exact duplicates of earlier splits dropped" if n_dup else ""
    reasons = ", ".join(r for r in (why, dropped) if r)
    if split.startswith("extra:"):
        name = split.removeprefix("extra:")
        raise empty_split_error(
            "camouflage", f"data.extra_test_sets.{name}", str(root), reasons, "fix or remove that test set"
        )
    remedy = {
        "train": "check COD10K Train's images and GT_Object masks",
        "val": "raise data.val_fraction or add images to COD10K Train",
        "test": "COD10K Test needs camouflaged (CAM) images with non-empty GT_Object masks",
    }[split]
    raise empty_split_error("camouflage", split, str(root), reasons, remedy)


def load_real(root: Path, options: Options, seed: int) -> TaskDataWithExtras:
    root = cod10k_root(root)
    notes: list[str] = []
    for split in ("Train", "Test"):
        if not (root / split / "Image").is_dir():
            raise UserError(
                f"COD10K folder {root / split / 'Image'} does not exist; --data-root must hold "
                "COD10K-v3's Train/ and Test/ folders "
                "(Train/Image, Train/GT_Object, Test/Image, Test/GT_Object)"
            )
        if not (root / split / "GT_Object").is_dir():
            raise UserError(
                f"COD10K mask folder {root / split / 'GT_Object'} does not exist; COD10K-v3 keeps the "
                "object masks there (GT_Object, not GT_Edge or GT_Instance)"
            )
    train_pairs, nc_train = _pairs(root / "Train" / "Image", root / "Train" / "GT_Object", "COD10K Train")
    test_pairs, nc_test = _pairs(root / "Test" / "Image", root / "Test" / "GT_Object", "COD10K Test")
    unknown = sum(parse_cod10k_name(p.stem) is None for p, _ in train_pairs + test_pairs)
    by_img = dict(train_pairs)
    tr, va, _ = split_keys(list(by_img), options.val_fraction, 0.0, seed, salt="cod10k-val")
    if options.n_train is not None:
        tr = tr[: options.n_train]
    train, e1 = _load_pairs([(p, by_img[p]) for p in tr], options, "COD10K/Train")
    val, e2 = _load_pairs([(p, by_img[p]) for p in va], options, "COD10K/Train")
    test, e3 = _load_pairs(_cap(test_pairs, options.n_test, seed, "cod10k-test"), options, "COD10K/Test")
    splits: dict[str, list[Sample]] = {"train": train, "val": val, "test": test}
    for name, path in options.extra_test_sets.items():
        what = f"data.extra_test_sets.{name}"
        img_dir, mask_dir = find_image_mask_dirs(Path(path).expanduser().resolve(), what)
        pairs, nc = _pairs(img_dir, mask_dir, what)
        samples, empty = _load_pairs(_cap(pairs, options.n_test, seed, f"extra-{name}"), options, name)
        if not samples:
            _empty(f"extra:{name}", img_dir, f"{len(pairs)} images, {empty} with empty masks", [])
        splits[f"extra:{name}"] = samples
        notes.append(
            f"extra test set {name}: {len(samples)} images from {img_dir}"
            + (f" ({empty} empty masks skipped)" if empty else "")
            + (f" ({nc} NonCAM skipped)" if nc else "")
        )
    splits, dups = dedupe_samples(splits)
    why = {
        "train": f"{len(tr)} images held for training, {e1} with empty masks",
        "val": f"{len(va)} of COD10K Train's {len(by_img)} CAM images held out by data.val_fraction "
        f"{options.val_fraction}, {e2} with empty masks",
        "test": f"{len(test_pairs)} CAM images ({nc_test} NonCAM skipped), {e3} with empty masks",
    }
    for name, samples in splits.items():
        if not samples:
            _empty(name, root, why.get(name, ""), dups)
    if (dn := duplicates_note(dups)) is not None:
        notes.append(dn)
    notes.insert(
        0,
        f"COD10K: skipped {nc_train + nc_test} NonCAM images (no camouflaged object; "
        f"{nc_train} train, {nc_test} test) and {e1 + e2 + e3} CAM images with empty masks",
    )
    if unknown:
        notes.append(
            f"COD10K: {unknown} file names do not follow COD10K-CAM-i-Super-j-Class-n; category 'unknown'"
        )
    if options.max_side is not None:
        notes.append(f"images downscaled to at most {options.max_side} px on the longer side (data.max_side)")
    return TaskDataWithExtras(
        name="camouflage",
        data="real",
        train=splits.pop("train"),
        val=splits.pop("val"),
        test=splits.pop("test"),
        source=str(root),
        notes=notes,
        extra_tests={k.removeprefix("extra:"): v for k, v in splits.items()},
    )


# ---------------------------------------------------------------------------------------------
# Procedural stand-in (its scenes: specialsam.tasks.procedural.camouflage)


def load_procedural(options: Options, seed: int) -> TaskDataWithExtras:
    def make(split: str, i: int, bg: str) -> Sample:
        img, mask = camouflage_scene((seed, 9001, {"pool": 0, "test": 1, "transfer": 2}[split], i), bg)
        return Sample(f"procedural-cod/{split}/{i:05d}", img, mask, bg)

    pool = [make("pool", i, TRAIN_BACKGROUNDS[i % 4]) for i in range(options.procedural_train)]
    tr, va, _ = split_keys(list(range(len(pool))), options.val_fraction, 0.0, seed, salt="procedural-cod-val")
    if options.n_train is not None:
        tr = tr[: options.n_train]
    test = [make("test", i, TRAIN_BACKGROUNDS[i % 4]) for i in range(options.procedural_test)]
    transfer = [make("transfer", i, "Sand") for i in range(options.procedural_test)]
    notes = [
        "camouflage: no --data-root, so procedural camouflage scenes stand in for COD10K "
        "(objects cut from their own background texture); pass --data-root DIR holding COD10K-v3's "
        "Train/ and Test/ folders to use the real data"
    ]
    if options.extra_test_sets:
        notes.append(
            "data.extra_test_sets ignored without --data-root (real transfer sets are not mixed "
            "with a procedural training set); the stand-in's transfer set is 'procedural-transfer'"
        )
    return TaskDataWithExtras(
        name="camouflage",
        data="procedural",
        train=[pool[i] for i in tr],
        val=[pool[i] for i in va],
        test=test,
        source="procedural stand-in: camouflage scenes on grass/gravel/brick/bark (+ sand transfer)",
        notes=notes,
        extra_tests={"procedural-transfer": transfer},
    )


def load(data_root: Path | None, options: Options, seed: int) -> TaskDataWithExtras:
    _check_options(options)
    if data_root is None:
        return load_procedural(options, seed)
    return load_real(data_root, options, seed)
