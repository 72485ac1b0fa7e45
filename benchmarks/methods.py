"""Samples/s of one training step per fine-tuning method and model: cached activations vs the naive way.

    .venv/bin/python benchmarks/methods.py                 # tiny-s, tiny-m, vit_t (minutes on CPU)
    .venv/bin/python benchmarks/methods.py --quick         # tiny-s, tiny-m, short repeats
    .venv/bin/python benchmarks/methods.py --models tiny-s,tiny-m,vit_t,vit_b --json methods.json

(A SAM ViT's variants are timed one (cached, naive) pair at a time, so vit_b fits a 23 GB machine.)

Variants, per model (random-init weights: speed does not depend on the weights), each one optimizer
step on a batch of B different images (one point prompt each, 256-px loss), AdamW over what the
method trains, gradient clipping, as ``finetune/train.py`` / ``finetune/encoder_train.py`` do:

- **decoder / cached**: today's step (``train.accumulate_gradients``) on cached fp16 embeddings.
- **lora / full, cached**: activations entering the first tuned block read from the activation
  cache (fp16 ``.npy``, ``finetune/activations.py``), the tuned tail (blocks + neck) with
  gradients, the decoder, the loss (``encoder_train.encoder_step_gradients``).
- **lora / full, naive**: the whole encoder every step: preprocessing and the frozen blocks under
  ``no_grad`` (``FrozenHead``: also the fallback when the cache would be too large), then the same.

Also per variant: cache bytes per image (embeddings for decoder, activations for lora/full) and
trainable parameters. LoRA: rank 4 on q and v (SAMed). L: all blocks of the tiny models; the last
2 of vit_t / vit_b (``--blocks`` overrides). The machine is shared: read ratios, not absolutes, and
check the printed load average.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, markdown_table, median, run_and_save, time_repeats

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune.activations import (
    ActivationCache,
    CachedActivations,
    FrozenHead,
    activation_bytes,
    precompute_activations,
)
from specialsam.finetune.cache import EmbeddingCache, ModelIdentity
from specialsam.finetune.encoder_train import encoder_step_gradients
from specialsam.finetune.methods import MethodSettings, prepare_method
from specialsam.finetune.train import (
    TrainConfig,
    _Batch,
    accumulate_gradients,
    decoder_optimizer,
    micro_batch_size,
)
from specialsam.models.inference import model_side
from specialsam.models.registry import random_model

RES = 256
DEFAULT_MODELS = {"smoke": ["tiny-s"], "quick": ["tiny-s", "tiny-m"], "full": ["tiny-s", "tiny-m", "vit_t"]}


def _images(n: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(n)]


def _batch(n: int, side: int) -> _Batch:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(RES), torch.arange(RES), indexing="ij")
    target = (((yy - RES / 2) ** 2 + (xx - RES / 2) ** 2) < (RES / 5) ** 2).float().expand(n, -1, -1)
    return _Batch(
        idx=list(range(n)),
        coords=(torch.full((n, 2, 2), side / 2.0) + torch.randn(n, 2, 2, generator=g)),
        labels=torch.tensor([[1, -1]] * n),
        target=target.contiguous(),
        emb=torch.zeros(n),
        valid=torch.ones(n, RES, RES),
    )


class Variant:
    """One (model, method, feed) step, ready to time."""

    def __init__(
        self, name: str, method: str, feed: str, blocks: int | None, batch: int, n_images: int, dev, root
    ):
        self.sam = random_model(name, seed=0)
        self.settings = MethodSettings(method, blocks=blocks if method != "decoder" else None)
        self.plan = prepare_method(self.sam, name, self.settings)
        self.sam.to(dev.device).eval()
        self.dev, self.feed, self.n = dev, feed, batch
        side = model_side(self.sam)
        imgs = _images(n_images, side)
        hashes = [f"img{i}" for i in range(n_images)]
        identity = ModelIdentity(name, "random-init-0", f"bench/side={side}", "fp32")
        self.keys = [identity.key(h) for h in hashes]
        self.cfg = TrainConfig(batch_size=batch)
        self.micro = micro_batch_size(0, self.sam.prompt_encoder.image_embedding_size[0], dev)
        self.opt = decoder_optimizer(self.plan.params, self.cfg, dev.device)
        self.batch = _batch(batch, side)
        self.step_i = 0
        if method == "decoder":
            cache = EmbeddingCache(root)
            cache.precompute(self.sam, identity, imgs, hashes, progress=False)
            self.read = lambda keys: torch.from_numpy(
                np.stack([cache.load(k) for k in keys]).astype(np.float32)
            )
            self.cache_bytes = cache.load(self.keys[0]).nbytes
        else:
            acache = ActivationCache(root)
            if feed == "cached":
                precompute_activations(acache, self.sam, self.plan, identity, imgs, hashes)
                self.read = CachedActivations(acache, self.plan.start_name)
            else:
                self.read = FrozenHead(self.sam, self.plan, dict(zip(self.keys, imgs)).__getitem__)
            self.cache_bytes = activation_bytes(self.plan, side)
        self.trainable = sum(p.numel() for p in self.plan.params)

    def step(self) -> int:
        s = self.step_i % max(1, len(self.keys) - self.n + 1)
        self.step_i += self.n
        x = self.read(self.keys[s : s + self.n])
        self.opt.zero_grad(set_to_none=True)
        b = self.batch
        if self.settings.method == "decoder":
            loss = accumulate_gradients(
                self.sam, x, b.coords, b.labels, b.target, b.valid, self.cfg, self.dev, RES, self.micro
            )
        else:
            loss = encoder_step_gradients(self.sam, self.plan, x, b, self.cfg, self.dev, RES, self.micro)
        torch.nn.utils.clip_grad_norm_(self.plan.params, 1.0)
        self.opt.step()
        float(loss)
        return self.n


def _variants(name: str, blocks: int | None) -> list[tuple[str, str, int | None]]:
    """(method, feed, L) of one model: decoder, then lora and full, each cached and naive."""
    L = blocks if blocks is not None else (2 if name.startswith("vit") else None)
    return [("decoder", "cached", None)] + [(m, f, L) for m in ("lora", "full") for f in ("cached", "naive")]


def _row(name: str, v: Variant, method: str, feed: str, L, rates: list[float]) -> dict:
    return {
        "model": name,
        "method": method,
        "feed": feed,
        "blocks": "-" if method == "decoder" else "all" if L is None else L,
        "batch": v.n,
        "precision": v.dev.precision,
        "samples_per_s": median(rates),
        "repeats": rates,
        "cache_bytes_per_image": v.cache_bytes,
        "trainable_params": v.trainable,
    }


def _groups(specs: list, big: bool) -> list[list]:
    """Variants alive at once: all of a tiny model; for a SAM ViT one (cached, naive) pair at a time
    (five vit_b models with their steps' saved attention maps do not fit 23 GB of RAM)."""
    if not big:
        return [specs]
    return [[s for s in specs if s[0] == m] for m in ("decoder", "lora", "full")]


def _time_group(vs: list[Variant], dev, warm: int, reps: int, secs: float) -> list[list[float]]:
    """Timed repeats of variants interleaved (repeat r of every variant, then r + 1), so that load
    from other jobs hits them alike and their ratios stay comparable."""
    rates: list[list[float]] = [[] for _ in vs]
    for v in vs:
        time_repeats(v.step, dev.device, warm, 0, 0.0)
    for _ in range(reps):
        for v, r in zip(vs, rates):
            r += time_repeats(v.step, dev.device, 0, 1, secs)
    return rates


def _time_model(name: str, args, mode: str, base_dev: DeviceChoice, root: Path) -> list[dict]:
    """All variants of one model; cached / naive is the median of per-repeat ratios of a pair."""
    import gc

    big = name.startswith("vit")
    warm, reps, secs = {"smoke": (1, 1, 0.0), "quick": (1, 2, 2.0), "full": (1, 5, 4.0)}[mode]
    if big:
        warm, reps, secs = (0 if mode == "smoke" else 1), (1 if mode == "smoke" else 3), 0.0
    batch = args.batch or (1 if big else 2 if mode == "smoke" else 8)
    dev = base_dev.for_decoder(256 if big else 64)
    rows, rates = [], []
    for group in _groups(_variants(name, args.blocks), big):
        vs = [Variant(name, m, f, L, batch, max(2 * batch, 4), dev, root / f"{m}-{f}") for m, f, L in group]
        got = _time_group(vs, dev, warm, reps, secs)
        rows += [_row(name, v, m, f, L, r) for v, (m, f, L), r in zip(vs, group, got)]
        rates += got
        del vs
        gc.collect()
    for row, r in zip(rows, rates):
        naive = [rates[i] for i, x in enumerate(rows) if (x["method"], x["feed"]) == (row["method"], "naive")]
        row["cached_vs_naive"] = (
            median([a / b for a, b in zip(r, naive[0])]) if naive and row["feed"] == "cached" else None
        )
        print(f"  {name} {row['method']} {row['feed']}: {row['samples_per_s']:.2f} samples/s", flush=True)
    return rows


def _cells(r: dict) -> list[str]:
    ratio = "" if r["cached_vs_naive"] is None else f"{r['cached_vs_naive']:.2f}x"
    plain = [r["model"], r["method"], str(r["blocks"]), r["feed"], str(r["batch"]), r["precision"]]
    return plain + [
        f"{r['samples_per_s']:.2f}",
        ratio,
        f"{r['cache_bytes_per_image']:,}",
        f"{r['trainable_params']:,}",
    ]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    models = args.models.split(",") if args.models else DEFAULT_MODELS[mode]
    base_dev: DeviceChoice = select_device(args.device, args.precision)
    info = machine_info(base_dev.device)
    print(f"# methods benchmark ({mode}); {info}", flush=True)
    rows = []
    for name in models:
        with tempfile.TemporaryDirectory() as root:
            rows += _time_model(name, args, mode, base_dev, Path(root))
    header = [
        "model",
        "method",
        "L",
        "feed",
        "batch",
        "precision",
        "samples/s",
        "cached / naive",
        "cache bytes / image",
        "trainable params",
    ]
    table = [_cells(r) for r in rows]
    print(markdown_table(header, table))
    return {"mode": mode, "machine": info, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-s, tiny-m, short repeats")
    ap.add_argument("--smoke", action="store_true", help="tiny-s, one short repeat (tests)")
    ap.add_argument("--models", help="comma-separated (default tiny-s,tiny-m,vit_t)")
    ap.add_argument("--blocks", type=int, help="L, tuned blocks (default: all for tiny, 2 for vit_*)")
    ap.add_argument("--batch", type=int, help="images per step (default 8 tiny, 1 vit_*)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    return run_and_save(ap.parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
