"""``python -m specialsam.calibrate``: how often is each verdict wrong? Simulated sweeps, known truths.

Each replicate builds a whole sweep's results (zero-shot baselines and fine-tuned trials, per-image
IoU on one shared test set) from a *planted* truth, and runs the real verdict code on it
(``analysis.baseline_rule.baseline_rule`` and ``analysis.data_rule.data_rule``). Counting the
verdicts over replicates gives, for each rule and truth, the share of "supported", "contradicted"
and "inconclusive": the power of the right verdict and the rate of the wrong one.

**Generative model** (parametric, the numbers of the default carpet sweep; every one is a flag):
per image i, zero-shot IoU b_i ~ Beta (mean the cell's baseline mIoU, concentration 3, recentred so
the cell's mean is exact); fine-tuned at size n, seed s:
``b_i + g(n) + h_i(n) + u_(n,s) + e_(i,n,s)`` with g(n) the planted gain curve, h_i(n) the image's own
benefit from fine-tuning (sd ``image_sd``; correlation ``image_corr`` between two sizes, since the
same images stay easy or hard), u a seed shift (sd ``seed_sd``) and e per-trial image noise (sd
``noise_sd``). Defaults: 89 test images (MVTec carpet's defect images), 3 seeds, grid
125/500/2,000/8,000, baselines 0.37-0.45 (carpet's center/box/random3 baselines), image_sd 0.08 (a
+0.048 gain then has a 95% CI about +-0.018, as on carpet), noise_sd 0.04 and seed_sd 0.004
(seed-to-seed sd of mIoU ~0.006). IoU values are not clipped to [0, 1], so the planted gain is the
exact expected gain. ``image_corr`` (0.9) is the least known number: it sets how well two sizes
can be told apart and so the data rule's power; a real sweep's per-image records would pin it.

Layering: analysis only; no Ray, no MLflow, no files.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from specialsam.analysis.baseline_rule import baseline_rule
from specialsam.analysis.data_rule import data_rule
from specialsam.analysis.results import CONTRADICTED, INCONCLUSIVE, SUPPORTED, BaselineResult, TrialResult

CARPET_BASELINES = (0.381, 0.448, 0.374, 0.392, 0.454, 0.397)
"""Zero-shot mIoU of the default carpet sweep's 6 cells (tiny-s, tiny-m x center, box, random3)."""
ABOVE_BASELINES = (0.80, 0.86, 0.79, 0.81, 0.87, 0.82)
"""The same spread moved above the 0.75 threshold."""
PROMPTS = ("center", "box", "random3")


@dataclass(frozen=True)
class Design:
    """The sweep design and noise levels simulated (defaults: the shipped carpet sweep)."""

    test_images: int = 89
    seeds: int = 3
    grid: tuple[int, ...] = (125, 500, 2000, 8000)
    claimed_n: int = 5000
    threshold: float = 0.75
    margin: float = 0.01
    models: int = 2
    image_sd: float = 0.08
    image_corr: float = 0.9
    noise_sd: float = 0.04
    seed_sd: float = 0.004

    def describe(self) -> str:
        return (
            f"{self.models} models x {len(PROMPTS)} prompts, {self.test_images} test images, "
            f"{self.seeds} seeds, grid {'/'.join(f'{n:,}' for n in self.grid)}, claimed n "
            f"{self.claimed_n:,}, threshold {self.threshold:g}, margin {self.margin:g}; "
            f"image_sd {self.image_sd:g}, image_corr {self.image_corr:g}, noise_sd {self.noise_sd:g}, "
            f"seed_sd {self.seed_sd:g}"
        )


@dataclass(frozen=True)
class Truth:
    """A planted truth: the gain curve g(n) of every cell, and which verdict is right."""

    rule: str  # "baseline" | "data"
    name: str
    gain: Callable[[float], float]
    baselines: tuple[float, ...] = CARPET_BASELINES
    right: str | None = None  # baseline rule: the verdict the truth calls for; data rule: from the curve

    def right_verdict(self, d: Design) -> str:
        """The verdict the planted truth calls for (inconclusive: neither verdict is right).

        Data rule, judged on the true curve with the design's margin: contradicted when some size
        below the claim has a gain and lies within the margin of the best size at or above it;
        supported when that best size has a gain and every smaller size falls short of it by more
        than the margin."""
        if self.right is not None:
            return self.right
        ref = max((n for n in d.grid if n >= d.claimed_n), key=self.gain, default=None)
        small = [n for n in d.grid if n < d.claimed_n]
        if ref is None or not small or self.gain(ref) <= 0:
            return INCONCLUSIVE
        gap = {n: self.gain(ref) - self.gain(n) for n in small}
        if any(self.gain(n) > 0 and abs(gap[n]) < d.margin for n in small):
            return CONTRADICTED
        if all(gap[n] > d.margin for n in small):
            return SUPPORTED
        return INCONCLUSIVE


