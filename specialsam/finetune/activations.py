"""Activations entering the first tuned encoder block: cached, so the frozen head runs once per image.

A LoRA or full trial tunes the encoder's last L blocks; what comes before them is frozen and would
compute the same activations every epoch. The driver runs that head once per image and stores its
output here, content-addressed like the embeddings (``finetune/cache.py``): an entry's key hashes
the image's *embedding* key (model, checkpoint SHA-256, image hash, preprocessing, encoder
precision) with the name of the first tuned step (``blocks.8``: the block index), so a trial
derives every key from its pack's embedding keys without seeing an image. Entries are float16
``.npy`` files with a JSON sidecar carrying their SHA-256, written atomically, checked on first read.

Where the cache would be too large (``activation_bytes`` x images over a budget: vit_h's
64x64x1280 activations take 10.5 MB per image), ``choose_feed`` says so and trials run the frozen
head themselves under ``no_grad`` (:class:`FrozenHead`): the same numbers without the fp16 rounding,
at the head's cost every step. benchmarks/methods.py measures both against the whole encoder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam

from specialsam.finetune.cache import EmbeddingCache, ModelIdentity
from specialsam.finetune.methods import MethodPlan, MethodSettings, prepare_method, validate_method
from specialsam.models.inference import preprocess
from specialsam.tasks.base import ImageSource, Sample

ACTIVATION_VERSION = "act/v1"
DEFAULT_BUDGET_BYTES = 32 * 2**30
"""Largest activation cache ``choose_feed`` accepts before it falls back to running the head."""


def activation_key(embedding_key: str, start_name: str) -> str:
    """Key of the activations entering step ``start_name`` for the image of ``embedding_key``."""
    h = hashlib.sha256(f"{embedding_key}|{ACTIVATION_VERSION}|{start_name}".encode())
    return h.hexdigest()[:40]


class ActivationCache(EmbeddingCache):
    """``<root>/activations/<key[:2]>/<key>.npy`` + ``.json``: the embedding cache's format and checks."""

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / "activations" / key[:2]
        return d / f"{key}.npy", d / f"{key}.json"


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def head_activations(
    sam: Sam, plan: MethodPlan, images: Sequence[np.ndarray], precision: str = "fp32"
) -> torch.Tensor:
    """The frozen head's output for ``images`` (float32), as the encoder computes it in ``precision``."""
    device = next(sam.parameters()).device
    x = torch.stack([preprocess(sam, im) for im in images]).to(device)
    with _autocast(device, precision):
        return plan.head(x).float()


def precompute_activations(
    cache: ActivationCache,
    sam: Sam,
    plan: MethodPlan,
    identity: ModelIdentity,
    images: Sequence[np.ndarray],
    image_hashes: Sequence[str],
    batch_size: int = 4,
) -> list[str]:
    """Keys for all images, running the head only on those not cached yet (the driver's job)."""
    keys = [activation_key(identity.key(h), plan.start_name) for h in image_hashes]
    todo = sorted({k: i for i, k in enumerate(keys) if not cache.has(k)}.items())
    for s in range(0, len(todo), batch_size):
        chunk = todo[s : s + batch_size]
        acts = head_activations(sam, plan, [images[i] for _, i in chunk], identity.precision)
        cache.encoder_calls += len(chunk)
        for (key, i), a in zip(chunk, acts.cpu().numpy()):
            meta = dict(identity.record(), image_hash=image_hashes[i], start=plan.start_name)
            cache.put(key, a, meta)
    return keys


