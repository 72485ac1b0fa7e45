"""Fill the embedding cache once for the whole cluster, spread over its nodes (and GPUs).

The driver sends only the images that are not cached yet, in shards, to a pool of encoder actors;
each actor loads the model once and writes its entries straight into the shared cache (atomic
writes, so an interrupted precompute leaves only whole entries and a rerun does only the rest).
Trials then find every embedding on disk: never one encoder pass per trial or per node. On one
machine without GPUs the driver encodes in-process instead (the pool would only add overhead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import ray

from specialsam.finetune.cache import EmbeddingCache, ModelIdentity


@ray.remote
class EncoderActor:
    def __init__(
        self,
        model: str,
        checkpoint_dir: str | None,
        allow_unverified: bool,
        cache_root: str,
        threads: int = 1,
    ) -> None:
        import torch

        from specialsam.models.registry import load_model

        torch.set_num_threads(threads)
        self.sam, info = load_model(model, checkpoint_dir=checkpoint_dir, allow_unverified=allow_unverified)
        if torch.cuda.is_available():
            self.sam.to("cuda")
        self.cache = EmbeddingCache(cache_root)
        self.sha = info.sha256

    def encode(self, identity: ModelIdentity, images: list[np.ndarray], hashes: list[str]) -> tuple[int, str]:
        """Encode one shard into the shared cache; returns (images encoded, node id)."""
        if identity.checkpoint_sha != self.sha:
            raise RuntimeError(
                f"{identity.name} checkpoint differs on this node ({self.sha} != {identity.checkpoint_sha})"
            )
        before = self.cache.encoder_calls
        self.cache.precompute(self.sam, identity, images, hashes, progress=False)
        return self.cache.encoder_calls - before, ray.get_runtime_context().get_node_id()


def use_cluster_precompute() -> bool:
    """True when the cluster has more than one node or any GPU (a pool then pays off)."""
    if not ray.is_initialized():
        return False
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return len(nodes) > 1 or ray.cluster_resources().get("GPU", 0) > 0


def cluster_precompute(
    model: str,
    identity: ModelIdentity,
    cache: EmbeddingCache,
    images: Sequence[np.ndarray],
    hashes: Sequence[str],
    checkpoint_dir: str | None = None,
    allow_unverified: bool = False,
    shard: int = 64,
    max_actors: int | None = None,
    gpus_per_actor: float | None = None,
) -> dict[str, int]:
    """Encode the images missing from ``cache`` on a pool of actors; returns encoder calls per node."""
    from tqdm.auto import tqdm

    todo = sorted(
        {identity.key(h): i for i, h in enumerate(hashes) if not cache.has(identity.key(h))}.values()
    )
    if not todo:
        return {}
    gpus = ray.cluster_resources().get("GPU", 0)
    gpu_each = gpus_per_actor if gpus_per_actor is not None else (1.0 if gpus else 0.0)
    slots = int(gpus // gpu_each) if gpu_each else int(ray.cluster_resources().get("CPU", 1))
    n_actors = max(1, min(max_actors or slots, slots, (len(todo) + shard - 1) // shard))
    actors = [
        EncoderActor.options(num_cpus=1, num_gpus=gpu_each, scheduling_strategy="SPREAD").remote(
            model, checkpoint_dir, allow_unverified, str(cache.root)
        )
        for _ in range(n_actors)
    ]
    pool = ray.util.ActorPool(actors)
    shards = [todo[i : i + shard] for i in range(0, len(todo), shard)]
    calls: dict[str, int] = {}
    bar = tqdm(total=len(todo), desc=f"encoding on the cluster ({model})", unit="img")
    for idx, (n, node) in zip(
        shards,
        pool.map(
            lambda a, s: a.encode.remote(identity, [images[i] for i in s], [hashes[i] for i in s]), shards
        ),
    ):
        calls[node] = calls.get(node, 0) + n
        bar.update(len(idx))
    bar.close()
    for a in actors:
        ray.kill(a)
    return calls
