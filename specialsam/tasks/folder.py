"""Bring your own data: ``DIR/images`` + ``DIR/masks``, optionally ``DIR/splits.csv``.

**Layout.** Every image in ``DIR/images`` (png, jpg, jpeg, bmp, tif, tiff, webp) needs a mask in
``DIR/masks`` with the same file stem (any of those suffixes: ``cat.jpg`` -> ``cat.png``). Masks
without an image are ignored (counted in a note). A mask must have its image's size.

**Binary vs multi-valued masks.** A mask is read as stored (grey levels, or RGB colours for
colour-coded masks). A value other than 0 is a *label* when its solid interior (pixels whose whole
3x3 neighbourhood holds that value) covers at least ``min_value_fraction`` of the image (default
0.1%) and at least 4 pixels. Anti-aliasing and resampling leave intermediate values only in thin
bands along edges, and compression noise scatters them, so neither counts as a label.

* 0 or 1 label: a **binary** mask. Foreground is every pixel brighter than half of the label's
  value (so 0/255, 0/1, anti-aliased and 16-bit masks all work). JPEG masks are always treated as
  binary (their noise cannot carry labels) with the threshold of ``io.binarize_mask``.
* 2+ labels (i.e. more than two distinct values counting background 0): a **multi-valued**
  (instance or class) mask. That is a one-line error unless ``split_instances: true``, which
  makes one sample per label (pixels equal to that label; key ``<stem>#<label>``). All samples
  of one image land in the same split.

Images whose mask has no foreground are skipped (counted in a note).

**Splits.** ``DIR/splits.csv`` with columns ``stem,split`` (split in train/val/test; an optional
``category`` column fills ``Sample.category``) fixes the split; it must cover every image. When it
has train and test rows but no val rows, a seeded ``val_fraction`` of its train images (whole
images: every instance of one image stays together) becomes the validation split, with a note.
Without it, images are split by the seed with ``val_fraction`` / ``test_fraction``. A split that
ends up empty (no rows, every mask empty, all duplicates) is a one-line error while loading. Either way
train is seeded-shuffled (its first ``n`` samples are a nested subset), and an exact-duplicate
image found in two splits is dropped from the later one, with a note (see ``splits``).
``max_side`` downscales large images on load (masks by nearest neighbour); ``max_pixels``
refuses files whose header claims more pixels than that, before decoding (see ``io``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from specialsam.errors import UserError
from specialsam.tasks.base import ImageSource, MaskSource, Sample, TaskData, empty_split_error, pixel_hash
from specialsam.tasks.io import (
    DEFAULT_MAX_PIXELS,
    _decode,
    binarize_mask,
    check_max_pixels,
    list_images,
    read_image,
    resize_image,
    resize_mask,
)
from specialsam.tasks.splits import (
    SPLITS,
    Duplicate,
    dedupe_samples,
    duplicates_note,
    split_counts,
    split_keys,
    stable_rng,
)

LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
N_TRAIN_REMEDY = "add images and masks, or move rows of splits.csv to train"
"""What to do when the sweep asks for more training samples than the folder's train split has."""
DERIVE_N_TRAIN_GRID = True
"""A fixed real pool: a sweep asking for more derives its training sizes from the pool instead."""
EMPTY_SPLIT_REMEDY = (
    "set data.val_fraction and data.test_fraction above 0, or add val and test rows to splits.csv"
)
"""What to do when a split is empty because its fraction is 0 (``load_task`` refuses it)."""


@dataclass
class Options:
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    """Seeded split of the images when there is no splits.csv."""
    split_instances: bool = False
    """Turn a multi-valued (instance/label) mask into one sample per value instead of an error."""
    min_value_fraction: float = 0.001
    """A mask value is a label only if its solid interior covers this much of the image."""
    max_side: int | None = 1024
    """Downscale images whose longer side exceeds this (memory); None keeps full size."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Refuse image or mask files above this many pixels (read from the header); None: no limit."""


