"""COCO-format instance datasets: one sample per object instance, prompts made from its mask.

**Files.** ``data.annotations`` names COCO instance json files (``images``, ``annotations``,
``categories``) and ``data.images`` the folders their ``file_name`` entries are relative to; both
relative to ``--data-root`` (the current folder without one). Either one file (a string) for every
split, split **by image** with the seed (``val_fraction``, ``test_fraction``), or one per split,
``{train: ..., val: ..., test: ...}``; without ``val`` a seeded ``val_fraction`` of the train
*images* becomes the validation split.
``data.images`` is a string (one folder) or the same per-split mapping; unset, it is the folder of
the annotation file. With neither set, the layout under ``--data-root`` is recognised
(:data:`LAYOUTS`, first match): COCO 2017, TrashCan 1.0, ZeroWaste-f, TACO. The README's
"COCO-format datasets" section has a recipe for each.

**Instances.** Segmentations are polygons, compressed RLE or uncompressed RLE (decoded with
``pycocotools.mask``). Skipped, and counted in one note line: ``iscrowd`` regions, instances whose
decoded mask has fewer than ``min_area`` pixels (at the image's full size), instances outside
``data.categories`` (category or supercategory names). ``Sample.category`` is
``supercategory/name`` (``category_level: category``; just the name when the supercategory is
missing or the same) or the supercategory (``category_level: supercategory``), which feeds the
report's per-category table. Sample keys are ``<file_name>#<annotation id>``.

**Images.** Every instance of an image shares one decoded array (``Sample.image_id`` names the
image), so they share one embedding-cache entry: one encoder pass per image. Instances of an image
never straddle splits. ``max_images`` caps the images per split (a seeded subset, chosen before
anything is decoded: COCO 2017 train has 118k images); ``max_side`` downscales on load.

**Errors** (one line each, before anything is written): an annotation file missing, not JSON or
not COCO; an image listed but missing on disk (the first few named); an unparsable segmentation;
a ``category_id`` not in ``categories``; a split whose instances were all filtered out (naming the
filter that removed them).

**Offline stand-in** (no ``--data-root`` and no ``data.annotations``): procedural litter scenes
(:mod:`specialsam.tasks.procedural.coco`) written as a real COCO json + PNGs into a temporary
folder and read through this same loader.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from specialsam.errors import UserError
from specialsam.tasks.base import ImageSource, MaskSource, Sample, TaskData, empty_split_error, pixel_hash
from specialsam.tasks.io import DEFAULT_MAX_PIXELS, check_max_pixels, read_image, resize_image, resize_mask
from specialsam.tasks.splits import SPLITS, dedupe_samples, duplicates_note, split_keys, stable_rng

N_TRAIN_REMEDY = "raise data.max_images.train, or point data.annotations at more training data"
EMPTY_SPLIT_REMEDY = "set data.val_fraction and data.test_fraction above 0, or give a file per split"
DERIVE_N_TRAIN_GRID = True
"""A fixed real pool: a sweep asking for more derives its training sizes from the pool instead."""
DEFAULT_MAX_IMAGES: dict[str, int | None] = {"train": 5000, "val": 1000, "test": 1000}
LEVELS = ("category", "supercategory")

LAYOUTS: tuple[tuple[str, dict[str, str], dict[str, str]], ...] = (
    # (name, annotations per split, images per split); val absent: carved from train
    (
        "COCO 2017",
        {"train": "annotations/instances_train2017.json", "test": "annotations/instances_val2017.json"},
        {"train": "train2017", "test": "val2017"},
    ),
    (
        "TrashCan 1.0",
        {"train": "instances_train_trashcan.json", "test": "instances_val_trashcan.json"},
        {"train": "train", "test": "val"},
    ),
    (
        "ZeroWaste-f",
        {s: f"{s}/labels.json" for s in SPLITS},
        {s: f"{s}/data" for s in SPLITS},
    ),
    ("TACO", {"all": "annotations.json"}, {"all": "."}),
    ("TACO", {"all": "data/annotations.json"}, {"all": "data"}),
)


@dataclass
class Options:
    annotations: str | dict[str, str] | None = None
    """One COCO json (split by image) or {train, val, test} -> json; relative to --data-root."""
    images: str | dict[str, str] | None = None
    """Folder (or per-split folders) that file_name is relative to; default: the json's folder."""
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    """Seeded split of the images of a single file (val_fraction also carves val from train)."""
    min_area: int = 100
    """Instances whose mask has fewer pixels (full size) are skipped."""
    categories: list[str] | None = None
    """Keep only instances of these category (or supercategory) names; None keeps all."""
    category_level: str = "category"
    """category: Sample.category = 'supercategory/name'; supercategory: the supercategory."""
    max_images: dict[str, int | None] = field(default_factory=dict)
    """Images per split (seeded subset), over DEFAULT_MAX_IMAGES; null lifts a cap."""
    max_side: int | None = 1024
    """Downscale images whose longer side exceeds this on load; None keeps full size."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Refuse image files above this many pixels (read from the header); None: no limit."""
    procedural_images: int = 300
    """Stand-in only: scenes generated (split by image like a single real file)."""


