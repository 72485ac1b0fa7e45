"""``--plan``: what a sweep will cost, before anything runs.

Counts trials per phase, encoder passes still to do (checked against the cache, so a second
identical sweep plans zero), the cache's size on disk, and a rough compute estimate from
throughput figures measured in benchmarks/README.md (samples/s of decoder training and images/s
of the encoder, per model family and device). The estimate is an upper bound for phase A: ASHA
stops part of its trials early.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from specialsam.finetune.cache import embedding_bytes
from specialsam.finetune.pack import model_identity

if TYPE_CHECKING:
    from specialsam.config import SweepConfig
    from specialsam.finetune.cache import EmbeddingCache

# Measured on this project's reference 2-core CPU machine, one torch thread per trial
# (benchmarks/README.md, 2026-11-22): tiny, a whole trial's training incl. per-epoch validation
# (200 steps of 16 in ~40 s in the default sweep; the bare step does ~100-116/s); sam, vit_b's
# step in bf16 with chunks of 4 on an AMX CPU (3.1/s; 2.2/s in fp32). GPU figures are rough
# guesses until measured on one.
TRAIN_SAMPLES_PER_S = {"tiny": {"cpu": 80.0, "cuda": 3000.0}, "sam": {"cpu": 3.0, "cuda": 600.0}}
ENCODE_IMAGES_PER_S = {
    "tiny-s": {"cpu": 80.0, "cuda": 2000.0},  # the default sweep's precompute: 81 img/s
    "tiny-m": {"cpu": 59.0, "cuda": 1500.0},  # 59 img/s (both cores)
    # SAM-sized encoders in bf16 on an AMX CPU, one thread: vit_t 0.42, vit_b 0.069 img/s (fp32:
    # 0.35 / 0.041); x1.7 for the driver's two threads; vit_l / vit_h scaled by their FLOPs
    "vit_t": {"cpu": 0.7, "cuda": 80.0},
    "vit_b": {"cpu": 0.12, "cuda": 25.0},
    "vit_l": {"cpu": 0.045, "cuda": 10.0},
    "vit_h": {"cpu": 0.024, "cuda": 6.0},
}
METHOD_STEP_COST = {"decoder": 1.0, "lora": 3.0, "full": 4.5}
"""Seconds per training sample relative to decoder-only, from cached activations (benchmarks/README.md,
``methods.py``: tiny 2.1-3.5x for lora and 2.6-6.1x for full, vit_t about 2.2-2.5x)."""


def family(model: str) -> str:
    return "tiny" if model.startswith("tiny") else "sam"


def trial_samples(n_train: int, epochs: int, max_steps: int, batch: int, flip: bool) -> int:
    n = n_train * (2 if flip else 1)
    total = n * epochs
    return min(total, max_steps * batch) if max_steps else total


@dataclass
class ModelPlan:
    model: str
    images: int
    to_encode: int
    cache_bytes: int
    train_samples: int
    encode_seconds: float
    train_seconds: float


@dataclass
class MethodPlanLine:
    """A lora / full arm: how its trials get the tuned blocks' input, and at what cache size."""

    arm: str
    trainable_params: int
    feed: str  # activations.Feed.describe()