def _saturating(total: float, tau: float) -> Callable[[float], float]:
    return lambda n: total * (1.0 - math.exp(-n / tau))


def truths(threshold: float = 0.75) -> list[Truth]:
    """Gains none / small / large on both sides of the threshold; learning curves that plateau by
    125 or 500, that still rise past 5,000, and none at all."""
    out = []
    for side, bases in (("below", CARPET_BASELINES), ("above", ABOVE_BASELINES)):
        for size, g in (("no gain", 0.0), ("small gain +0.01", 0.01), ("large gain +0.05", 0.05)):
            holds = (side == "below") == (g > 0)  # the rule: a gain below the threshold, none above
            right = SUPPORTED if holds else CONTRADICTED
            out.append(
                Truth("baseline", f"{size}, baselines {side} {threshold:g}", lambda n, g=g: g, bases, right)
            )
    curves = (
        ("plateau by n = 125 (+0.042 at 125, +0.048 at 8,000)", 0.048, 60.0),
        ("plateau by n = 500 (+0.046 at 500, +0.048 at 8,000)", 0.048, 167.0),
        ("small plateau by n = 500 (+0.014 at 500, +0.015 at 8,000)", 0.015, 167.0),
        ("still rising past 5,000 (+0.031 at 2,000, +0.069 at 8,000)", 0.08, 4000.0),
        ("still rising, modest (+0.012 at 2,000, +0.026 at 8,000)", 0.03, 4000.0),
        ("no gain at any n", 0.0, 1000.0),
    )
    out += [Truth("data", name, _saturating(total, tau)) for name, total, tau in curves]
    return out


