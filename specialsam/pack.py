"""A trial's whole input, prepared once by the driver: the *pack*.

A pack is a folder holding, for one (task split, model): the embedding-cache keys of every sample,
its target mask in the model's input frame at the loss resolution (soft uint8, so 2-5 px defects
survive downscaling), the fixed evaluation prompts per strategy, and the full-resolution ground
truth for test scoring. Trials open the pack and the cache and nothing else: they never see an
image and never run the encoder. Embeddings and mask rows are read per batch (never the whole
pool), so a trial's memory does not grow with the training set. Packs are content-addressed
(samples, model, settings) and written atomically, so a rerun reuses them and a change rebuilds
them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from specialsam.embeddings import EmbeddingCache, ModelIdentity, encoder_precision, preprocessing_id
from specialsam.inference import model_side
from specialsam.modeling.headless import build_headless, decoder_state, load_decoder_state
from specialsam.prompts import Prompt, make_prompt, to_model_coords
from specialsam.tasks.base import Sample, TaskData

PACK_VERSION = 3
EXTRA_PREFIX = "extra-"
"""Split-name prefix of a task's extra test sets (``TaskDataWithExtras.extra_tests``)."""
EVAL_PROMPT_SEED = 1234
N_THUMBS = 6
THUMB_SIDE = 256


