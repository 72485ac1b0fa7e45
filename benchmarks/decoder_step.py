"""Samples/s of specialsam's decoder training step against the study's batch-size-1 loop.

    .venv/bin/python benchmarks/decoder_step.py              # full run (minutes on CPU)
    .venv/bin/python benchmarks/decoder_step.py --quick      # ~30 s on 2 idle cores: does it work?
    .venv/bin/python benchmarks/decoder_step.py --json out.json --threads 1 --device auto

Variants, per model (random-init weights: speed does not depend on the weights):

- **study loop**: what the study did. Batch size 1; per sample, load that sample's fp32 ``.npy``
  embedding from disk, run SAM's standard path (``sam.prompt_encoder(points=..., boxes=...)`` then
  ``sam.mask_decoder(..., multimask_output=False)``), upsample the low-res logits bilinearly to the
  model's input size (1024 px for SAM; 256 px for the tiny models), BCE + Dice against a target of
  that size, backward, AdamW step on the mask decoder. Always fp32.
- **ours**: ``specialsam.finetune.train``'s step. A batch of B *different* images' fp16 embeddings,
  memory-mapped ``.npy`` as the embedding cache stores them and cast to fp32 (as
  ``Split.embeddings``), ``batch_logits`` (``decode_batched`` + upsample to the loss resolution),
  ``segmentation_loss``, backward, gradient clipping, AdamW step. Loss at 256 px (the training
  default) and at the model's input size; fp32, and bf16 autocast where CUDA supports it.
- **naive batch**: B prompts on ONE image through SAM's own ``mask_decoder`` (which
  ``repeat_interleave``s the single embedding per prompt), 256-px loss. Similar compute to ours but
  a batch holds one image: this is the batching SAM's code offers, not a batch of different images.

Each step ends with reading the loss value (``float(loss)``), as the training loop does, so every
timed step is synchronous. Half of the prompts are single points, half boxes (points only in the
naive variant, since SAM's prompt encoder cannot mix them in one call).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` over one step (forward +
backward): it counts matmuls, convolutions and attention, not elementwise work (loss, upsampling,
optimizer). "GFLOP/s" is that count times steps/s; "% peak" divides it by the FLOP/s of a large
``torch.mm`` in the step's dtype timed in the same run (best of a few).

Torch threads default to 1 (``--threads``): sweep trials run one per core. Timings taken while other
jobs share the machine are not valid; the header prints the load average and flags it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import machine_info, markdown_table, matmul_peak, median, time_repeats
from torch.utils.flop_counter import FlopCounterMode

from specialsam.device import DeviceChoice, select_device
from specialsam.finetune.train import (
    TrainConfig,
    accumulate_gradients,
    decoder_optimizer,
    micro_batch_size,
    segmentation_loss,
    trainable_decoder,
)
from specialsam.models.registry import get_spec, load_model

LOW_RES = 256
"""The training default loss resolution (the pack's ``loss_res``)."""

TARGET_RATIO = 1.5
TARGET_PEAK = 0.5
TARGET_TINY = 100.0


@dataclass(frozen=True)
class Settings:
    batch_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    min_seconds: float
    """Each repeat runs steps until this long has passed (and at least one step)."""
    n_files: int
    """Distinct per-sample embedding files written per model (at least the largest batch)."""
    models: tuple[str, ...]
    matmul_n: int
    naive: bool = True
    full_res: bool = True
    """Also measure ours with the loss at the model's input size."""


MODES: dict[str, Settings] = {
    "full": Settings(
        batch_sizes=(1, 4, 8, 16, 32),
        warmup=2,
        repeats=5,
        min_seconds=2.0,
        n_files=64,
        models=("vit_b", "tiny-s", "tiny-m"),
        matmul_n=2048,
    ),
    "quick": Settings(
        batch_sizes=(1, 8),
        warmup=0,  # the FLOP-counting step is the warmup
        repeats=2,
        min_seconds=0.1,
        n_files=16,
        models=("vit_b", "tiny-s", "tiny-m"),
        matmul_n=2048,
    ),
    # For the test-suite: seconds, not a measurement.
    "smoke": Settings(
        batch_sizes=(1, 2),
        warmup=0,
        repeats=2,
        min_seconds=0.0,
        n_files=4,
        models=("tiny-s",),
        matmul_n=256,
    ),
}


def study_loss(logits: torch.Tensor, target: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """BCE + Dice over the whole (1, 1, S, S) image, the study's loss."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = logits.sigmoid()
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    return cfg.bce_weight * bce + cfg.dice_weight * dice


def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


class ModelBench:
    """One model's decoder, its embedding files on disk, prompts and targets."""

    def __init__(self, name: str, settings: Settings, device: torch.device, folder: Path, seed: int = 0):
        self.name = name
        self.device = device
        self.cfg = TrainConfig()
        spec = get_spec(name)
        self.side = spec.image_size
        c, h, w = spec.embedding_shape
        sam, _ = load_model(name, random_init=True, seed=seed)
        sam.image_encoder = None  # never runs here; frees memory (ViT-B: ~90M parameters)
        self.sam = sam.to(device).eval()
        self.params = trainable_decoder(self.sam)
        self.init_state = copy.deepcopy(self.sam.mask_decoder.state_dict())

        n = self.n = settings.n_files
        rng = np.random.default_rng(seed)
        self.f32, self.f16 = [], []
        for i in range(n):
            emb = rng.standard_normal((c, h, w), dtype=np.float32)
            self.f32.append(folder / f"study_{i}.npy")
            self.f16.append(folder / f"cache_{i}.npy")
            np.save(self.f32[-1], emb)  # the study's per-sample fp32 file
            np.save(self.f16[-1], emb.astype(np.float16))  # our cache's fp16 entry

        # One object per sample: a box inside the image; even samples get its centre point as
        # the prompt, odd ones the box.
        s = self.side
        lo = rng.uniform(0.05, 0.5, (n, 2)) * s
        size = rng.uniform(0.1, 0.45, (n, 2)) * s
        self.boxes = np.concatenate([lo, lo + size], axis=1).astype(np.float32)  # x0 y0 x1 y1
        centres = (self.boxes[:, :2] + self.boxes[:, 2:]) / 2
        self.is_box = np.arange(n) % 2 == 1
        self.coords = np.zeros((n, 2, 2), np.float32)
        self.labels = np.zeros((n, 2), np.int64)
        for i in range(n):
            if self.is_box[i]:
                self.coords[i] = self.boxes[i].reshape(2, 2)
                self.labels[i] = (2, 3)
            else:
                self.coords[i, 0] = centres[i]
                self.labels[i] = (1, -1)
        self.centres = centres.astype(np.float32)
        self.masks = {r: self._masks(r) for r in {LOW_RES, self.side}}
        self.cursor = 0
        self.opt: torch.optim.Optimizer | None = None

    def _masks(self, res: int) -> np.ndarray:
        m = np.zeros((self.n, res, res), np.uint8)
        b = np.round(self.boxes * (res / self.side)).astype(int)
        for i, (x0, y0, x1, y1) in enumerate(b):
            m[i, y0:y1, x0:x1] = 255
        return m

    def reset(self, study: bool = False) -> None:
        """Same starting weights and a fresh optimizer for every measured configuration.

        The study loop gets PyTorch's default AdamW (as the study used); ours gets training's."""
        self.sam.mask_decoder.load_state_dict(self.init_state)
        if study:
            self.opt = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        else:
            self.opt = decoder_optimizer(self.params, self.cfg, self.device)
        self.cursor = 0

    def _next(self, b: int) -> list[int]:
        idx = [(self.cursor + j) % self.n for j in range(b)]
        self.cursor += b
        return idx

    def _update(self, loss: torch.Tensor, clip: bool) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip and self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        return float(loss.detach())  # the loop logs the loss: a host sync each step

    # -- the three steps; each returns the number of samples it trained on -------------------

    def study_step(self) -> int:
        (i,) = self._next(1)
        d, pe = self.device, self.sam.prompt_encoder
        emb = torch.from_numpy(np.load(self.f32[i])).to(d).unsqueeze(0)
        if self.is_box[i]:
            points, boxes = None, torch.from_numpy(self.boxes[i : i + 1]).to(d)
        else:
            pts = torch.from_numpy(self.centres[i : i + 1, None]).to(d)
            points, boxes = (pts, torch.ones(1, 1, dtype=torch.int64, device=d)), None
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        low, _ = self.sam.mask_decoder(
            image_embeddings=emb,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = F.interpolate(low, size=(self.side, self.side), mode="bilinear", align_corners=False)
        target = torch.from_numpy(self.masks[self.side][i].astype(np.float32) / 255.0).to(d)[None, None]
        self._update(study_loss(logits, target, self.cfg), clip=False)
        return 1

    def ours_step(self, b: int, res: int, dev: DeviceChoice, micro: int = 0) -> int:
        idx = self._next(b)
        emb = torch.from_numpy(
            np.stack([np.load(self.f16[i], mmap_mode="r") for i in idx]).astype(np.float32)
        )
        coords = torch.from_numpy(self.coords[idx])
        labels = torch.from_numpy(self.labels[idx])
        target = torch.from_numpy(self.masks[res][idx].astype(np.float32) / 255.0)
        valid = torch.ones(b, res, res)
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr
        self.opt.zero_grad(set_to_none=True)
        loss = accumulate_gradients(self.sam, emb, coords, labels, target, valid, self.cfg, dev, res, micro)
        float(loss)  # the loop logs the loss: a host sync each step
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        return b

    def naive_step(self, b: int, dev: DeviceChoice) -> int:
        idx = self._next(b)
        d, pe = self.device, self.sam.prompt_encoder
        emb = torch.from_numpy(np.load(self.f16[idx[0]], mmap_mode="r").astype(np.float32)).to(d)[None]
        pts = torch.from_numpy(self.centres[idx][:, None]).to(d)
        target = torch.from_numpy(self.masks[LOW_RES][idx].astype(np.float32) / 255.0).to(d)
        with dev.autocast():
            sparse, dense = pe(
                points=(pts, torch.ones(b, 1, dtype=torch.int64, device=d)), boxes=None, masks=None
            )
            low, _ = self.sam.mask_decoder(
                image_embeddings=emb,
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            logits = F.interpolate(low, size=(LOW_RES, LOW_RES), mode="bilinear", align_corners=False)[:, 0]
        valid = torch.ones(b, LOW_RES, LOW_RES, device=d)
        self._update(segmentation_loss(logits.float(), target, valid, self.cfg).mean(), clip=True)
        return b


def measure(bench: ModelBench, fn, per_step: int, s: Settings, study: bool = False) -> dict:
    """samples/s (median over repeats, each repeat's figure kept) and FLOPs per sample of ``fn``.

    The FLOP-counting step runs first and untimed, so it is also the first warmup step (it
    allocates the optimizer state).
    """
    bench.reset(study)
    flops = count_flops(fn) / per_step
    rates = time_repeats(fn, bench.device, s.warmup, s.repeats, s.min_seconds)
    return {"samples_per_s": median(rates), "samples_per_s_repeats": rates, "flop_per_sample": flops}


def run_model(
    name: str,
    s: Settings,
    device: torch.device,
    precisions: list[str],
    headline_prec: str | None,
    peaks: dict,
    bf16_na: str | None,
) -> list[dict]:
    """All rows of one model. ``headline_prec`` None: what ``auto`` picks for this model."""
    rows: list[dict] = []
    spec = get_spec(name)
    if headline_prec is None:
        headline_prec = select_device(str(device), "auto").for_decoder(spec.embedding_shape[0]).precision
    with tempfile.TemporaryDirectory(prefix="specialsam-bench-") as tmp:
        bench = ModelBench(name, s, device, Path(tmp))
        shape = "x".join(map(str, spec.embedding_shape[::-1]))

        def row(variant: str, batch: int, res: int, prec: str, m: dict, note: str = "") -> dict:
            r = {"model": name, "embedding": shape, "variant": variant, "batch": batch, "loss_px": res}
            r |= {"precision": prec, **m, "note": note}
            r["gflops"] = m["flop_per_sample"] * m["samples_per_s"] / 1e9
            r["pct_peak"] = 100 * r["gflops"] * 1e9 / peaks[prec] if prec in peaks else None
            r["headline"] = (variant, batch, res, prec) == ("ours", headline_batch(s), LOW_RES, headline_prec)
            return r

        study = row("study loop", 1, bench.side, "fp32", measure(bench, bench.study_step, 1, s, study=True))
        rows.append(study)
        resolutions = [LOW_RES] + ([bench.side] if s.full_res and bench.side != LOW_RES else [])
        for prec in precisions:
            dev = select_device(str(device), prec)
            micro = micro_batch_size(0, spec.embedding_shape[1], dev)
            for res in resolutions:
                for b in s.batch_sizes:
                    mb = micro if micro and micro < b else 0
                    step = lambda b=b, res=res, dev=dev, mb=mb: bench.ours_step(b, res, dev, mb)  # noqa: E731
                    m = measure(bench, step, b, s)
                    rows.append(row("ours", b, res, prec, m, f"chunks of {mb}" if mb else ""))
                    if mb:  # the same step without chunking: what the chunking buys
                        whole = lambda b=b, res=res, dev=dev: bench.ours_step(b, res, dev, 0)  # noqa: E731
                        m = measure(bench, whole, b, s)
                        rows.append(row("ours, whole batch", b, res, prec, m, "no chunking"))
        if bf16_na:
            rows.append(
                {"model": name, "embedding": shape, "variant": "ours", "batch": None, "loss_px": None,
                 "precision": "bf16", "samples_per_s": None, "note": bf16_na}
            )  # fmt: skip
        if s.naive:
            b = headline_batch(s)
            dev = select_device(str(device), headline_prec)
            m = measure(bench, lambda: bench.naive_step(b, dev), b, s)
            rows.append(row("naive batch (1 image)", b, LOW_RES, dev.precision, m))
        for r in rows:
            if r["samples_per_s"] is not None:
                r["vs_study"] = r["samples_per_s"] / study["samples_per_s"]
    return rows


def headline_batch(s: Settings) -> int:
    """The training default batch size if measured, else the largest measured."""
    default = TrainConfig().batch_size
    return default if default in s.batch_sizes else max(s.batch_sizes)


def targets(rows: list[dict], s: Settings) -> list[dict]:
    """The issue's three targets, judged on ours at each model's headline configuration."""
    b = headline_batch(s)
    out = []
    for r in rows:
        if not r.get("headline"):
            continue
        where = f"{r['model']} (batch {b}, {LOW_RES} px loss, {r['precision']})"
        out.append(
            {"target": f"ours >= {TARGET_RATIO}x study loop", "where": where,
             "value": f"{r['vs_study']:.2f}x", "met": r["vs_study"] >= TARGET_RATIO}
        )  # fmt: skip
        if r["pct_peak"] is not None:
            out.append(
                {"target": f">= {TARGET_PEAK:.0%} of matmul peak", "where": where,
                 "value": f"{r['pct_peak']:.1f}%", "met": r["pct_peak"] >= 100 * TARGET_PEAK}
            )  # fmt: skip
        if r["model"].startswith("tiny"):
            out.append(
                {"target": f">= {TARGET_TINY:.0f} samples/s on tiny embeddings", "where": where,
                 "value": f"{r['samples_per_s']:.1f}/s", "met": r["samples_per_s"] >= TARGET_TINY}
            )  # fmt: skip
    return out


def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def render(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# decoder training step: samples/s ({result['mode']} mode)",
        "",
        f"- date: {m['date_utc']}, commit {m['commit']}",
        f"- machine: {m['cpu']} ({m['cpu_count']} cores), device {m['device']}"
        + (f" ({m['gpu']})" if m["gpu"] else "")
        + f", torch {m['torch']}, {m['torch_threads']} torch thread(s)",
        f"- load average (1 min) at start: {m['load_avg_1min']}"
        + ("  **CONTENDED: other jobs share this machine; timings not valid**" if m["contended"] else ""),
        "- matmul peak (measured, best of 3): "
        + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in result["matmul_peak_flops"].items())
        + f" ({result['matmul_n']}x{result['matmul_n']} torch.mm)",
        "",
    ]
    header = ["model", "variant", "batch", "loss px", "precision", "samples/s", "x study", "GFLOP/sample",
              "GFLOP/s", "% peak", "note"]  # fmt: skip
    table = []
    for r in result["rows"]:
        table.append(
            [
                f"{r['model']} ({r['embedding']})",
                r["variant"],
                _fmt(r["batch"], "d"),
                _fmt(r["loss_px"], "d"),
                r["precision"],
                _fmt(r["samples_per_s"], ".1f"),
                _fmt(r.get("vs_study"), ".2f"),
                _fmt(r.get("flop_per_sample") and r["flop_per_sample"] / 1e9, ".2f"),
                _fmt(r.get("gflops"), ".1f"),
                _fmt(r.get("pct_peak"), ".1f"),
                r["note"],
            ]
        )
    lines += [markdown_table(header, table), "", "Targets (from the issue):", ""]
    lines += [markdown_table(
        ["target", "where", "value", "met"],
        [[t["target"], t["where"], t["value"], "yes" if t["met"] else "NO"] for t in result["targets"]],
    )]  # fmt: skip
    if m["contended"]:
        lines += ["", "(contended run: the figures above only show that the benchmark works)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="batch 1 and 8, 2 short repeats (~30 s on an idle core): checks it works",
    )
    mode.add_argument("--smoke", action="store_true", help="tiny-s only, seconds (the test-suite's check)")
    ap.add_argument("--models", help="comma-separated registry names (default: vit_b,tiny-s,tiny-m)")
    ap.add_argument("--batch-sizes", help="comma-separated batch sizes for ours (default by mode)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i] (default auto)")
    ap.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"],
        help="ours' precision: auto = fp32, plus bf16 where the device runs it natively (CUDA, AMX CPUs)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--repeats", type=int, help="timed repeats per configuration (median reported)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive repeat_interleave variant")
    ap.add_argument("--no-full-res", action="store_true", help="skip ours with the loss at input size")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    mode_name = "quick" if args.quick else "smoke" if args.smoke else "full"
    s = MODES[mode_name]
    if args.models:
        s = replace(s, models=tuple(x.strip() for x in args.models.split(",") if x.strip()))
    if args.batch_sizes:
        bs = tuple(int(x) for x in args.batch_sizes.split(","))
        s = replace(s, batch_sizes=bs, n_files=max(s.n_files, max(bs)))
    if args.repeats:
        s = replace(s, repeats=args.repeats)
    s = replace(s, naive=s.naive and not args.no_naive, full_res=s.full_res and not args.no_full_res)
    for name in s.models:
        get_spec(name)  # unknown names fail before anything runs

    torch.set_num_threads(args.threads)
    auto = select_device(args.device, "auto")
    device = auto.device
    if args.precision == "auto":
        precisions = ["fp32"] + (["bf16"] if auto.autocast_dtype == torch.bfloat16 else [])
    else:
        precisions = [args.precision]
    headline_prec = None if args.precision == "auto" else args.precision
    bf16_na = None
    if args.precision == "auto" and "bf16" not in precisions:
        bf16_na = "n/a on CPU" if device.type == "cpu" else "n/a (no bf16 on this GPU)"

    machine = machine_info(device)
    n = s.matmul_n if device.type == "cpu" else max(s.matmul_n, 8192)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {p: matmul_peak(device, dtypes[p], n) for p in precisions}

    rows: list[dict] = []
    for name in s.models:
        print(f"[decoder_step] {name} ...", file=sys.stderr, flush=True)
        rows += run_model(name, s, device, precisions, headline_prec, peaks, bf16_na)
    result = {
        "mode": mode_name,
        "machine": machine,
        "settings": asdict(s),
        "matmul_n": n,
        "matmul_peak_flops": peaks,
        "rows": rows,
        "targets": targets(rows, s),
    }
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
