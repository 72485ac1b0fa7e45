"""Would ``torch.compile`` bring the decoder step to 50% of the matmul peak? A paired A/B probe.

    .venv/bin/python benchmarks/compile_probe.py --model vit_b --precision bf16 --batch 4
    .venv/bin/python benchmarks/compile_probe.py --model tiny-m --precision fp32 --batch 16

``decoder_step.py`` showed the step far below the issue's 50% of the matmul peak because it is full
of elementwise and normalisation work. Kernel fusion is the standard answer, so this probe times the
same forward + backward (``batch_logits`` + ``segmentation_loss``, as training runs them, random-init
decoder) eagerly and through ``torch.compile`` (inductor) in one process — eager, compiled, eager
again, so drift shows — and prints the compile time, the speed-up and the share of the peak.

Training does not compile (see benchmarks/README.md for why): this is a measurement, not a switch.
Not run by the test suite: one compilation takes 1.5-2.5 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _common import machine_info, matmul_peak, median
from decoder_step import count_flops

from specialsam.device import select_device
from specialsam.finetune.train import TrainConfig, batch_logits, segmentation_loss, trainable_decoder
from specialsam.models.registry import get_spec, load_model

LOSS_RES = 256


def make_step(model: str, batch: int, precision: str, seed: int = 0):
    """The device, the model, a closure running one forward + backward of its decoder, and its inputs."""
    dev = select_device("auto", precision)
    sam, _ = load_model(model, random_init=True, seed=seed)
    sam.image_encoder = None  # never runs here
    sam = sam.to(dev.device).eval()
    trainable_decoder(sam)
    spec, cfg = get_spec(model), TrainConfig()
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, *spec.embedding_shape, generator=g)
    coords = torch.rand(batch, 2, 2, generator=g) * spec.image_size
    labels = torch.tensor([[1, -1], [2, 3]] * (batch // 2) + [[1, -1]] * (batch % 2))
    target = (torch.rand(batch, LOSS_RES, LOSS_RES, generator=g) > 0.5).float()
    valid = torch.ones(batch, LOSS_RES, LOSS_RES)
    inputs = [t.to(dev.device) for t in (emb, coords, labels, target, valid)]

    def loss_fn(emb, coords, labels, target, valid):
        with dev.autocast():
            logits = batch_logits(sam, emb, coords, labels, LOSS_RES)
        return segmentation_loss(logits.float(), target, valid, cfg).mean()

    return dev, sam, loss_fn, inputs


def time_step(fn, inputs, device: torch.device, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of the later ones) for forward + backward."""
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        loss = fn(*inputs)
        loss.backward()
        float(loss.detach())  # host sync, as the training loop logs the loss
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times[0], median(times[1:])


def add_step_args(ap: argparse.ArgumentParser, repeats: int, repeats_help: str) -> None:
    """The options every probe of this step shares: which step, how often it is timed, where to."""
    ap.add_argument("--model", default="vit_b")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=repeats, help=repeats_help)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the figures to this file")


def open_step(args: argparse.Namespace):
    """(device choice, step closure, its inputs, machine info, step FLOPs, matmul peak FLOP/s).

    Sets the thread count, builds the step, prints the machine line, counts one forward +
    backward's FLOPs and measures the peak of a large ``torch.mm`` in the step's dtype."""
    torch.set_num_threads(args.threads)
    dev, _, loss_fn, inputs = make_step(args.model, args.batch, args.precision)
    info = machine_info(dev.device)
    print(json.dumps(info), flush=True)
    flops = count_flops(lambda: loss_fn(*inputs).backward())
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(dev.device, dtype, 2048 if dev.device.type == "cpu" else 8192)
    return dev, loss_fn, inputs, info, flops, peak


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(ap, repeats=8, repeats_help="timed calls per variant")
    args = ap.parse_args(argv)
    dev, loss_fn, inputs, info, flops, peak = open_step(args)
    _, eager = time_step(loss_fn, inputs, dev.device, args.repeats)
    compiled_fn = torch.compile(loss_fn)
    first, compiled = time_step(compiled_fn, inputs, dev.device, args.repeats)
    _, eager_again = time_step(loss_fn, inputs, dev.device, args.repeats)
    eager_mean = (eager + eager_again) / 2
    out = {
        "model": args.model,
        "precision": args.precision,
        "batch": args.batch,
        "gflop_per_step": flops / 1e9,
        "peak_gflops": peak / 1e9,
        "eager_s": eager_mean,
        "eager_drift": eager_again / eager,
        "compiled_s": compiled,
        "compile_s": first - compiled,
        "speedup": eager_mean / compiled,
        "eager_peak_share": flops / eager_mean / peak,
        "compiled_peak_share": flops / compiled / peak,
        "machine": info,
    }
    print(
        f"{args.model} {args.precision} batch {args.batch}: forward+backward eager {eager_mean:.3f} s "
        f"(drift {out['eager_drift']:.2f}), compiled {compiled:.3f} s after {out['compile_s']:.0f} s "
        f"of compiling: {out['speedup']:.2f}x; share of the {peak / 1e9:.0f} GFLOP/s matmul peak "
        f"{out['eager_peak_share']:.1%} -> {out['compiled_peak_share']:.1%}",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