def flipped(sample: Sample) -> Sample:
    return Sample(
        key=f"{sample.key}#hflip",
        image=np.ascontiguousarray(sample.image[:, ::-1]),
        mask=np.ascontiguousarray(sample.mask[:, ::-1]),
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


def _hash_samples(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(s.key.encode())
        h.update(s.image_hash().encode())
        h.update(hashlib.sha256(np.packbits(s.mask).tobytes()).digest())
        h.update(str(s.mask.shape).encode())
    return h.hexdigest()


@dataclass(frozen=True)
class PackSettings:
    loss_res: int = 256
    flip: bool = False
    strategies: tuple[str, ...] = ("center", "box")
    primary: str = "center"

    def resolved_res(self, sam: Sam) -> int:
        return model_side(sam) if self.loss_res <= 0 else self.loss_res


def _eval_prompts(samples: Sequence[Sample], strategy: str, side: int):
    rng = np.random.default_rng(EVAL_PROMPT_SEED)
    prompts: list[Prompt | None] = [make_prompt(s.mask, strategy, rng) for s in samples]
    ok = [p is not None for p in prompts]
    k = next((len(p.labels) for p in prompts if p is not None), 2)
    coords = np.zeros((len(samples), k, 2), np.float32)
    labels = np.full((len(samples), k), -1, np.int64)
    for i, (p, s) in enumerate(zip(prompts, samples)):
        if p is not None:
            coords[i] = to_model_coords(p, s.mask.shape, side)
            labels[i] = p.labels
    return coords, labels, np.array(ok)


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

    ``precompute(images, hashes)``, when given, fills the cache first (e.g. spread over a Ray
    cluster); whatever it leaves missing is encoded here."""
    side, res = model_side(sam), settings.resolved_res(sam)
    train = list(task.train) + ([flipped(s) for s in task.train] if settings.flip else [])
    splits: dict[str, list[Sample]] = {"train": train, "val": list(task.val), "test": list(task.test)}
    if retention:
        splits["retention"] = list(retention)
    for name, samples in sorted(getattr(task, "extra_tests", {}).items()):
        if samples:  # the other wood mode, camouflage transfer sets: scored like test, reported apart
            splits[EXTRA_PREFIX + name] = list(samples)
    ident = hashlib.sha256(
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
    folder = cache.root / "packs" / f"{task.name}-{identity.name}-{ident}"
    if (folder / "manifest.json").exists():
        return folder

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
    cache.root.mkdir(parents=True, exist_ok=True)
    all_hashes = {name: [s.image_hash() for s in samples] for name, samples in splits.items()}
    if precompute is not None:
        precompute([s.image for v in splits.values() for s in v], [h for v in all_hashes.values() for h in v])
    tmp = Path(tempfile.mkdtemp(dir=cache.root, prefix=".pack-"))
    try:
        for name, samples in splits.items():
            hashes = all_hashes[name]
            keys = cache.precompute(
                sam, identity, [s.image for s in samples], hashes, progress=progress, desc=f"encoding {name}"
            )
            masks, valid = zip(*(frame_mask(s.mask, res) for s in samples)) if samples else ((), ())
            np.save(
                tmp / f"{name}_masks.npy", np.stack(masks) if masks else np.zeros((0, res, res), np.uint8)
            )
            manifest["splits"][name] = {
                "keys": [s.key for s in samples],
                "emb": keys,
                "categories": [s.category for s in samples],
                "original_hw": [list(s.mask.shape) for s in samples],
                "valid_hw": [list(v) for v in valid],
            }
            strategies = settings.strategies if name in ("test", "retention") else (settings.primary,)
            if name == "train":
                continue
            for strat in strategies:
                coords, labels, ok = _eval_prompts(samples, strat, side)
                np.savez(tmp / f"{name}_prompts_{strat}.npz", coords=coords, labels=labels, ok=ok)
            if name in ("test", "retention") or name.startswith(EXTRA_PREFIX):
                np.savez_compressed(
                    tmp / f"{name}_gt.npz", **{f"m{i}": np.packbits(s.mask) for i, s in enumerate(samples)}
                )
        _write_thumbs(tmp / "test_thumbs.npz", splits["test"][:N_THUMBS])
        torch.save(decoder_state(sam), tmp / "decoder.pt")
        manifest["model_name"] = identity.name
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same pack first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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

    def __init__(self, path: Path) -> None:
        header = np.load(path, mmap_mode="r")  # numpy parses the header; no row is read here
        if not header.flags.c_contiguous:
            raise ValueError(f"{path}: Fortran-ordered masks are not supported")
        self.path, self.shape, self.dtype, self.offset = path, header.shape, header.dtype, header.offset
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64))
        del header

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"mask row {i} out of range for {len(self)} rows")
        offset = self.offset + (i % len(self)) * self.row_items * self.dtype.itemsize
        row = np.fromfile(self.path, self.dtype, count=self.row_items, offset=offset)
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
        return MaskRows(self.pack.folder / f"{self.name}_masks.npy")

    def embeddings(self, idx: Sequence[int]) -> np.ndarray:
        return np.stack([self.pack.cache.load(self.emb_keys[i]) for i in idx]).astype(np.float32)

    def prompts(self, strategy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = self.pack.folder / f"{self.name}_prompts_{strategy}.npz"
        if not f.exists():
            raise KeyError(f"pack has no {strategy!r} prompts for split {self.name}")
        z = np.load(f)
        return z["coords"], z["labels"], z["ok"]

    def gt(self, i: int) -> np.ndarray:
        z = self._gt
        h, w = self.original_hw[i]
        return np.unpackbits(z[f"m{i}"], count=h * w).reshape(h, w).astype(bool)

    @cached_property
    def _gt(self):
        return np.load(self.pack.folder / f"{self.name}_gt.npz")


class Pack:
    def __init__(self, folder: Path | str, cache: EmbeddingCache | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        self.cache = cache or EmbeddingCache(self.folder.parent.parent)

    def split(self, name: str) -> Split:
        return Split(self, name)

    def headless_model(self) -> Sam:
        """The pack's model without its encoder, with the base (pretrained) decoder weights."""
        sam = build_headless(self.manifest["model_name"])
        load_decoder_state(sam, torch.load(self.folder / "decoder.pt", weights_only=True))
        return sam.eval()

    def thumbnails(self) -> list[tuple[np.ndarray, np.ndarray]]:
        z = np.load(self.folder / "test_thumbs.npz")
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
