"""A trial's whole input, prepared once by the driver: the *pack*.

A pack is a folder holding, for one (task split, model): the embedding-cache keys of every sample,
its target mask in the model's input frame at the loss resolution (soft uint8, so 2-5 px defects
survive downscaling), the fixed evaluation prompts per strategy, and the full-resolution ground
truth for test scoring. Trials open the pack and the cache and nothing else: they never see an
image and never run the encoder. Embeddings and mask rows are read per batch (never the whole
pool), so a trial's memory does not grow with the training set. Packs are content-addressed
(samples, model, settings) and written atomically, so a rerun reuses them and a change rebuilds
them.

Nothing in a pack or the cache is trusted as-is. The manifest records the SHA-256 of every pack
file and of itself, and a CRC-32 per mask row. The driver (``build_pack``, once per sweep) checks
all of them and every embedding entry the pack uses: a corrupt or incomplete pack is rebuilt, a
corrupt or deleted entry re-encoded. Trials check what they read (the manifest's digest when they
open the pack, each file's digest as it is read, a mask row's CRC on every read, an entry's digest
on its first read) and stop with a one-line ``CorruptPack`` / ``CorruptEntry`` error naming the
file: they cannot rebuild, a rerun does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import cv2
import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from specialsam.errors import UserError
from specialsam.finetune import cache as embeddings
from specialsam.finetune.cache import (
    EmbeddingCache,
    ModelIdentity,
    encoder_precision,
    file_sha256,
    preprocessing_id,
)
from specialsam.models.headless import build_headless, decoder_state, load_decoder_state
from specialsam.models.inference import model_side
from specialsam.prompts import make_prompt, to_model_coords
from specialsam.tasks.base import ImageSource, MaskSource, Sample, SampleImages, TaskData

PACK_VERSION = 4
"""4: the manifest carries file digests, its own digest and per-row mask CRCs (older packs are
rebuilt once: they cannot be verified)."""
EXTRA_PREFIX = "extra-"
"""Split-name prefix of a task's extra test sets (``TaskDataWithExtras.extra_tests``)."""
EVAL_PROMPT_SEED = 1234
N_THUMBS = 6
THUMB_SIDE = 256


def _hflip(source: ImageSource | MaskSource) -> np.ndarray:
    return np.ascontiguousarray(source.pixels()[:, ::-1])


def flipped(sample: Sample) -> Sample:
    """The mirrored sample, decoded (and mirrored) only when its pixels are read."""
    return Sample(
        key=f"{sample.key}#hflip",
        image=ImageSource(partial(_hflip, sample.source)),
        mask=MaskSource(partial(_hflip, sample.mask_source)),
        category=sample.category,
    )