@dataclass
class CocoFile:
    """One annotation file, indexed: what the loader needs of it."""

    path: Path
    images_dir: Path
    images: dict[int, dict]
    categories: dict[int, tuple[str, str]]
    """category id -> (name, supercategory)."""
    by_image: dict[int, list[dict]]


def check_options(o: Options) -> None:
    """The settings' own rules (types are checked by the config schema)."""
    if not (0 <= o.val_fraction < 1 and 0 <= o.test_fraction < 1 and o.val_fraction + o.test_fraction < 1):
        raise UserError(
            f"data.val_fraction={o.val_fraction} and data.test_fraction={o.test_fraction} for task "
            "coco; each in [0, 1) and summing below 1"
        )
    if o.min_area < 0:
        raise UserError(f"data.min_area={o.min_area} for task coco; use 0 or more pixels")
    if o.category_level not in LEVELS:
        raise UserError(
            f"data.category_level={o.category_level!r} for task coco; use one of {', '.join(LEVELS)}"
        )
    for split, n in (o.max_images or {}).items():
        if split not in SPLITS:
            raise UserError(f"data.max_images.{split} for task coco; use train, val or test")
        if n is not None and n < 1:
            raise UserError(f"data.max_images.{split}={n} for task coco; use at least 1 or null")
    for what in ("annotations", "images"):
        value = getattr(o, what)
        if isinstance(value, dict):
            bad = sorted(set(value) - set(SPLITS))
            if bad:
                raise UserError(f"data.{what}.{bad[0]} for task coco; the keys are train, val, test")
    if isinstance(o.annotations, dict) and "train" not in o.annotations:
        raise UserError("data.annotations for task coco has no train file; add train: <json>")
    if o.max_side is not None and o.max_side < 16:
        raise UserError(f"data.max_side={o.max_side} for task coco; use at least 16 or leave it unset")
    if o.procedural_images < 10:
        raise UserError(f"data.procedural_images={o.procedural_images} for task coco; use at least 10")
    check_max_pixels(o.max_pixels, "coco")


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def read_coco(path: Path, images_dir: Path) -> CocoFile:
    """Read and index a COCO instances json; every problem is a one-line ``UserError``."""
    if not path.is_file():
        raise UserError(f"annotation file {path} does not exist; check data.annotations and --data-root")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read annotation file {path}: {exc}; check the file") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"annotation file {path} is not JSON (line {exc.lineno}: {exc.msg}); check the file"
        ) from None
    lacking = [
        k for k in ("images", "annotations", "categories") if not isinstance(doc, dict) or k not in doc
    ]
    if lacking or not all(isinstance(doc[k], list) for k in ("images", "annotations", "categories")):
        raise UserError(
            f"annotation file {path} is not a COCO instances file (needs lists 'images', 'annotations', "
            f"'categories'{'; missing ' + ', '.join(lacking) if lacking else ''}); "
            "point data.annotations at one"
        )
    try:
        images = {int(im["id"]): im for im in doc["images"]}
        for im in images.values():
            str(im["file_name"]), int(im["height"]), int(im["width"])
        categories = {
            int(c["id"]): (str(c["name"]), str(c.get("supercategory") or "")) for c in doc["categories"]
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"annotation file {path}: an image or category entry lacks {exc} (images need id, file_name, "
            "height, width; categories id, name); fix the file"
        ) from None
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        _check_annotation(ann, path, images, categories)
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    return CocoFile(path, images_dir, images, categories, by_image)