def _first(names: list[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        if p.stem in out:
            raise UserError(
                f"{folder} has two files with stem {p.stem!r} ({out[p.stem].name}, {p.name}); "
                "keep one so image and mask pair up unambiguously"
            )
        out[p.stem] = p
    return out


def _codes(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(label codes, brightness) of a decoded mask: grey value, or packed RGB for colour masks."""
    if raw.ndim == 3:
        rgb = raw[..., : min(raw.shape[2], 3)]
        if rgb.shape[2] == 1 or (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., -1])
        ):
            raw = rgb[..., 0]
        else:
            c = rgb.astype(np.int64)
            return (c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2], rgb.max(axis=2).astype(np.float64)
    return raw.astype(np.int64) if raw.dtype.kind != "f" else np.round(raw * 1000).astype(
        np.int64
    ), raw.astype(np.float64)


def _solid_values(codes: np.ndarray, min_pixels: float) -> list[int]:
    """Values with at least ``min_pixels`` pixels whose 3x3 neighbourhood all hold that value."""
    h, w = codes.shape
    if h < 3 or w < 3:
        values, counts = np.unique(codes, return_counts=True)
        return [int(v) for v, c in zip(values, counts, strict=True) if c >= min_pixels]
    centre = codes[1:-1, 1:-1]
    solid = np.ones(centre.shape, bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                solid &= codes[1 + dy : h - 1 + dy, 1 + dx : w - 1 + dx] == centre
    values, counts = np.unique(centre[solid], return_counts=True)
    return [int(v) for v, c in zip(values, counts, strict=True) if c >= min_pixels]


def mask_targets(
    raw: np.ndarray, path: Path, split_instances: bool, min_value_fraction: float
) -> list[tuple[str, np.ndarray]]:
    """(key suffix, bool mask) per target of a decoded mask (see the module docstring)."""
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return [("", binarize_mask(raw))]
    codes, bright = _codes(raw)
    labels = [v for v in _solid_values(codes, max(4.0, min_value_fraction * codes.size)) if v != 0]
    if len(labels) <= 1:
        if not labels:
            return [("", binarize_mask(raw))]
        level = float(bright[codes == labels[0]].flat[0])
        return [("", bright > level / 2)]
    if not split_instances:
        shown = ", ".join(str(v) for v in labels[:6]) + (" ..." if len(labels) > 6 else "")
        raise UserError(
            f"mask {path} has {len(labels) + 1} distinct values (0 and {shown}): "
            "it is an instance/label mask; "
            "set data.split_instances: true for one sample per value, or save binary masks"
        )
    return [(f"#{v}", codes == v) for v in labels]


def _read_splits_csv(path: Path, stems: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """stem -> split and stem -> category from splits.csv, every problem a UserError."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}; fix or remove it") from None
    if "stem" not in cols or "split" not in cols:
        raise UserError(f"{path} needs the columns stem,split (has: {', '.join(cols) or 'none'})")
    split_of: dict[str, str] = {}
    category: dict[str, str] = {}
    unknown: list[str] = []
    for line, row in enumerate(rows, start=2):
        row = {str(k).strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        stem, split = row.get("stem", ""), row.get("split", "").lower()
        if not stem:
            continue
        if stem not in stems and Path(stem).stem in stems:
            stem = Path(stem).stem
        if split not in SPLITS:
            raise UserError(
                f"{path} line {line}: split {row.get('split')!r} for {stem!r}; use train, val or test"
            )
        if stem in split_of and split_of[stem] != split:
            raise UserError(f"{path} line {line}: {stem!r} is listed in both {split_of[stem]} and {split}")
        if stem not in stems:
            unknown.append(stem)
            continue
        split_of[stem] = split
        if row.get("category"):
            category[stem] = row["category"]
    if unknown:
        raise UserError(f"{path} lists {len(unknown)} stems with no image in images/: {_first(unknown)}")
    missing = sorted(stems - set(split_of))
    if missing:
        raise UserError(
            f"{path} has no row for {len(missing)} images: {_first(missing)}; add them or remove the file"
        )
    return split_of, category


def _check_options(o: Options) -> None:
    if not (0 <= o.val_fraction < 1 and 0 <= o.test_fraction < 1 and o.val_fraction + o.test_fraction < 1):
        raise UserError(
            f"data.val_fraction={o.val_fraction} and data.test_fraction={o.test_fraction} "
            "for task folder; each in [0, 1) and summing below 1"
        )
    if not 0 <= o.min_value_fraction < 0.5:
        raise UserError(
            f"data.min_value_fraction={o.min_value_fraction} for task folder; use a value in [0, 0.5)"
        )
    if o.max_side is not None and o.max_side < 16:
        raise UserError(f"data.max_side={o.max_side} for task folder; use at least 16 or leave it unset")
    check_max_pixels(o.max_pixels, "folder")


def _folder(path: Path, what: str) -> None:
    if path.is_dir():
        return
    if path.exists():
        raise UserError(f"{path} is a file, not a folder; --task folder needs DIR/images and DIR/masks")
    raise UserError(f"{path} does not exist; {what}")


def _csv_groups(
    csv_path: Path, images: dict[str, Path], options: Options, seed: int
) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """Stems per split from splits.csv (train and test rows required; val carved when absent)."""
    split_of, category = _read_splits_csv(csv_path, set(images))
    groups = {s: sorted(k for k, v in split_of.items() if v == s) for s in SPLITS}
    notes = [f"splits from {csv_path}"]
    for split in ("train", "test"):
        if not groups[split]:
            raise UserError(
                f"{csv_path} has no {split} rows, so the {split} split would be empty; "
                f"mark some images split={split} (or remove the file for a seeded split)"
            )
    if not groups["val"]:
        n_train, n_val, _ = split_counts(len(groups["train"]), options.val_fraction, 0.0)
        if n_val == 0:
            raise UserError(
                f"{csv_path} has no val rows and data.val_fraction={options.val_fraction} of its "
                f"{len(groups['train'])} train images is none; add val rows or raise data.val_fraction"
            )
        order = stable_rng(seed, "folder-val-carve").permutation(len(groups["train"]))
        carved = {groups["train"][i] for i in order[:n_val]}
        groups["val"] = sorted(carved)
        groups["train"] = [k for k in groups["train"] if k not in carved]
        notes.append(
            f"{csv_path} has no val rows: {n_val} of its {n_train + n_val} train images "
            f"(data.val_fraction {options.val_fraction}, seed {seed}) form the validation split"
        )
    order = stable_rng(seed, "folder-train-order").permutation(len(groups["train"]))
    groups["train"] = [groups["train"][i] for i in order]
    return groups, category, notes


def _seeded_groups(images: dict[str, Path], options: Options, seed: int, csv_path: Path):
    tr, va, te = split_keys(list(images), options.val_fraction, options.test_fraction, seed, salt="folder")
    for split, keys, key in (("val", va, "val_fraction"), ("test", te, "test_fraction")):
        if not keys and getattr(options, key) > 0:  # 0 asks for no such split: load_task refuses it
            raise UserError(
                f"the seeded split of the {len(images)} images in {csv_path.parent / 'images'} leaves no "
                f"{split} images (data.{key}={getattr(options, key)}); raise data.{key}, add images, "
                f"or add {csv_path} (stem,split)"
            )
    note = (
        f"seeded split (seed {seed}): val_fraction {options.val_fraction}, "
        f"test_fraction {options.test_fraction}; add {csv_path} (stem,split) to fix it"
    )
    return {"train": tr, "val": va, "test": te}, note


def _check_not_empty(
    splits: dict[str, list[Sample]],
    groups: dict[str, list[str]],
    empty: dict[str, int],
    dups: list[Duplicate],
    data_root: Path,
    csv_used: bool,
) -> None:
    """Every split kept samples; else say what emptied it (empty masks, duplicates) and what to do."""
    for split in SPLITS:
        if splits[split] or not groups[split]:
            continue
        why = [f"all {len(groups[split])} of its images were skipped"]
        if empty[split]:
            why.append(f"{empty[split]} masks have no foreground")
        n_dup = sum(d.dropped_split == split for d in dups)
        if n_dup:
            why.append(f"{n_dup} are exact duplicates of images in an earlier split")
        if empty[split]:
            remedy = f"check the masks in {data_root / 'masks'} (foreground must be non-zero)"
        elif csv_used:
            remedy = f"give the {split} split other images in {data_root / 'splits.csv'}"
        else:
            remedy = "add distinct images"
        raise empty_split_error("folder", split, str(data_root), ", ".join(why), remedy)


def _pair_files(data_root: Path, notes: list[str]) -> tuple[dict[str, Path], dict[str, Path]]:
    """Images and masks by file stem; every image needs a mask (a mask without image is noted)."""
    img_dir, mask_dir = data_root / "images", data_root / "masks"
    _folder(img_dir, "--task folder needs DIR/images and DIR/masks")
    _folder(mask_dir, "put one mask per image there (same file stem)")
    images = _by_stem(list_images(img_dir), img_dir)
    if not images:
        raise UserError(
            f"no images in {img_dir} (looked for {', '.join(('png', 'jpg', 'jpeg', 'bmp', 'tif'))})"
        )
    masks = _by_stem(list_images(mask_dir), mask_dir)
    missing = sorted(p.name for s, p in images.items() if s not in masks)
    if missing:
        raise UserError(
            f"{len(missing)} images in {img_dir} have no mask in {mask_dir} (same stem expected): "
            f"{_first(missing)}"
        )
    orphans = len(set(masks) - set(images))
    if orphans:
        notes.append(f"{orphans} masks in {mask_dir} have no image and were ignored")
    return images, masks


def _split_groups(
    data_root: Path, images: dict[str, Path], options: Options, seed: int, notes: list[str]
) -> tuple[dict[str, list[str]], dict[str, str], bool]:
    """Stems per split from ``splits.csv`` when there is one, else seeded; returns (groups,
    category per stem, whether the CSV was used)."""
    csv_path = data_root / "splits.csv"
    category: dict[str, str] = {}
    csv_used = csv_path.is_file()
    if csv_used:
        groups, category, csv_notes = _csv_groups(csv_path, images, options, seed)
        notes += csv_notes
    else:
        groups, note = _seeded_groups(images, options, seed, csv_path)
        notes.append(note)
    return groups, category, csv_used


def _read_targets(img_path: Path, mask_path: Path, options: Options) -> tuple[np.ndarray, list]:
    """An image and its mask's targets ((suffix, mask) per instance); sizes must match."""
    image = read_image(img_path, options.max_pixels)
    raw = _decode(mask_path, cv2.IMREAD_UNCHANGED, "mask", options.max_pixels)
    if tuple(raw.shape[:2]) != tuple(image.shape[:2]):
        raise UserError(
            f"mask {mask_path} is {raw.shape[1]}x{raw.shape[0]} (WxH) but its image {img_path} is "
            f"{image.shape[1]}x{image.shape[0]}; masks must match their image's size"
        )
    return image, mask_targets(raw, mask_path, options.split_instances, options.min_value_fraction)


def _load_image(path: Path, options: Options) -> np.ndarray:
    """A sample's pixels, decoded when needed: the image file, downscaled to ``max_side``."""
    return resize_image(read_image(path, options.max_pixels), options.max_side)


def _load_mask(path: Path, suffix: str, options: Options) -> np.ndarray:
    """A sample's mask, decoded when needed: target ``suffix`` of the mask file, downscaled."""
    raw = _decode(path, cv2.IMREAD_UNCHANGED, "mask", options.max_pixels)
    targets = dict(mask_targets(raw, path, options.split_instances, options.min_value_fraction))
    return resize_mask(targets[suffix], options.max_side)


def _split_samples(
    stems: list[str],
    images: dict[str, Path],
    masks: dict[str, Path],
    category: dict[str, str],
    options: Options,
) -> tuple[list[Sample], int, int]:
    """One split's samples (one per mask instance); returns (samples, images skipped for an empty
    mask, multi-valued masks). Each pair is read once here (sizes, targets, the image's content
    hash) and let go: samples decode their pixels again where they are needed."""
    out: list[Sample] = []
    n_empty = n_multi = 0
    for stem in stems:
        image, targets = _read_targets(images[stem], masks[stem], options)
        n_multi += targets[0][0] != ""
        kept = [sfx for sfx, m in targets if m.any()]
        if not kept:
            n_empty += 1
            continue
        digest = pixel_hash(resize_image(image, options.max_side))
        del image, targets
        source = ImageSource(partial(_load_image, images[stem], options), digest)  # shared by instances
        for sfx in kept:
            mask = MaskSource(partial(_load_mask, masks[stem], sfx, options))
            out.append(Sample(f"{stem}{sfx}", source, mask, category.get(stem, ""), image_id=stem))
    return out, n_empty, n_multi


def load(data_root: Path | None, options: Options, seed: int) -> TaskData:
    """Pair images with masks, split them (``splits.csv`` or seeded), read every pair's samples."""
    if data_root is None:
        raise UserError("--task folder needs --data-root DIR with images/ and masks/")
    _check_options(options)
    notes: list[str] = []
    images, masks = _pair_files(data_root, notes)
    groups, category, csv_used = _split_groups(data_root, images, options, seed, notes)
    splits: dict[str, list[Sample]] = {}
    empty = dict.fromkeys(SPLITS, 0)
    n_multi = 0
    for split in SPLITS:
        splits[split], empty[split], multi = _split_samples(groups[split], images, masks, category, options)
        n_multi += multi
    splits, dups = dedupe_samples(splits)
    _check_not_empty(splits, groups, empty, dups, data_root, csv_used)
    n_empty = sum(empty.values())
    if n_empty:
        notes.append(f"{n_empty} images skipped: their mask has no foreground")
    if n_multi:
        notes.append(f"{n_multi} multi-valued masks split into one sample per value (data.split_instances)")
    if (dn := duplicates_note(dups)) is not None:
        notes.append(dn)
    return TaskData(
        name="folder",
        data="real",
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        source=str(data_root),
        notes=notes,
    )