def _baseline_images(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    k = 3.0
    draw = rng.beta(mean * k, (1.0 - mean) * k, n)
    return draw - draw.mean() + mean


def _image_benefit(rng: np.random.Generator, d: Design, sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """h_i(n): a shared part (correlation image_corr between sizes) plus a size-specific one."""
    shared = rng.normal(0.0, d.image_sd, d.test_images)
    own = math.sqrt(max(0.0, 1.0 - d.image_corr))
    return {
        n: math.sqrt(d.image_corr) * shared + own * rng.normal(0.0, d.image_sd, d.test_images) for n in sizes
    }


def simulate_sweep(truth: Truth, d: Design, rng: np.random.Generator) -> tuple[list, list]:
    """One sweep's baselines and curve-phase trials under ``truth`` (baseline rule: largest n only)."""
    sizes = list(d.grid) if truth.rule == "data" else [max(d.grid)]
    prompts = PROMPTS if truth.rule == "baseline" else PROMPTS[:1]
    baselines: list[BaselineResult] = []
    trials: list[TrialResult] = []
    for m in range(d.models):
        model = f"sim-{m}"
        base, benefit = {}, {}
        for k, prompt in enumerate(prompts):
            level = truth.baselines[(m * len(PROMPTS) + k) % len(truth.baselines)]
            base[prompt] = _baseline_images(rng, level, d.test_images)
            benefit[prompt] = _image_benefit(rng, d, sizes)
            baselines.append(BaselineResult(model, prompt, base[prompt]))
        for n in sizes:
            for s in range(d.seeds):
                shift = rng.normal(0.0, d.seed_sd)
                iou = {
                    p: base[p]
                    + truth.gain(n)
                    + benefit[p][n]
                    + shift
                    + rng.normal(0.0, d.noise_sd, d.test_images)
                    for p in prompts
                }
                val = 0.5 + truth.gain(n) + shift + rng.normal(0.0, 0.002)
                trials.append(TrialResult(f"{model}-{n}-{s}", model, n, s, {"lr": 3e-4}, iou, val, "curve"))
    return baselines, trials


def verdict_of(truth: Truth, d: Design, baselines: list, trials: list, n_boot: int, seed: int) -> str:
    """The real verdict code on one simulated sweep."""
    if truth.rule == "baseline":
        return baseline_rule(baselines, trials, d.threshold, "center", n_boot, seed).verdict
    report = data_rule(baselines, trials, "center", d.claimed_n, n_boot, 1, seed, d.margin)
    return report.verdict


@dataclass
class Row:
    truth: Truth
    right: str  # the verdict the truth calls for under the design (inconclusive: neither)
    counts: Counter
    reps: int

    def share(self, verdict: str) -> float:
        return self.counts[verdict] / self.reps

    @property
    def wrong(self) -> float:
        """Share of decisive verdicts the truth does not call for."""
        return sum(c for v, c in self.counts.items() if v not in (INCONCLUSIVE, self.right)) / self.reps

    @property
    def power(self) -> float | None:
        return None if self.right == INCONCLUSIVE else self.share(self.right)


def calibrate(
    design: Design, reps: int, n_boot: int = 400, seed: int = 0, only: Sequence[Truth] | None = None
) -> list[Row]:
    """Verdict counts per truth over ``reps`` simulated sweeps each (deterministic under ``seed``)."""
    rows = []
    for t_idx, truth in enumerate(only if only is not None else truths(design.threshold)):
        counts: Counter = Counter()
        for r in range(reps):
            rng = np.random.default_rng([seed, t_idx, r])
            baselines, trials = simulate_sweep(truth, design, rng)
            counts[verdict_of(truth, design, baselines, trials, n_boot, seed * 100_003 + r)] += 1
        rows.append(Row(truth, truth.right_verdict(design), counts, reps))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Markdown: per rule and truth, the share of each verdict, the right one's power, the wrong rate."""
    out = [
        "| rule | planted truth | right verdict | supported | contradicted | inconclusive | power | wrong |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        power = "-" if r.power is None else f"{r.power:.0%}"
        right = r.right if r.right != INCONCLUSIVE else "neither"
        out.append(
            f"| {r.truth.rule} | {r.truth.name} | {right} | "
            f"{r.share(SUPPORTED):.0%} | {r.share(CONTRADICTED):.0%} | {r.share(INCONCLUSIVE):.0%} | "
            f"{power} | **{r.wrong:.0%}** |"
        )
    return "\n".join(out)


def worst_wrong(rows: Sequence[Row]) -> dict[str, float]:
    """Per rule, the highest wrong-verdict rate over its truths."""
    out: dict[str, float] = {}
    for r in rows:
        out[r.truth.rule] = max(out.get(r.truth.rule, 0.0), r.wrong)
    return out


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or values != tuple(sorted(set(values))) or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected distinct ascending sizes >= 1, got {text!r}")
    return values


def _parser() -> argparse.ArgumentParser:
    d = Design()
    p = argparse.ArgumentParser(prog="python -m specialsam.calibrate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="CI mode: 40 replicates, 200 bootstrap draws (<1 min)"
    )
    p.add_argument(
        "--reps", type=int, default=None, help="simulated sweeps per truth (default 1000; quick 40)"
    )
    p.add_argument("--n-boot", type=int, default=None, help="bootstrap draws per interval (default 400)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rule", choices=("baseline", "data"), default=None, help="simulate one rule only")
    p.add_argument("--grid", type=_ints, default=d.grid, help="curve sizes, e.g. 125,500,2000,8000")
    for name, kind in (("test_images", int), ("seeds", int), ("claimed_n", int), ("models", int)):
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=getattr(d, name))
    for name in ("threshold", "margin", "image_sd", "image_corr", "noise_sd", "seed_sd"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fields = ("test_images", "seeds", "claimed_n", "models", "threshold", "margin")
    design = replace(
        Design(),
        grid=tuple(args.grid),
        **{f: getattr(args, f) for f in (*fields, "image_sd", "image_corr", "noise_sd", "seed_sd")},
    )
    if design.seeds < 2 or design.test_images < 2 or not 0 <= design.image_corr <= 1:
        print("calibrate: --seeds and --test-images must be >= 2 and --image-corr in [0, 1]", file=sys.stderr)
        return 2
    reps = args.reps or (40 if args.quick else 1000)
    n_boot = args.n_boot or (200 if args.quick else 400)
    start = time.perf_counter()
    only = [t for t in truths(design.threshold) if args.rule in (None, t.rule)]
    rows = calibrate(design, reps, n_boot, args.seed, only)
    print(f"Design: {design.describe()}; {reps} simulated sweeps per truth, {n_boot} bootstrap draws.\n")
    print(format_table(rows))
    worst = worst_wrong(rows)
    print(
        "\nWorst wrong-verdict rate: "
        + ", ".join(f"{rule} rule {rate:.0%}" for rule, rate in worst.items())
        + f" (target <= 5%); {time.perf_counter() - start:.0f} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