def _check_annotation(ann: object, path: Path, images: dict, categories: dict) -> None:
    if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id", "category_id")):
        raise UserError(
            f"annotation file {path}: an annotation lacks id, image_id or category_id; fix the file"
        )
    if ann["category_id"] not in categories:
        raise UserError(
            f"annotation file {path}: annotation {ann['id']} has category_id {ann['category_id']}, "
            f"which is not in its categories (ids {_first([str(c) for c in sorted(categories)], 8)}); "
            "fix the file"
        )
    if ann["image_id"] not in images:
        raise UserError(
            f"annotation file {path}: annotation {ann['id']} refers to image_id {ann['image_id']}, "
            "which is not in its images; fix the file"
        )


def _bad_segmentation(ann: dict, path: Path, why: str) -> UserError:
    return UserError(
        f"annotation file {path}: annotation {ann.get('id')} has an unparsable segmentation ({why}); "
        "fix or remove it"
    )


def decode_segmentation(ann: dict, height: int, width: int, path: Path) -> np.ndarray:
    """An annotation's mask (H x W bool) from polygons, compressed or uncompressed RLE."""
    seg = ann.get("segmentation")
    try:
        if isinstance(seg, list):
            ok = seg and all(
                isinstance(p, list)
                and len(p) >= 6
                and len(p) % 2 == 0
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
                for p in seg
            )
            if not ok:
                raise _bad_segmentation(ann, path, "polygons must be lists of at least 3 x,y pairs")
            rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
        elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
            if list(seg["size"]) != [height, width]:
                raise _bad_segmentation(
                    ann, path, f"RLE size {seg['size']} is not the image's [{height}, {width}]"
                )
            counts = seg["counts"]
            if isinstance(counts, list):
                if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                    raise _bad_segmentation(ann, path, "uncompressed RLE counts must sum to height x width")
                rle = mask_utils.frPyObjects(seg, height, width)
            elif isinstance(counts, str):
                rle = {"size": [height, width], "counts": counts.encode("ascii")}
            else:
                raise _bad_segmentation(ann, path, "RLE counts must be a string or a list of integers")
        else:
            raise _bad_segmentation(ann, path, "neither polygons nor RLE")
        with warnings.catch_warnings():  # pycocotools' own NumPy 2 deprecation notice, once per call
            warnings.simplefilter("ignore", DeprecationWarning)
            mask = mask_utils.decode(rle)
    except UserError:
        raise
    except Exception as exc:  # pycocotools' own failures (bad RLE string, ...)
        raise _bad_segmentation(ann, path, str(exc) or type(exc).__name__) from None
    if mask.shape[:2] != (height, width):
        raise _bad_segmentation(ann, path, f"decodes to {mask.shape[:2]}, not ({height}, {width})")
    return mask.astype(bool)


# ------------------------------------------------------------------------------ which files


def _detect_layout(root: Path) -> tuple[str, dict[str, str], dict[str, str]]:
    """The first of :data:`LAYOUTS` whose train (or only) annotation file exists under ``root``."""
    for name, anns, imgs in LAYOUTS:
        first = anns.get("train", anns.get("all"))
        if first is not None and (root / first).is_file():
            present = {s: a for s, a in anns.items() if (root / a).is_file()}
            return name, present, imgs
    looked = ", ".join(sorted({a for _, anns, _ in LAYOUTS for a in anns.values()}))
    raise UserError(
        f"no COCO annotation file found under {root} (looked for {looked}); "
        "set data.annotations (and data.images) to your files"
    )