def frame_mask(mask: np.ndarray, res: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Mask -> (res, res) soft uint8 in the model's padded input frame + its valid (h, w)."""
    h, w = mask.shape
    nh, nw = ResizeLongestSide.get_preprocess_shape(h, w, res)
    soft = cv2.resize(mask.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    out = np.zeros((res, res), np.uint8)
    out[:nh, :nw] = np.round(np.clip(soft, 0, 1) * 255).astype(np.uint8)
    return out, (nh, nw)


def sample_fingerprint(s: Sample) -> bytes:
    """What identifies a sample's content: its key, its image's hash and its mask (bits and shape)."""
    mask = hashlib.sha256(np.packbits(s.mask).tobytes()).digest()
    return s.key.encode() + s.image_hash().encode() + mask + str(s.mask.shape).encode()


def _hash_samples(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(sample_fingerprint(s))
    return h.hexdigest()


@dataclass(frozen=True)
class PackSettings:
    loss_res: int = 256
    flip: bool = False
    strategies: tuple[str, ...] = ("center", "box")
    primary: str = "center"

    def resolved_res(self, sam: Sam) -> int:
        return model_side(sam) if self.loss_res <= 0 else self.loss_res


class CorruptPack(UserError):
    """A pack file a trial reads is missing or fails its digest; the driver rebuilds it on a rerun."""


RERUN = "rerun the sweep (or --resume it): the driver rebuilds what fails its check"


def _manifest_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _seal(folder: Path, manifest: dict) -> None:
    """Record every file's digest and the manifest's own, then write the manifest (last)."""
    manifest["files"] = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.is_file()}
    manifest["sha256"] = _manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _manifest_or_problem(folder: Path) -> dict | str:
    """The manifest if it is a current pack's and matches its own digest, else what is wrong."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return f"pack manifest {path} is missing"
    except (OSError, ValueError) as exc:
        return f"pack manifest {path} is unreadable ({type(exc).__name__})"
    if not embeddings.VERIFY:  # benchmarks/cache_integrity.py's "without" runs only
        return manifest
    if not isinstance(manifest, dict) or manifest.get("version") != PACK_VERSION:
        return f"pack manifest {path} is not a version-{PACK_VERSION} pack"
    if manifest.get("sha256") != _manifest_digest(manifest) or not isinstance(manifest.get("files"), dict):
        return f"pack manifest {path} is corrupt (SHA-256 differs from its record)"
    return manifest


def _read_manifest(folder: Path) -> dict:
    manifest = _manifest_or_problem(folder)
    if isinstance(manifest, str):
        raise CorruptPack(f"{manifest}; {RERUN}")
    return manifest


def pack_problem(folder: Path) -> str | None:
    """Why a pack folder cannot be used as-is (its first bad file), or None when every digest matches."""
    manifest = _manifest_or_problem(folder)
    if isinstance(manifest, str):
        return manifest
    for name, digest in manifest["files"].items() if embeddings.VERIFY else ():
        path = folder / name
        if not path.is_file():
            return f"pack file {path} is missing"
        if file_sha256(path) != digest:
            return f"pack file {path} is corrupt (SHA-256 differs from the manifest)"
    return None


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr, flush=True)


def _set_aside(folder: Path) -> None:
    """Move a bad pack out of the way (atomic rename, then delete) so a fresh one can take its name."""
    dead = folder.with_name(f".corrupt-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, dead)
    except OSError:  # another process moved it first
        return
    shutil.rmtree(dead, ignore_errors=True)


def _fill_cache(
    splits: dict[str, list[Sample]],
    hashes: dict[str, list[str]],
    sam: Sam,
    identity: ModelIdentity,
    cache: EmbeddingCache,
    progress: bool,
    precompute: Callable[[list[np.ndarray], list[str]], object] | None,
) -> dict[str, list[str]]:
    """Verify every entry the splits use, drop corrupt ones, encode what is missing; keys per split."""
    keys = {name: [identity.key(h) for h in hs] for name, hs in hashes.items()}
    flat = [k for ks in keys.values() for k in ks]
    if embeddings.VERIFY:
        missing, corrupt = cache.verify_entries(flat)
    else:  # benchmarks/cache_integrity.py's "without" runs only
        missing, corrupt = [k for k in flat if not cache.has(k)], []
    if corrupt:
        _note(
            f"{len(corrupt)} corrupt embedding cache entr{'y' if len(corrupt) == 1 else 'ies'} "
            f"(e.g. {cache.entry_path(corrupt[0])}) removed; re-encoding"
        )
    if (missing or corrupt) and precompute is not None:
        every = [s for v in splits.values() for s in v]
        precompute(SampleImages(every), [h for v in hashes.values() for h in v])
    for name, samples in splits.items():
        cache.precompute(
            sam,
            identity,
            SampleImages(samples),
            hashes[name],
            progress=progress,
            desc=f"encoding {name}",
        )
    return keys


def pack_splits(
    task: TaskData, settings: PackSettings, retention: Sequence[Sample]
) -> dict[str, list[Sample]]:
    """The pack's splits: train (+ its flips), val, test, retention and the task's extra test sets."""
    train = list(task.train) + ([flipped(s) for s in task.train] if settings.flip else [])
    splits: dict[str, list[Sample]] = {"train": train, "val": list(task.val), "test": list(task.test)}
    if retention:
        splits["retention"] = list(retention)
    for name, samples in sorted(getattr(task, "extra_tests", {}).items()):
        if samples:  # the other wood mode, camouflage transfer sets: scored like test, reported apart
            splits[EXTRA_PREFIX + name] = list(samples)
    return splits


def _pack_ident(
    task: TaskData, identity: ModelIdentity, settings: PackSettings, res: int, splits: dict[str, list[Sample]]
) -> str:
    """What names the pack's folder: everything its contents depend on, hashed."""
    return hashlib.sha256(
        json.dumps(
            [
                PACK_VERSION,
                task.name,
                task.data,
                identity.record(),
                settings.__dict__,
                res,
                {k: _hash_samples(v) for k, v in splits.items()},
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:24]


class _RowWriter:
    """Writes a ``.npy`` of ``(n, res, res)`` uint8 rows one row at a time (as ``np.save`` would
    write the stacked array), so a 20,000-sample split never stands in memory."""

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False}
        np.lib.format.write_array_header_1_0(self.f, {**header, "shape": shape})
        self.crc32: list[int] = []

    def write(self, row: np.ndarray) -> None:
        data = np.ascontiguousarray(row, np.uint8).tobytes()
        self.f.write(data)
        self.crc32.append(zlib.crc32(data))

    def close(self) -> None:
        self.f.close()


class _GtWriter:
    """``np.savez_compressed``'s layout (``m<i>.npy`` members, deflated), written member by member."""

    def __init__(self, path: Path) -> None:
        self.zf = zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)

    def add(self, name: str, arr: np.ndarray) -> None:
        with self.zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)

    def __enter__(self) -> _GtWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.zf.close()


def _split_strategies(name: str, settings: PackSettings) -> tuple[str, ...]:
    """The evaluation prompts a split carries: none for train, the primary for val, all for test sets."""
    if name == "train":
        return ()
    return settings.strategies if name in ("test", "retention") else (settings.primary,)


def _prompt_arrays(prompts: list[tuple[np.ndarray, np.ndarray] | None]):
    """(coords, labels, ok) arrays of one strategy's prompts (None: an empty mask, no prompt)."""
    # one row per sample, padded to the longest prompt with padding tokens (label -1); every
    # strategy gives prompts of one length today, so no row is padded beyond SAM's own token
    k = max((len(p[1]) for p in prompts if p is not None), default=2)
    coords = np.zeros((len(prompts), k, 2), np.float32)
    labels = np.full((len(prompts), k), -1, np.int64)
    for i, p in enumerate(prompts):
        if p is not None:
            coords[i, : len(p[1])], labels[i, : len(p[1])] = p
    return coords, labels, np.array([p is not None for p in prompts])


def _write_split(
    tmp: Path,
    name: str,
    samples: list[Sample],
    emb_keys: list[str],
    settings: PackSettings,
    side: int,
    res: int,
) -> dict:
    """Write one split's masks, evaluation prompts and full-resolution ground truth into ``tmp``;
    returns its manifest entry. One pass, one mask decoded at a time (masks may live in files)."""
    strategies = _split_strategies(name, settings)
    rngs = {st: np.random.default_rng(EVAL_PROMPT_SEED) for st in strategies}  # one stream per strategy
    prompts: dict[str, list] = {st: [] for st in strategies}
    original, valid = [], []
    with_gt = name in ("test", "retention") or name.startswith(EXTRA_PREFIX)
    rows = _RowWriter(tmp / f"{name}_masks.npy", (len(samples), res, res))
    try:
        with _GtWriter(tmp / f"{name}_gt.npz") if with_gt else nullcontext() as gt:
            for i, s in enumerate(samples):
                mask = s.mask
                row, hw = frame_mask(mask, res)
                rows.write(row)
                original.append(list(mask.shape))
                valid.append(list(hw))
                for st in strategies:
                    p = make_prompt(mask, st, rngs[st])
                    prompts[st].append(p and (to_model_coords(p, mask.shape, side), p.labels))
                if gt is not None:
                    gt.add(f"m{i}", np.packbits(mask))
    finally:
        rows.close()
    for st in strategies:
        coords, labels, ok = _prompt_arrays(prompts[st])
        np.savez(tmp / f"{name}_prompts_{st}.npz", coords=coords, labels=labels, ok=ok)
    return {
        "keys": [s.key for s in samples],
        "emb": emb_keys,
        "categories": [s.category for s in samples],
        "original_hw": original,
        "valid_hw": valid,
        "mask_crc32": rows.crc32,
    }


def _write_pack(
    folder: Path,
    manifest: dict,
    splits: dict[str, list[Sample]],
    keys: dict[str, list[str]],
    sam: Sam,
    identity: ModelIdentity,
    settings: PackSettings,
    cache: EmbeddingCache,
) -> None:
    """Write the pack into a temporary folder, seal it and move it into place in one rename."""
    side, res = manifest["side"], manifest["loss_res"]
    tmp = Path(tempfile.mkdtemp(dir=cache.root, prefix=".pack-"))
    try:
        for name, samples in splits.items():
            manifest["splits"][name] = _write_split(tmp, name, samples, keys[name], settings, side, res)
        _write_thumbs(tmp / "test_thumbs.npz", splits["test"][:N_THUMBS])
        torch.save(decoder_state(sam), tmp / "decoder.pt")
        manifest["model_name"] = identity.name
        _seal(tmp, manifest)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same pack first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_pack(
    task: TaskData,
    sam: Sam,
    identity: ModelIdentity,
    cache: EmbeddingCache,
    settings: PackSettings,
    retention: Sequence[Sample] = (),
    progress: bool = True,
    precompute: Callable[[list[np.ndarray], list[str]], object] | None = None,
) -> Path:
    """Encode what is missing, write the pack (if not there yet) and return its folder.

    Nothing on disk is trusted: every entry the pack uses is hashed (a corrupt one removed and
    re-encoded with a deleted one, same key) and an existing pack whose files fail their digests
    is set aside and rebuilt, so trials never start on bad data. This runs once per sweep, before
    any baseline or trial reads. ``precompute(images, hashes)``, when given, fills the cache first
    (e.g. spread over a Ray cluster); whatever it leaves missing is encoded here."""
    side, res = model_side(sam), settings.resolved_res(sam)
    splits = pack_splits(task, settings, retention)
    ident = _pack_ident(task, identity, settings, res, splits)
    folder = cache.root / "packs" / f"{task.name}-{identity.name}-{ident}"
    all_hashes = {name: [s.image_hash() for s in samples] for name, samples in splits.items()}
    cache.root.mkdir(parents=True, exist_ok=True)
    keys = _fill_cache(splits, all_hashes, sam, identity, cache, progress, precompute)
    if folder.exists():
        problem = pack_problem(folder)
        if problem is None:
            return folder
        _note(f"{problem}; rebuilding the pack")
        _set_aside(folder)

    manifest: dict = {
        "version": PACK_VERSION,
        "task": task.name,
        "data": task.data,
        "source": task.source,
        "model": identity.record(),
        "side": side,
        "loss_res": res,
        "flip": settings.flip,
        "n_train_pool": len(task.train),
        "strategies": list(settings.strategies),
        "primary": settings.primary,
        "splits": {},
    }
    _write_pack(folder, manifest, splits, keys, sam, identity, settings, cache)
    return folder


def _write_thumbs(path: Path, samples: Sequence[Sample]) -> None:
    """A few test images, downscaled, so trials can draw overlays without the dataset."""
    arrays = {}
    for i, s in enumerate(samples):
        h, w = s.mask.shape
        f = min(1.0, THUMB_SIDE / max(h, w))
        size = (max(1, round(w * f)), max(1, round(h * f)))
        arrays[f"image{i}"] = cv2.resize(s.image, size, interpolation=cv2.INTER_AREA)
        arrays[f"mask{i}"] = cv2.resize(s.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    np.savez_compressed(path, n=len(samples), **arrays)


class MaskRows:
    """Rows of a pack's ``<split>_masks.npy``, each read from disk when asked for.

    Not ``np.load(mmap_mode="r")``: page faults on a memory-mapped 8,000-mask pool (0.5 GB) mapped
    far more than the rows a trial read, and a trial's peak RSS grew with the pool (+500 MB at
    8,000 for the same 800 samples trained; benchmarks/scaling.py). Reading rows keeps it flat."""

    def __init__(self, path: Path, crc32: Sequence[int] | None = None) -> None:
        try:
            header = np.load(path, mmap_mode="r")  # numpy parses the header; no row is read here
        except (OSError, ValueError) as exc:
            if crc32 is None:
                raise
            raise CorruptPack(f"pack file {path} is unreadable ({type(exc).__name__}); {RERUN}") from None
        if not header.flags.c_contiguous:
            raise ValueError(f"{path}: Fortran-ordered masks are not supported")
        self.path, self.shape, self.dtype, self.offset = path, header.shape, header.dtype, header.offset
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        self.crc32 = crc32
        """Per-row CRC-32 from the manifest: each row read is checked (a few µs for a 64 KB row)."""
        if crc32 is not None and len(crc32) != len(self):
            raise CorruptPack(f"pack file {path} holds {len(self)} rows, its manifest {len(crc32)}; {RERUN}")
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"mask row {i} out of range for {len(self)} rows")
        offset = self.offset + (i % len(self)) * self.row_items * self.dtype.itemsize
        row = np.fromfile(self.path, self.dtype, count=self.row_items, offset=offset)
        if self.crc32 is not None and (row.size != self.row_items or zlib.crc32(row) != self.crc32[i]):
            raise CorruptPack(f"pack file {self.path}: mask row {i} is corrupt (CRC-32 differs); {RERUN}")
        return row.reshape(self.shape[1:])


class Split:
    """One split of an opened pack: embeddings stream from the cache, mask rows are read on demand."""

    def __init__(self, pack: Pack, name: str) -> None:
        self.pack, self.name = pack, name
        meta = pack.manifest["splits"][name]
        self.keys: list[str] = meta["keys"]
        self.emb_keys: list[str] = meta["emb"]
        self.categories: list[str] = meta["categories"]
        self.original_hw = [tuple(x) for x in meta["original_hw"]]
        self.valid_hw = [tuple(x) for x in meta["valid_hw"]]

    def __len__(self) -> int:
        return len(self.keys)

    @cached_property
    def masks(self) -> MaskRows:
        crc = self.pack.manifest["splits"][self.name]["mask_crc32"] if embeddings.VERIFY else None
        return MaskRows(self.pack.folder / f"{self.name}_masks.npy", crc)

    def embeddings(self, idx: Sequence[int]) -> np.ndarray:
        return np.stack([self.pack.cache.load(self.emb_keys[i]) for i in idx]).astype(np.float32)

    def prompts(self, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = f"{self.name}_prompts_{strategy}.npz"
        if f not in self.pack.manifest["files"]:
            raise KeyError(f"pack has no {strategy!r} prompts for split {self.name}")
        z = np.load(self.pack.read_file(f))
        return z["coords"], z["labels"], z["ok"]

    def gt(self, i: int) -> np.ndarray:
        z = self._gt
        h, w = self.original_hw[i]
        return np.unpackbits(z[f"m{i}"], count=h * w).reshape(h, w).astype(bool)

    @cached_property
    def _gt(self):
        return np.load(self.pack.read_file(f"{self.name}_gt.npz"))


class Pack:
    """An opened pack: its manifest checked against its own digest, each file against the manifest's
    digest as it is read (files are read whole, so hashing them costs about the read)."""

    def __init__(self, folder: Path | str, cache: EmbeddingCache | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = _read_manifest(self.folder)
        self.cache = cache or EmbeddingCache(self.folder.parent.parent)

    def read_file(self, name: str) -> io.BytesIO:
        """A pack file's bytes, checked against the manifest; ``CorruptPack`` names it otherwise."""
        path = self.folder / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CorruptPack(f"pack file {path} is missing; {RERUN}") from None
        if embeddings.VERIFY and hashlib.sha256(data).hexdigest() != self.manifest["files"].get(name):
            raise CorruptPack(f"pack file {path} is corrupt (SHA-256 differs from the manifest); {RERUN}")
        return io.BytesIO(data)

    def split(self, name: str) -> Split:
        return Split(self, name)

    def headless_model(self) -> Sam:
        """The pack's model without its encoder, with the base (pretrained) decoder weights."""
        sam = build_headless(self.manifest["model_name"])
        load_decoder_state(sam, torch.load(self.read_file("decoder.pt"), weights_only=True))
        return sam.eval()

    def thumbnails(self) -> list[tuple[np.ndarray, np.ndarray]]:
        z = np.load(self.read_file("test_thumbs.npz"))
        return [(z[f"image{i}"], z[f"mask{i}"]) for i in range(int(z["n"]))]

    def has(self, name: str) -> bool:
        return name in self.manifest["splits"]

    @property
    def extra_tests(self) -> list[str]:
        """Names of the extra test sets (without the split prefix)."""
        return [k[len(EXTRA_PREFIX) :] for k in self.manifest["splits"] if k.startswith(EXTRA_PREFIX)]

    @property
    def side(self) -> int:
        return int(self.manifest["side"])

    @property
    def loss_res(self) -> int:
        return int(self.manifest["loss_res"])

    @property
    def n_train_pool(self) -> int:
        return int(self.manifest["n_train_pool"])

    def train_indices(self, n_train: int) -> list[int]:
        """The first ``n_train`` pool samples, plus their flipped copies when the pack has flips."""
        pool = self.n_train_pool
        idx = list(range(min(n_train, pool)))
        return idx + [pool + i for i in idx] if self.manifest["flip"] else idx


def model_identity(sam: Sam, name: str, checkpoint_sha: str) -> ModelIdentity:
    """What this model's embeddings depend on, encoder precision as ``auto`` picks it here."""
    return ModelIdentity(
        name=name,
        checkpoint_sha=checkpoint_sha,
        preprocessing=preprocessing_id(sam),
        precision=encoder_precision(sam),
    )
