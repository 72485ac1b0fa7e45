"""Content-addressed cache of image embeddings: the encoder runs once per (model, image).

An entry's key hashes everything the embedding depends on: model name, checkpoint SHA-256, the
image's content hash, the preprocessing and the encoder's precision (when not fp32). A changed
image or checkpoint therefore gets a new key and is recomputed, never served stale. Entries are
float16 ``.npy`` files (memory-mappable, so a trial streams what it needs instead of loading a
whole training set) with a JSON sidecar that is written last: an entry exists only once its
sidecar does, and the sidecar carries the SHA-256 of the array file.

That digest is checked on every path a sweep reads: the driver verifies each entry a pack uses
once per sweep (``verify_entries``; a corrupt entry is removed and re-encoded, a missing one
re-encoded) and every process checks an entry on its first ``load`` (a trial cannot re-encode, so
a bad entry there is a one-line ``CorruptEntry`` error that tells the user to rerun). A torn
write, a flipped byte or a deleted file is therefore recomputed or refused, never read.
benchmarks/cache_integrity.py measures what the checks cost.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm.auto import tqdm

from specialsam.atomic import atomic_save_npy, atomic_write_bytes
from specialsam.errors import UserError
from specialsam.models.inference import encode, model_side

PREPROCESSING_VERSION = "resize-longest+sam-norm+pad/v1"
VERIFY = True
"""The integrity checks of this module and ``specialsam.finetune.pack`` (digests on read, the driver's pass
over a pack's entries and files). Only benchmarks/cache_integrity.py sets it False, to time its
with/without comparison; no flag, setting or environment variable turns the checks off."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("SPECIALSAM_CACHE", Path.home() / ".cache" / "specialsam"))


def preprocessing_id(sam: Sam) -> str:
    return f"{PREPROCESSING_VERSION}/side={model_side(sam)}"


def encoder_precision(sam: Sam) -> str:
    """fp32 or bf16: what ``auto`` precision encodes this model's images in on this machine."""
    from specialsam.device import select_device

    return select_device().for_encoder(model_side(sam)).precision


def embedding_bytes(sam: Sam) -> int:
    """Bytes of one image's cached (float16) embedding: what a decoder-only trial reads per image."""
    h, w = sam.prompt_encoder.image_embedding_size
    return 2 * int(sam.prompt_encoder.embed_dim) * int(h) * int(w)


def entry_key(model: str, checkpoint_sha: str, image_hash: str, preprocessing: str) -> str:
    h = hashlib.sha256("|".join([model, checkpoint_sha, image_hash, preprocessing]).encode())
    return h.hexdigest()[:40]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CorruptEntry(UserError):
    """A cache entry a trial needs is missing or fails its digest: only the driver can re-encode it."""


@dataclass(frozen=True)
class ModelIdentity:
    """What an embedding depends on besides the image."""

    name: str
    checkpoint_sha: str
    preprocessing: str
    precision: str = "fp32"
    """The encoder's precision. fp32, the default, is left out of keys and records, so caches and
    packs written before precision was recorded stay valid."""

    def key(self, image_hash: str) -> str:
        prep = self.preprocessing if self.precision == "fp32" else f"{self.preprocessing}/{self.precision}"
        return entry_key(self.name, self.checkpoint_sha, image_hash, prep)

    def record(self) -> dict[str, str]:
        """The identity as packs record and hash it."""
        rec = dict(self.__dict__)
        if rec["precision"] == "fp32":
            del rec["precision"]
        return rec


class EmbeddingCache:
    """Folder of ``<key[:2]>/<key>.npy`` + ``.json`` entries; safe for concurrent writers."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.encoder_calls = 0  # images actually encoded by this instance (tests, benchmarks)
        self._verified: set[str] = set()  # keys whose file matched its digest (or that this object wrote)

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / "embeddings" / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"

    def entry_path(self, key: str) -> Path:
        """The array file of an entry (what error messages name)."""
        return self._paths(key)[0]

    def has(self, key: str, verify: bool = False) -> bool:
        arr, meta = self._paths(key)
        if not (meta.exists() and arr.exists()):
            return False
        if verify:  # an explicit request always hashes; a match spares this object's next load
            if self._expected_sha(key) != file_sha256(arr):
                self._verified.discard(key)
                return False
            self._verified.add(key)
        return True

    def _expected_sha(self, key: str) -> str | None:
        """The digest the sidecar records, or None when the sidecar is gone or unreadable."""
        try:
            sha = json.loads(self._paths(key)[1].read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return sha if isinstance(sha, str) else None

    def verify_entries(self, keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """(missing, corrupt) among ``keys``, each entry's file hashed against its sidecar.

        Corrupt entries are removed, so every later ``has`` (the cluster precompute's too) sees
        them as missing and they are re-encoded under the same key."""
        missing, corrupt = [], []
        for key in dict.fromkeys(keys):
            arr, meta = self._paths(key)
            if not (meta.exists() and arr.exists()):
                missing.append(key)
            elif not self.has(key, verify=True):
                corrupt.append(key)
                self.discard(key)
        return missing, corrupt

    def discard(self, key: str) -> None:
        """Remove an entry, sidecar first (an entry exists only while its sidecar does)."""
        arr, meta = self._paths(key)
        meta.unlink(missing_ok=True)
        arr.unlink(missing_ok=True)
        self._verified.discard(key)

    def load(self, key: str, mmap: bool = True) -> np.ndarray:
        """The entry's array; its digest is checked on this object's first load of it."""
        arr, _ = self._paths(key)
        if VERIFY and key not in self._verified:
            return self._load_verified(key)
        return np.load(arr, mmap_mode="r" if mmap else None, allow_pickle=False)

    def _load_verified(self, key: str) -> np.ndarray:
        arr, _ = self._paths(key)
        rerun = "rerun the sweep (or --resume it): the driver re-encodes bad or missing entries"
        try:
            data = arr.read_bytes()
        except FileNotFoundError:
            raise CorruptEntry(f"embedding cache entry {arr} is missing; {rerun}") from None
        expected = self._expected_sha(key)
        if expected is None:
            raise CorruptEntry(f"embedding cache entry {arr} has no readable .json sidecar; {rerun}")
        if hashlib.sha256(data).hexdigest() != expected:
            raise CorruptEntry(
                f"embedding cache entry {arr} is corrupt (SHA-256 differs from its sidecar); {rerun}"
            )
        self._verified.add(key)
        return np.load(io.BytesIO(data), allow_pickle=False)

    def put(self, key: str, embedding: np.ndarray, meta: dict) -> None:
        arr, meta_path = self._paths(key)
        atomic_save_npy(arr, embedding.astype(np.float16))
        record = dict(meta, sha256=file_sha256(arr), dtype="float16", shape=list(embedding.shape))
        atomic_write_bytes(meta_path, json.dumps(record, sort_keys=True).encode())
        self._verified.add(key)

    def precompute(
        self,
        sam: Sam,
        identity: ModelIdentity,
        images: Sequence[np.ndarray],
        image_hashes: Sequence[str],
        batch_size: int = 8,
        verify: bool = False,
        progress: bool = True,
        desc: str = "encoding",
    ) -> list[str]:
        """Keys for all images, running the encoder only on those not cached yet."""
        keys = [identity.key(h) for h in image_hashes]
        todo = sorted({k: i for i, k in enumerate(keys) if not self.has(k, verify)}.items())
        # an explicit disable=False would override the user's TQDM_DISABLE, so pass only True
        off = {"disable": True} if not progress or not todo else {}
        bar = tqdm(total=len(todo), desc=f"{desc} ({identity.name})", unit="img", **off)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s : s + batch_size]
            with torch.no_grad():
                emb = encode(
                    sam, [images[i] for _, i in chunk], batch_size=batch_size, precision=identity.precision
                )
            self.encoder_calls += len(chunk)
            for (key, i), e in zip(chunk, emb.cpu().numpy()):
                self.put(
                    key,
                    e,
                    {
                        "model": identity.name,
                        "checkpoint_sha": identity.checkpoint_sha,
                        "image_hash": image_hashes[i],
                        "preprocessing": identity.preprocessing,
                        "precision": identity.precision,
                    },
                )
            bar.update(len(chunk))
        bar.close()
        return keys