def _files(root: Path, o: Options) -> tuple[dict[str, CocoFile], str]:
    """Annotation files by split (``all`` for a single file), indexed; and a description."""
    if o.annotations is None:
        layout, anns, imgs = _detect_layout(root)
        described = f"{layout} layout under {root}"
    else:
        anns = {"all": o.annotations} if isinstance(o.annotations, str) else dict(o.annotations)
        imgs = {}
        described = f"{', '.join(f'{s}: {a}' for s, a in anns.items())} under {root}".removeprefix("all: ")
    if isinstance(o.images, str):
        imgs = dict.fromkeys(anns, o.images)
    elif isinstance(o.images, dict):
        imgs = {**imgs, **o.images}
    out = {}
    for split, ann in anns.items():
        path = root / ann
        folder = root / imgs[split] if split in imgs else path.parent
        out[split] = read_coco(path, folder)
    return out, described


# ------------------------------------------------------------------------------ which images


ImageRef = tuple[str, int]
"""(split source of the file: train/val/test/all, image id in it)."""


def _annotated(f: CocoFile) -> list[int]:
    return sorted(i for i in f.by_image if f.by_image[i])


def _split_images(
    files: dict[str, CocoFile], o: Options, seed: int
) -> tuple[dict[str, list[ImageRef]], list[str]]:
    """Images (with annotations) per split: seeded split of a single file, else the files' own
    splits with val carved from train when absent. Whole images: instances never straddle splits."""
    notes: list[str] = []
    if "all" in files:
        tr, va, te = split_keys(_annotated(files["all"]), o.val_fraction, o.test_fraction, seed, salt="coco")
        notes.append(
            f"seeded split by image (seed {seed}): val_fraction {o.val_fraction}, "
            f"test_fraction {o.test_fraction}"
        )
        return {s: [("all", i) for i in ids] for s, ids in zip(SPLITS, (tr, va, te))}, notes
    if "test" not in files:
        raise UserError(
            "data.annotations for task coco has no test file; add test: <json> (e.g. the official val "
            "file, as the COCO 2017 recipe does) or use a single file split by image"
        )
    groups: dict[str, list[ImageRef]] = {}
    for split in SPLITS:
        if split in files:
            ids = _annotated(files[split])
            order = stable_rng(seed, "coco-order", split).permutation(len(ids))
            groups[split] = [(split, ids[i]) for i in order]
    if "val" not in files:
        n_val = int(round(len(groups["train"]) * o.val_fraction))
        if o.val_fraction > 0:
            n_val = max(1, min(n_val, len(groups["train"]) - 1))
        groups["val"], groups["train"] = groups["train"][:n_val], groups["train"][n_val:]
        notes.append(
            f"no val file: {n_val} train images (data.val_fraction {o.val_fraction}, seed {seed}) "
            "form the validation split"
        )
    return groups, notes


def _cap(groups: dict[str, list[ImageRef]], o: Options) -> list[str]:
    """Apply ``max_images`` per split (lists are already seeded-shuffled: a cap keeps a seeded subset)."""
    caps = {**DEFAULT_MAX_IMAGES, **(o.max_images or {})}
    notes = []
    for split in SPLITS:
        cap = caps.get(split)
        if cap is not None and len(groups[split]) > cap:
            notes.append(f"{split}: {cap:,} of {len(groups[split]):,} images (data.max_images.{split})")
            groups[split] = groups[split][:cap]
    return notes


def _check_on_disk(files: dict[str, CocoFile], groups: dict[str, list[ImageRef]]) -> None:
    missing = []
    for refs in groups.values():
        for src, i in refs:
            f = files[src]
            path = f.images_dir / f.images[i]["file_name"]
            if not path.is_file():
                missing.append(str(path))
    if missing:
        raise UserError(
            f"{len(missing)} images listed in the annotations are missing on disk: {_first(missing)}; "
            "check data.images (the folder file_name is relative to)"
        )


# ------------------------------------------------------------------------------ which instances