@dataclass
class Plan:
    phase_a_trials: int
    phase_b_trials: int
    models: list[ModelPlan] = field(default_factory=list)
    parallel: float = 1.0
    device: str = "cpu"
    methods: list[MethodPlanLine] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        enc = sum(m.encode_seconds for m in self.models)
        return enc + sum(m.train_seconds for m in self.models) / max(self.parallel, 1.0)

    def format(self) -> str:
        rows = [
            f"trials: phase A (tune) {self.phase_a_trials}, phase B (learning curve) {self.phase_b_trials}, "
            f"total {self.phase_a_trials + self.phase_b_trials}",
            f"{'model':<8} {'images':>8} {'to encode':>10} {'cache':>10} {'train samples':>14} "
            f"{'est. time':>10}",
        ]
        for m in self.models:
            rows.append(
                f"{m.model:<8} {m.images:>8} {m.to_encode:>10} {_size(m.cache_bytes):>10} "
                f"{m.train_samples:>14,} {_duration(m.encode_seconds + m.train_seconds / self.parallel):>10}"
            )
        rows += [f"{m.arm}: {m.trainable_params:,} trainable parameters; {m.feed}" for m in self.methods]
        rows.append(
            f"encoder passes still to run: {sum(m.to_encode for m in self.models)}; cache on disk: "
            f"{_size(sum(m.cache_bytes for m in self.models))}; estimated compute: "
            f"~{_duration(self.total_seconds)} on {self.device} with {self.parallel:g} trials at a time "
            "(rough; phase A is an upper bound because ASHA stops trials early)"
        )
        return "\n".join(rows)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PB"


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def make_plan(cfg: SweepConfig, task, models, cache: EmbeddingCache, parallel: float, device: str) -> Plan:
    """The plan of ``cfg`` on ``task`` with ``models``; images already in ``cache`` cost nothing."""
    train = cfg.train
    plan = Plan(
        phase_a_trials=cfg.search.num_samples * len(cfg.arms()),
        phase_b_trials=len(cfg.curve.n_train) * len(cfg.curve.seeds) * len(cfg.arms()),
        parallel=parallel,
        device=device,
    )
    extras = [x for v in getattr(task, "extra_tests", {}).values() for x in v]
    samples = list(task.train) + list(task.val) + list(task.test) + extras
    n_ret = cfg.eval.retention_n
    hashes = {s.image_hash() for s in samples}  # instances of one image share its encoder pass
    flips = len({s.image_hash() for s in task.train}) * int(cfg.train.flip)
    for name, (sam, info) in models.items():
        ident = model_identity(sam, name, info.sha256)
        todo = sum(not cache.has(ident.key(h)) for h in hashes)
        images = len(hashes) + flips + n_ret
        todo += flips + n_ret  # flips/retention: counted, not checked
        fam = family(name)
        per_trial_a = trial_samples(
            cfg.search.n_train, train.epochs, train.max_steps, train.batch_size, train.flip
        )
        total = cfg.search.num_samples * per_trial_a + sum(
            len(cfg.curve.seeds)
            * trial_samples(n, train.epochs, train.max_steps, train.batch_size, train.flip)
            for n in cfg.curve.n_train
        )
        total = int(total * sum(METHOD_STEP_COST[m] for m in cfg.methods))
        lines, activation_bytes = _method_lines(cfg, name, sam, images)
        plan.methods += lines
        res = train.loss_res or (256 if fam == "tiny" else 1024)
        plan.models.append(
            ModelPlan(
                model=name,
                images=images,
                to_encode=todo,
                cache_bytes=images * embedding_bytes(sam) + len(samples) * res * res + activation_bytes,
                train_samples=total,
                encode_seconds=todo / ENCODE_IMAGES_PER_S[name][device],
                train_seconds=total / TRAIN_SAMPLES_PER_S[fam][device],
            )
        )
    return plan


def _method_lines(cfg: SweepConfig, model: str, sam, images: int) -> tuple[list[MethodPlanLine], int]:
    """``model``'s lora / full arms (trainable parameters, activation cache or its fallback) and
    the cache's bytes (lora and full share it: same L)."""
    from specialsam.arms import arm_name
    from specialsam.finetune.activations import encoder_feed, skeleton_model
    from specialsam.finetune.methods import count_params, prepare_method

    arms = [arm_name(model, m) for m in cfg.methods if m != "decoder"]
    if not arms:
        return [], 0
    _, feed = encoder_feed(sam, model, cfg.method.blocks, images, cfg.activation_budget())
    out = []
    for arm in arms:  # counted on a weightless copy: adapters never touch the loaded model
        tuned = prepare_method(skeleton_model(model), model, cfg.method_settings(arm))
        out.append(MethodPlanLine(arm, count_params(tuned), feed.describe()))
    return out, feed.total_bytes if feed.mode == "cache" else 0