def activation_shape(plan: MethodPlan, side: int) -> tuple[int, ...]:
    """Shape of one image's activations entering the tail, from the first tuned block's layout."""
    step = plan.steps[plan.start]
    (blk,) = step.owns
    if plan.family == "sam_vit":
        return (side // 16, side // 16, blk.attn.qkv.in_features)
    if plan.family == "tiny_vit":
        h, w = blk.input_resolution
        return (h * w, blk.dim)
    s = side // 16  # tiny: residual blocks see (C, s, s), attention blocks (s*s, C) tokens
    if hasattr(blk, "attn"):
        return (s * s, blk.attn.embed_dim)
    return (blk.conv2.out_channels, s, s)


def activation_bytes(plan: MethodPlan, side: int) -> int:
    """Cache bytes per image (float16), without the few hundred bytes of its sidecar."""
    return 2 * int(np.prod(activation_shape(plan, side)))


@dataclass(frozen=True)
class Feed:
    """How a trial gets the tail's input: ``cache`` or ``frozen`` (the head under no_grad)."""

    mode: str
    bytes_per_image: int
    total_bytes: int
    budget_bytes: int

    def describe(self) -> str:
        gb = self.total_bytes / 2**30
        if self.mode == "cache":
            return f"activation cache {gb:.2f} GiB ({self.bytes_per_image / 2**20:.2f} MiB per image)"
        return (
            f"activation cache would take {gb:.1f} GiB (> {self.budget_bytes / 2**30:.0f} GiB budget): "
            "the frozen encoder blocks run under no_grad in every step instead"
        )


def choose_feed(plan: MethodPlan, side: int, n_images: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Feed:
    """Cache the activations when all ``n_images`` fit the budget, else run the head in the trial."""
    per = activation_bytes(plan, side)
    total = per * n_images
    return Feed("cache" if total <= budget_bytes else "frozen", per, total, budget_bytes)


class CachedActivations:
    """A split's activations from the cache, keyed by its pack's embedding keys."""

    def __init__(self, cache: ActivationCache, start_name: str) -> None:
        self.cache, self.start_name = cache, start_name

    def __call__(self, emb_keys: Sequence[str]) -> torch.Tensor:
        arrs = [self.cache.load(activation_key(k, self.start_name)) for k in emb_keys]
        return torch.from_numpy(np.stack(arrs).astype(np.float32))


class FrozenHead:
    """A split's activations computed now: images (looked up by embedding key) -> head, no_grad.

    The fallback when the cache would be too large, and the naive baseline of the benchmark
    (the whole encoder runs every step, the frozen part without gradients)."""

    def __init__(
        self, sam: Sam, plan: MethodPlan, image_of: Callable[[str], np.ndarray], precision: str = "fp32"
    ) -> None:
        self.sam, self.plan, self.image_of, self.precision = sam, plan, image_of, precision

    def __call__(self, emb_keys: Sequence[str]) -> torch.Tensor:
        acts = head_activations(self.sam, self.plan, [self.image_of(k) for k in emb_keys], self.precision)
        return acts.cpu()


def head_plan(sam: Sam, model: str, blocks: int | None) -> MethodPlan:
    """Where lora and full (same L) split the encoder: the plan of ``full``, whose head is what the
    activation cache stores. Only ``requires_grad`` flags change (the caller's model is not wrapped)."""
    plan = prepare_method(sam, model, MethodSettings("full", blocks=blocks))
    for p in sam.parameters():
        p.requires_grad_(False)
    return plan


def skeleton_model(model: str) -> Sam:
    """``model``'s architecture without its weights, to plan with: SAM ViTs built on the meta
    device (no memory), the tiny models and vit_t randomly initialised (small)."""
    from specialsam.models.registry import get_spec, random_model

    if get_spec(model).family == "sam":
        from segment_anything import sam_model_registry

        with torch.device("meta"):
            return sam_model_registry[model](checkpoint=None)
    return random_model(model)


def encoder_feed(
    sam: Sam, model: str, blocks: int | None, n_images: int, budget_bytes: int = DEFAULT_BUDGET_BYTES
) -> tuple[MethodPlan, Feed]:
    """Where ``model``'s lora / full arms split the encoder (``head_plan``) and how their trials get
    the tail's input for ``n_images`` images: what the sweep does and ``--plan`` reports."""
    from specialsam.models.inference import model_side

    plan = head_plan(sam, model, blocks)
    return plan, choose_feed(plan, model_side(sam), n_images, budget_bytes)


def plan_feed(model: str, s: MethodSettings, n_images: int, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Feed:
    """``encoder_feed`` without weights (``skeleton_model``); ``s`` validated first."""
    validate_method(model, s)
    return encoder_feed(skeleton_model(model), model, s.blocks, n_images, budget_bytes)[1]


class ImageLookup:
    """Embedding key -> the image's pixels, for :class:`FrozenHead` in a trial's process.

    Holds each image's ``ImageSource`` (a file loader for real datasets, so it travels to Ray
    workers as paths, not pixels); built by the driver only when a method falls back to the
    frozen head."""

    def __init__(self, sources: dict[str, ImageSource]) -> None:
        self.sources = sources

    def __call__(self, key: str) -> np.ndarray:
        return self.sources[key].pixels()


def split_images(
    splits: dict[str, Sequence[Sample]], identity: ModelIdentity
) -> tuple[list[ImageSource], list[str], list[str]]:
    """The distinct images of a pack's splits: their sources, content hashes and embedding keys."""
    seen: dict[str, ImageSource] = {}
    for samples in splits.values():
        for s in samples:
            seen.setdefault(s.image_hash(), s.source)
    hashes = list(seen)
    return list(seen.values()), hashes, [identity.key(h) for h in hashes]


class _Pixels(Sequence[np.ndarray]):
    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i):  # type: ignore[override]
        return self.sources[i].pixels()


def fill_activations(
    cache: ActivationCache,
    sam: Sam,
    plan: MethodPlan,
    identity: ModelIdentity,
    splits: dict[str, Sequence[Sample]],
    batch_size: int = 4,
) -> int:
    """Cache the frozen head's output for every image of a pack's splits; returns how many ran."""
    sources, hashes, _keys = split_images(splits, identity)
    before = cache.encoder_calls
    precompute_activations(cache, sam, plan, identity, _Pixels(sources), hashes, batch_size)
    return cache.encoder_calls - before