def _category_label(names: tuple[str, str], level: str) -> str:
    name, sup = names
    if level == "supercategory":
        return sup or name
    return name if not sup or sup == name else f"{sup}/{name}"


def _check_category_filter(files: dict[str, CocoFile], o: Options) -> None:
    if o.categories is None:
        return
    known = {n for f in files.values() for pair in f.categories.values() for n in pair if n}
    unknown = [c for c in o.categories if c not in known]
    if unknown or not o.categories:
        raise UserError(
            f"data.categories {unknown or '[]'} for task coco: not category or supercategory names in "
            f"the annotations; known: {_first(sorted(known), 12)}"
        )


def _kept_instances(
    f: CocoFile, image_id: int, o: Options, skipped: Counter
) -> list[tuple[dict, np.ndarray]]:
    """(annotation, mask) of the instances of one image that pass every filter; counts the rest."""
    im = f.images[image_id]
    h, w = int(im["height"]), int(im["width"])
    wanted = set(o.categories) if o.categories is not None else None
    out = []
    for ann in f.by_image.get(image_id, []):
        if ann.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        if wanted is not None and not wanted & set(f.categories[ann["category_id"]]):
            skipped["category"] += 1
            continue
        mask = decode_segmentation(ann, h, w, f.path)
        if int(mask.sum()) < max(o.min_area, 1):
            skipped["area"] += 1
            continue
        out.append((ann, mask))
    return out


def _image_pixels(path: Path, o: Options) -> np.ndarray:
    """An image's pixels, decoded when needed (encoder precompute, overlays) and downscaled."""
    return resize_image(read_image(path, o.max_pixels), o.max_side)


def _instance_mask(ann: dict, h: int, w: int, path: Path, max_side: int | None) -> np.ndarray:
    """An instance's mask, decoded from its segmentation when needed and downscaled like its image."""
    return resize_mask(decode_segmentation(ann, h, w, path), max_side)


def _image_samples(f: CocoFile, image_id: int, o: Options, skipped: Counter) -> list[Sample]:
    """The samples of one image: its kept instances sharing one image source. The image is read
    once here (its size checked, its content hash taken) and let go; pixels and masks are decoded
    again only where needed, so the driver's memory does not grow with the dataset."""
    kept = _kept_instances(f, image_id, o, skipped)
    if not kept:
        return []
    im = f.images[image_id]
    path = f.images_dir / im["file_name"]
    h, w = int(im["height"]), int(im["width"])
    image = read_image(path, o.max_pixels)
    if image.shape[:2] != (h, w):
        raise UserError(
            f"image {path} is {image.shape[1]}x{image.shape[0]} (WxH) but {f.path} says "
            f"{im['width']}x{im['height']}; use the images the annotations were made on"
        )
    source = ImageSource(partial(_image_pixels, path, o), pixel_hash(resize_image(image, o.max_side)))
    del image
    return [
        Sample(
            key=f"{im['file_name']}#{ann['id']}",
            image=source,
            mask=MaskSource(partial(_instance_mask, ann, h, w, f.path, o.max_side)),
            category=_category_label(f.categories[ann["category_id"]], o.category_level),
            image_id=str(path),
        )
        for ann, _ in kept
    ]


_FILTERS = {
    "crowd": "iscrowd regions",
    "area": "below data.min_area={min_area} px",
    "category": "outside data.categories",
}


def _skipped_text(skipped: Counter, o: Options) -> str:
    parts = [f"{n} {_FILTERS[k].format(min_area=o.min_area)}" for k, n in skipped.items() if n]
    return ", ".join(parts)


def _all_filtered(split: str, n_images: int, skipped: Counter, o: Options, where: str) -> UserError:
    biggest = max(skipped, key=lambda k: skipped[k]) if skipped else ""
    remedy = {
        "area": "lower data.min_area",
        "category": "widen data.categories",
        "crowd": "annotate instances without iscrowd",
    }.get(biggest, "check the annotations")
    text = _skipped_text(skipped, o) or "none"
    return empty_split_error(
        "coco", split, where, f"every instance of its {n_images} images was filtered out ({text})", remedy
    )


