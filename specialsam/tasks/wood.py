"""Wood-texture mosaics: segment the tile that holds the prompt.

**Data.** A folder of wood-texture photographs: the Kaggle layout ``<root>/images/images/*.jpg``
with an optional ``<root>/wood.csv`` (a column naming the file and a ``species`` column), or any
flat folder of images (``<root>/images/*`` or ``<root>/*``). Each photograph is one *texture*.
Exact-duplicate photographs (same decoded pixels) are dropped before anything else, with a note.

**Clusters.** Textures are grouped into ``n_clusters`` look-alike clusters by k-means on a
hand-made descriptor (colour histograms + Lab statistics + Gabor energies + LBP; see
``texture_features``), or on ResNet18 features as in the study when ``resnet18_checkpoint`` names
a local torchvision state dict (never downloaded).

**Split.** Textures, not mosaics, are split: within each cluster the textures are divided into
train/val/test by the seed (``val_fraction``, ``test_fraction``), so no photograph appears in two
splits and every split has textures of every cluster big enough to split (a cluster of 6+
textures gives val and test at least two each, so hard mosaics can be built there). Mosaics for a split are
built only from that split's textures, from a random crop (and flip) of each texture, so the
same texture gives different tiles. Textures are resized so their shorter side is ``mosaic_size``
(longer side centre-cropped to at most 1.5x that): tile and texture share one scale.

**Mosaics.** ``mosaic_size`` square images cut into tiles; the target is one tile (the mask of its
region) and the prompt protocol points inside it.

* ``layout="fixed"`` reproduces the study: a regular grid of ``tile_size`` tiles (2x2 for 512/256).
  Beware: with a fixed grid a fine-tuned decoder can learn "fill the quadrant holding the click"
  and score ~0.98 without telling woods apart (seen in a spike), so a gain here is not evidence of
  texture discrimination.
* ``layout="random"`` (default) cuts the square ``min_tiles``..``max_tiles`` times at random
  positions along wavy seams (sums of sinusoids, amplitude ``seam_amplitude`` of the side), each
  tile one connected region of at least ``min_tile_fraction`` of the area, so the only way to find
  the tile is to tell its texture from its neighbours'.

Modes (``mode`` is what the sweep trains, validates and tests on; the other mode's test set is
built too, as ``extra_tests[<other mode>]``, from the same test textures, and so is the same mode
in the other layout, as ``extra_tests["fixed-layout"]`` (or ``"random-layout"``), so every sweep
reports the study's grid beside the randomised default):

* ``standard``: the target tile's cluster differs from every other tile's, and adjacent tiles
  differ in cluster (relaxed only when there are too few clusters for it). Tiles look different.
* ``hard``: every tile comes from one cluster (distinct textures where the cluster has enough;
  the target's texture is never reused). Tiles look alike.

``Sample.category`` is the target tile's cluster (``cluster0`` ...). Without ``data_root`` the
stand-in is ``n_textures`` procedural wood textures (:mod:`specialsam.tasks.procedural.wood`),
then the same clustering, split and mosaics.

``n_train``, ``n_val`` and ``n_test`` are at least 1 (an empty split trains or tests nothing);
``max_pixels`` refuses a photograph whose header claims more pixels than that, before decoding.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from specialsam.errors import UserError
from specialsam.tasks.base import Sample
from specialsam.tasks.io import DEFAULT_MAX_PIXELS, check_max_pixels, list_images, read_image
from specialsam.tasks.procedural.layouts import adjacency, fixed_layout, random_layout
from specialsam.tasks.procedural.wood import FAMILIES, standin_textures
from specialsam.tasks.procedural.wood import procedural_wood as procedural_wood  # wood.procedural_wood
from specialsam.tasks.splits import TaskDataWithExtras, content_hash, split_counts, split_keys, stable_rng
from specialsam.tasks.texture_features import cluster_textures

MODES = ("standard", "hard")
N_TRAIN_REMEDY = "raise data.n_train (training mosaics are generated, any number works)"
"""What to do when a sweep asks for more training mosaics than the task built."""
LAYOUTS = ("random", "fixed")


@dataclass
class Options:
    mode: str = "standard"
    """standard | hard: the mosaics the sweep trains, validates and tests on."""
    layout: str = "random"
    """random (wavy seams, random cuts, min..max tiles) | fixed (the study's regular grid)."""
    mosaic_size: int = 512
    tile_size: int = 256
    """fixed layout only: the grid is (mosaic_size // tile_size) squared."""
    min_tiles: int = 2
    max_tiles: int = 6
    """random layout: tiles per mosaic, drawn uniformly in [min_tiles, max_tiles]."""
    seam_amplitude: float = 0.05
    """random layout: seam waviness, as a fraction of the mosaic side."""
    min_tile_fraction: float = 0.05
    """random layout: smallest tile area, as a fraction of the mosaic."""
    n_clusters: int = 5
    n_train: int = 1000
    n_val: int = 150
    n_test: int = 300
    """Mosaics per split (the other mode's extra test set has n_test too)."""
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    """Fractions of the *textures* per cluster going to val and test."""
    resnet18_checkpoint: str | None = None
    """A local torchvision resnet18 state dict: cluster on its features, as the study did."""
    n_textures: int = 80
    """Procedural stand-in only: how many textures to generate."""
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    """Refuse texture photographs above this many pixels (read from the header); None: no limit."""


@dataclass
class Texture:
    key: str
    image: np.ndarray
    cluster: int = -1
    species: str = ""


@dataclass(frozen=True)
class MosaicInfo:
    """How one mosaic was built (for tests, debugging and overlays)."""

    textures: tuple[str, ...]
    """Texture key per tile."""
    clusters: tuple[int, ...]
    """Cluster per tile."""
    target: int
    """Index of the target tile."""
    adjacent: tuple[tuple[int, int], ...]
    """Pairs of tiles sharing a seam."""


@dataclass
class WoodTaskData(TaskDataWithExtras):
    texture_splits: dict[str, list[str]] = field(default_factory=dict)
    """Texture keys per split (train/val/test): disjoint by construction."""
    texture_clusters: dict[str, int] = field(default_factory=dict)
    mosaics: dict[str, MosaicInfo] = field(default_factory=dict)
    """Build record per sample key (all splits and extra test sets)."""


# ---------------------------------------------------------------------------------------------
# Options, real data and the stand-in's textures


def _fixed_grid_fits(o: Options) -> bool:
    """Whether ``tile_size`` divides ``mosaic_size`` into at least a 2x2 grid (fixed layout)."""
    return o.tile_size > 0 and not o.mosaic_size % o.tile_size and o.mosaic_size // o.tile_size >= 2


def _check_options(o: Options) -> None:
    def bad(name: str, value: object, want: str) -> UserError:
        return UserError(f"data.{name}={value!r} for task wood; {want}")

    if o.mode not in MODES:
        raise bad("mode", o.mode, f"choose from {', '.join(MODES)}")
    if o.layout not in LAYOUTS:
        raise bad("layout", o.layout, f"choose from {', '.join(LAYOUTS)}")
    if o.mosaic_size < 32:
        raise bad("mosaic_size", o.mosaic_size, "use at least 32 pixels")
    if o.layout == "fixed" and not _fixed_grid_fits(o):
        raise bad(
            "tile_size", o.tile_size, f"it must divide mosaic_size={o.mosaic_size} into at least 2x2 tiles"
        )
    if not 2 <= o.min_tiles <= o.max_tiles:
        raise bad("min_tiles", o.min_tiles, f"need 2 <= min_tiles <= max_tiles (max_tiles={o.max_tiles})")
    if o.max_tiles > 12:
        raise bad("max_tiles", o.max_tiles, "use at most 12 tiles")
    if not 0 < o.min_tile_fraction * o.max_tiles <= 0.7:
        raise bad("min_tile_fraction", o.min_tile_fraction, "need 0 < min_tile_fraction * max_tiles <= 0.7")
    if not 0 <= o.seam_amplitude <= 0.2:
        raise bad("seam_amplitude", o.seam_amplitude, "use a value in [0, 0.2]")
    if o.n_clusters < 2:
        raise bad("n_clusters", o.n_clusters, "use at least 2 clusters")
    for name in ("n_train", "n_val", "n_test"):  # an empty split trains nothing or tests nothing
        if getattr(o, name) < 1:
            raise bad(name, getattr(o, name), "use a count >= 1")
    check_max_pixels(o.max_pixels, "wood")
    if not (0 < o.val_fraction and 0 < o.test_fraction and o.val_fraction + o.test_fraction < 0.9):
        raise bad(
            "val_fraction",
            o.val_fraction,
            f"need positive val/test fractions summing below 0.9 (test_fraction={o.test_fraction})",
        )


def image_folder(root: Path) -> Path:
    """Where the texture photographs are: images/images, images, or the root itself."""
    for cand in (root / "images" / "images", root / "images"):
        if list_images(cand):
            return cand
    return root


def _read_species(csv_path: Path, names: list[str]) -> dict[str, str]:
    """Map image file name -> species from wood.csv (file column detected by matching names)."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {csv_path}: {exc}; fix or remove the file") from None
    if not rows:
        return {}
    cols = list(rows[0].keys())
    species_col = next((c for c in cols if c and c.strip().lower() in ("species", "label", "class")), None)
    if species_col is None:
        raise UserError(
            f"{csv_path} has no 'species' column (columns: {', '.join(map(str, cols))}); "
            "add one or remove the file"
        )
    by_name = {n: n for n in names}
    by_name.update({Path(n).stem: n for n in names})
    best_col, best_hits = None, 0
    for c in cols:
        hits = sum(
            Path(str(r.get(c) or "")).name in by_name or Path(str(r.get(c) or "")).stem in by_name
            for r in rows
        )
        if hits > best_hits:
            best_col, best_hits = c, hits
    if best_col is None:
        raise UserError(
            f"{csv_path}: no column names the image files in the images folder; fix or remove the file"
        )
    out = {}
    for r in rows:
        v = Path(str(r.get(best_col) or ""))
        name = by_name.get(v.name) or by_name.get(v.stem)
        if name:
            out[name] = str(r.get(species_col) or "").strip()
    return out


def _fit_texture(image: np.ndarray, side: int) -> np.ndarray:
    """Shorter side -> ``side``, longer side centre-cropped to at most 1.5 x side."""
    h, w = image.shape[:2]
    s = side / min(h, w)
    nh, nw = max(side, round(h * s)), max(side, round(w * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    im = cv2.resize(image, (nw, nh), interpolation=interp)
    cap = int(1.5 * side)
    y0, x0 = max(0, (nh - cap) // 2), max(0, (nw - cap) // 2)
    return np.ascontiguousarray(im[y0 : y0 + min(nh, cap), x0 : x0 + min(nw, cap)])


def load_real_textures(root: Path, options: Options) -> tuple[list[Texture], list[str]]:
    folder = image_folder(root)
    paths = list_images(folder)
    need = 4 * options.n_clusters
    if len(paths) < need:
        raise UserError(
            f"wood folder {folder} has {len(paths)} images; need at least 4 x n_clusters = {need} "
            f"(put the texture photographs in {root}/images/images or lower data.n_clusters)"
        )
    species: dict[str, str] = {}
    notes = []
    csv_path = root / "wood.csv"
    if csv_path.is_file():
        species = _read_species(csv_path, [p.name for p in paths])
        notes.append(
            f"wood.csv: species for {len(species)} of {len(paths)} images, "
            f"{len(set(species.values()))} species"
        )
    textures = [
        Texture(
            p.name,
            _fit_texture(read_image(p, options.max_pixels), options.mosaic_size),
            species=species.get(p.name, ""),
        )
        for p in paths
    ]
    return textures, notes


def procedural_textures(options: Options, seed: int) -> list[Texture]:
    """The stand-in's textures, labelled with their colour family as species."""
    made = standin_textures(options.n_textures, options.mosaic_size, seed)
    return [Texture(key, image, species=family) for key, image, family in made]


# ---------------------------------------------------------------------------------------------
# Texture assignment


def _colour_regions(
    rng: np.random.Generator,
    n: int,
    adj: set[tuple[int, int]],
    target: int,
    target_colour: int,
    colours: list[int],
) -> list[int]:
    """A colour (cluster) per region: target fixed, others from ``colours`` with adjacent regions
    different; relaxes the adjacency rule among non-target regions when it cannot be met."""
    nbrs: dict[int, set[int]] = {i: set() for i in range(n)}
    for a, b in adj:
        nbrs[a].add(b)
        nbrs[b].add(a)
    order = [i for i in range(n) if i != target]
    for attempt in range(60):
        out = {target: target_colour}
        rng.shuffle(order)
        ok = True
        for i in order:
            free = [c for c in colours if all(out.get(j) != c for j in nbrs[i])]
            if not free:
                if attempt < 59:
                    ok = False
                    break
                free = colours
            out[i] = int(rng.choice(free))
        if ok:
            return [out[i] for i in range(n)]
    return [out[i] for i in range(n)]


def _pick_textures(
    rng: np.random.Generator,
    n: int,
    adj: set[tuple[int, int]],
    target: int,
    target_tex: str,
    pools: list[list[str]],
) -> list[str]:
    """A texture per region from the region's pool: target's texture never reused, textures
    distinct across regions where the pools allow, adjacent regions different where possible."""
    used = {target_tex}
    out = [""] * n
    out[target] = target_tex
    nbr_of = {i: {b for a, b in adj if a == i} | {a for a, b in adj if b == i} for i in range(n)}
    for i in rng.permutation(n):
        if i == target:
            continue
        pool = [t for t in pools[i] if t != target_tex]
        fresh = [t for t in pool if t not in used]
        cands = fresh or [t for t in pool if all(out[j] != t for j in nbr_of[i])] or pool
        out[i] = str(rng.choice(cands))
        used.add(out[i])
    return out


# ---------------------------------------------------------------------------------------------
# Mosaics


def build_mosaics(
    textures: dict[str, Texture],
    keys: list[str],
    mode: str,
    n: int,
    options: Options,
    seed: int,
    split: str,
) -> tuple[list[Sample], dict[str, MosaicInfo]]:
    """``n`` mosaics of ``mode`` from the textures ``keys`` (one split's)."""
    rng = stable_rng(seed, "mosaics", split, mode, options.layout)
    by_cluster: dict[int, list[str]] = {}
    for k in sorted(keys):
        by_cluster.setdefault(textures[k].cluster, []).append(k)
    clusters = sorted(by_cluster)
    if mode == "hard":
        eligible = [k for k in sorted(keys) if len(by_cluster[textures[k].cluster]) >= 2]
        if not eligible and n:
            raise UserError(
                f"wood {split} split has no cluster with 2+ textures, so hard mosaics cannot be built; "
                "add texture images or lower data.n_clusters"
            )
    else:
        eligible = sorted(keys)
        if len(clusters) < 2 and n:
            raise UserError(
                f"wood {split} split has textures of only {len(clusters)} cluster, so standard mosaics "
                "cannot be built; add texture images or lower data.test_fraction/val_fraction"
            )
    size = options.mosaic_size
    samples, infos = [], {}
    for i in range(n):
        if options.layout == "fixed":
            labels = fixed_layout(size, options.tile_size)
        else:
            n_tiles = int(rng.integers(options.min_tiles, options.max_tiles + 1))
            labels = random_layout(rng, size, n_tiles, options.seam_amplitude, options.min_tile_fraction)
        n_reg = int(labels.max()) + 1
        adj = adjacency(labels)
        target = int(rng.integers(n_reg))
        target_tex = str(rng.choice(eligible))
        tc = textures[target_tex].cluster
        if mode == "hard":
            region_clusters = [tc] * n_reg
        else:
            region_clusters = _colour_regions(rng, n_reg, adj, target, tc, [c for c in clusters if c != tc])
        tex = _pick_textures(rng, n_reg, adj, target, target_tex, [by_cluster[c] for c in region_clusters])
        image = np.empty((size, size, 3), np.uint8)
        for r in range(n_reg):
            src = textures[tex[r]].image
            y0 = int(rng.integers(src.shape[0] - size + 1))
            x0 = int(rng.integers(src.shape[1] - size + 1))
            crop = src[y0 : y0 + size, x0 : x0 + size]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if rng.random() < 0.5:
                crop = crop[::-1]
            m = labels == r
            image[m] = crop[m]
        key = f"wood/{options.layout}-{mode}/{split}/{i:05d}"
        samples.append(Sample(key, image, labels == target, category=f"cluster{tc}"))
        infos[key] = MosaicInfo(tuple(tex), tuple(region_clusters), target, tuple(sorted(adj)))
    return samples, infos


def _dedupe_textures(textures: list[Texture]) -> tuple[list[Texture], str | None]:
    seen: dict[str, str] = {}
    kept, dropped = [], []
    for t in sorted(textures, key=lambda t: t.key):
        h = content_hash(t.image)
        if h in seen:
            dropped.append(f"{t.key} = {seen[h]}")
            continue
        seen[h] = t.key
        kept.append(t)
    if not dropped:
        return kept, None
    more = f"; and {len(dropped) - 3} more" if len(dropped) > 3 else ""
    return kept, (
        f"{len(dropped)} exact-duplicate texture images dropped before splitting "
        f"(so none can sit in two splits): {'; '.join(dropped[:3])}{more}"
    )


def _split_textures(textures: list[Texture], options: Options, seed: int) -> dict[str, list[str]]:
    """Per-cluster seeded split of texture keys (``val_fraction``/``test_fraction`` of each
    cluster). Hard mosaics need two textures of one cluster inside a split, so a cluster of 6+
    gives val and test at least two each, and if val or test still has no cluster with two, a
    texture moves there from the train share of the cluster with the most training textures
    (never leaving that cluster without training textures)."""
    per: dict[int, dict[str, list[str]]] = {}
    for c in sorted({t.cluster for t in textures}):
        keys = [t.key for t in textures if t.cluster == c]
        order = split_keys(keys, 0.0, 0.0, seed, salt=f"wood-cluster{c}")[0]  # seeded order only
        _, n_val, n_test = split_counts(len(keys), options.val_fraction, options.test_fraction)
        if len(keys) >= 6:
            n_val, n_test = max(n_val, 2), max(n_test, 2)
        per[c] = {
            "val": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
    for split in ("test", "val"):
        if max(len(p[split]) for p in per.values()) >= 2:
            continue
        donors = [c for c, p in per.items() if len(p["train"]) + len(p[split]) >= 3]
        if donors:
            c = max(donors, key=lambda c: (len(per[c]["train"]), -c))
            while len(per[c][split]) < 2:
                per[c][split].append(per[c]["train"].pop())
    return {s: [k for c in sorted(per) for k in per[c][s]] for s in ("train", "val", "test")}


def cluster_purity(textures: list[Texture]) -> float:
    """Share of textures whose species/family label is the most common one in their cluster."""
    agree = 0
    for c in {t.cluster for t in textures}:
        sp = [t.species for t in textures if t.cluster == c]
        agree += max(sp.count(s) for s in set(sp))
    return agree / len(textures)


def _species_note(textures: list[Texture]) -> str | None:
    if not any(t.species for t in textures):
        return None
    return (
        f"cluster purity against species/family labels: {cluster_purity(textures):.2f} "
        f"({len({t.species for t in textures})} labels, {len({t.cluster for t in textures})} clusters)"
    )


def _standin_textures(options: Options, seed: int, notes: list[str]) -> tuple[list[Texture], str]:
    """The procedural textures that stand in when there is no ``--data-root``; returns (textures, source)."""
    if options.n_textures < 4 * options.n_clusters:
        raise UserError(
            f"data.n_textures={options.n_textures} for task wood; the stand-in needs at least "
            f"4 x n_clusters = {4 * options.n_clusters}"
        )
    notes.append(
        "wood: no --data-root, so procedural wood textures stand in for the real photographs; "
        "pass --data-root DIR with DIR/images/images/*.jpg (and optional DIR/wood.csv) to use them"
    )
    source = (
        f"procedural stand-in: {options.n_textures} generated wood textures "
        f"in {len(FAMILIES)} colour families"
    )
    return procedural_textures(options, seed), source


def _load_textures(
    data_root: Path | None, options: Options, seed: int, notes: list[str]
) -> tuple[list[Texture], str, str]:
    """The distinct textures (photographs or the stand-in); returns (textures, data, source)."""
    if data_root is None:
        textures, source = _standin_textures(options, seed, notes)
        data = "procedural"
    else:
        textures, csv_notes = load_real_textures(data_root, options)
        notes += csv_notes
        data, source = "real", str(image_folder(data_root))
    textures, dup_note = _dedupe_textures(textures)
    if dup_note:
        notes.append(dup_note)
    if len(textures) < 4 * options.n_clusters:
        raise UserError(
            f"wood folder {source} has {len(textures)} distinct images; need at least 4 x n_clusters = "
            f"{4 * options.n_clusters}; add images or lower data.n_clusters"
        )
    return textures, data, source


def _cluster(textures: list[Texture], options: Options, seed: int, notes: list[str]) -> None:
    """Set each texture's look-alike cluster, and say how the clusters came out."""
    labels = cluster_textures(
        [t.image for t in textures], options.n_clusters, seed, options.resnet18_checkpoint
    )
    for t, lab in zip(textures, labels, strict=True):
        t.cluster = int(lab)
    sizes = np.bincount(labels, minlength=options.n_clusters).tolist()
    feats = "ResNet18 features" if options.resnet18_checkpoint else "colour/Gabor/LBP descriptor"
    notes.append(f"wood: {len(textures)} textures in {options.n_clusters} clusters ({feats}), sizes {sizes}")
    if (sp := _species_note(textures)) is not None:
        notes.append(sp)
    if options.layout == "fixed":
        notes.append(
            "wood layout=fixed (the study's grid): a decoder can learn 'fill the clicked quadrant' "
            "without telling woods apart; use layout=random for evidence of texture discrimination"
        )


def _extra_tests(
    by_key: dict[str, Texture],
    tsplit: dict[str, list[str]],
    options: Options,
    seed: int,
    notes: list[str],
    infos: dict[str, MosaicInfo],
) -> dict[str, list[Sample]]:
    """The other mode's test set, and the same mode in the other layout, from the test textures."""
    other = "hard" if options.mode == "standard" else "standard"
    extras: dict[str, list[Sample]] = {}
    extras[other], info = build_mosaics(by_key, tsplit["test"], other, options.n_test, options, seed, "test")
    infos.update(info)
    # The other layout too, same mode: the study's fixed grid beside the randomised default, so
    # every wood sweep reports both (a gain only on the fixed grid is the quadrant shortcut).
    other_layout = "fixed" if options.layout == "random" else "random"
    if other_layout == "fixed" and not _fixed_grid_fits(options):
        notes.append(
            f"wood: no '{other_layout}-layout' extra test set: data.tile_size={options.tile_size} does not "
            f"divide data.mosaic_size={options.mosaic_size} into at least 2x2 tiles"
        )
    else:
        lay = replace(options, layout=other_layout)
        extras[f"{other_layout}-layout"], info = build_mosaics(
            by_key, tsplit["test"], options.mode, options.n_test, lay, seed, "test"
        )
        infos.update(info)
    return extras


def load(data_root: Path | None, options: Options, seed: int) -> WoodTaskData:
    """Textures -> clusters -> texture split -> mosaics per split, plus the extra test sets."""
    _check_options(options)
    notes: list[str] = []
    textures, data, source = _load_textures(data_root, options, seed, notes)
    _cluster(textures, options, seed, notes)
    by_key = {t.key: t for t in textures}
    tsplit = _split_textures(textures, options, seed)
    counts = {"train": options.n_train, "val": options.n_val, "test": options.n_test}
    out: dict[str, list[Sample]] = {}
    infos: dict[str, MosaicInfo] = {}
    for split in ("train", "val", "test"):
        out[split], info = build_mosaics(
            by_key, tsplit[split], options.mode, counts[split], options, seed, split
        )
        infos.update(info)
    extras = _extra_tests(by_key, tsplit, options, seed, notes, infos)
    notes.append(
        f"wood: mode={options.mode}, layout={options.layout}; textures per split "
        + ", ".join(f"{s} {len(v)}" for s, v in tsplit.items())
        + "; extra test sets "
        + ", ".join(f"'{k}'" for k in extras)
        + " from the test textures"
    )
    return WoodTaskData(
        name="wood",
        data=data,
        train=out["train"],
        val=out["val"],
        test=out["test"],
        source=source,
        notes=notes,
        extra_tests=extras,
        texture_splits=tsplit,
        texture_clusters={t.key: t.cluster for t in textures},
        mosaics=infos,
    )