def _build_splits(
    files: dict[str, CocoFile], groups: dict[str, list[ImageRef]], o: Options, seed: int, where: str
) -> tuple[dict[str, list[Sample]], Counter]:
    skipped: Counter = Counter()
    splits: dict[str, list[Sample]] = {}
    for split in SPLITS:
        here: Counter = Counter()
        splits[split] = [s for src, i in groups[split] for s in _image_samples(files[src], i, o, here)]
        if groups[split] and not splits[split]:
            raise _all_filtered(split, len(groups[split]), here, o, where)
        skipped.update(here)
    order = stable_rng(seed, "coco-train-instances").permutation(len(splits["train"]))
    splits["train"] = [splits["train"][i] for i in order]  # batches and nested subsets mix images
    return splits, skipped


def _load_files(root: Path, o: Options, seed: int) -> tuple[dict[str, list[Sample]], list[str], str]:
    """Samples per split and notes from the annotation files under ``root``."""
    check_options(o)
    files, where = _files(root, o)
    _check_category_filter(files, o)
    groups, notes = _split_images(files, o, seed)
    notes += _cap(groups, o)
    _check_on_disk(files, groups)
    splits, skipped = _build_splits(files, groups, o, seed, where)
    splits, dups = dedupe_samples(splits)
    n_images = {s: len({x.image_id for x in v}) for s, v in splits.items()}
    notes.append(
        "instances per split: "
        + ", ".join(f"{s} {len(splits[s])} ({n_images[s]} images)" for s in SPLITS)
        + (f"; skipped {_skipped_text(skipped, o)}" if sum(skipped.values()) else "; none skipped")
    )
    if (dn := duplicates_note(dups)) is not None:
        notes.append(dn)
    return splits, notes, where


def _in_memory(samples: list[Sample], prefix: str) -> list[Sample]:
    """The stand-in's samples with their pixels and masks held in memory (its temporary folder is
    deleted; it is small), images named by a stable id instead of the temporary path."""
    held: dict[int, ImageSource] = {}
    out = []
    for x in samples:
        src = x.source
        if id(src) not in held:
            held[id(src)] = ImageSource(src.pixels(), src.content_hash())
        image_id = x.image_id.replace(prefix, "procedural-coco", 1)
        out.append(x.replace(image=held[id(src)], mask=x.mask, image_id=image_id))
    return out


def _standin(o: Options, seed: int) -> TaskData:
    """Procedural litter scenes written as a real COCO dataset, read through the same loader."""
    tmp = Path(tempfile.mkdtemp(prefix="specialsam-coco-"))
    try:
        from specialsam.tasks.procedural.coco import write_coco_standin

        write_coco_standin(tmp, o.procedural_images, seed=0)
        local = Options(**{**o.__dict__, "annotations": "annotations.json", "images": "images"})
        splits, notes, _ = _load_files(tmp, local, seed)
        prefix = str(tmp / "images")  # the folder is deleted below: name images by a stable id
        splits = {k: _in_memory(v, prefix) for k, v in splits.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    notes.insert(
        0,
        "no --data-root: using the procedural stand-in (litter scenes written as a COCO json + PNGs); "
        "pass --data-root with a COCO-format dataset (README: COCO-format datasets)",
    )
    return TaskData(
        "coco",
        "procedural",
        splits["train"],
        splits["val"],
        splits["test"],
        source=f"procedural litter scenes ({o.procedural_images} images)",
        notes=notes,
    )


def load(data_root: Path | None, options: Options, seed: int) -> TaskData:
    """One sample per instance from COCO-format files (or the stand-in without any)."""
    check_options(options)
    if data_root is None and options.annotations is None:
        return _standin(options, seed)
    root = data_root if data_root is not None else Path.cwd()
    splits, notes, where = _load_files(root, options, seed)
    return TaskData("coco", "real", splits["train"], splits["val"], splits["test"], source=where, notes=notes)
