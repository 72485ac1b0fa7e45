"""How close to the matmul peak could the decoder step get at all? Its FLOP-carrying ops, alone.

    .venv/bin/python benchmarks/flop_ceiling.py --model vit_b --precision fp32 --batch 4
    .venv/bin/python benchmarks/flop_ceiling.py --model vit_b --precision bf16 --batch 4
    .venv/bin/python benchmarks/flop_ceiling.py --model tiny-m --precision fp32 --batch 16

``decoder_step.py`` reports the step's FLOP/s as a share of a large square ``torch.mm``. This
script bounds that share from above. It records every op of one forward + backward (the step of
``compile_probe.make_step``: ``batch_logits`` + ``segmentation_loss``, as training runs them) that
``torch.utils.flop_counter`` counts FLOPs for (matmuls, convolutions and their backward,
attention), replays each one alone on fresh tensors of the same shapes, strides and dtypes, and
sums their best times. Everything else the step does (GELU, LayerNorm, softmax, the loss, copies,
the optimizer) is left out, and an op timed alone in a loop runs with warm caches, so the
**ceiling** = step FLOPs / (sum of those times) / peak is optimistic: no implementation of this
step with these shapes, fused or not, reaches a larger share of the peak on this machine.

Not run by the test suite in full (the vit_b replay takes a minute or two); its test replays tiny-s.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass

import torch
from _common import markdown_table, sync
from compile_probe import add_step_args, open_step, time_step
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry


@dataclass(frozen=True)
class TensorMeta:
    """What a replay needs to rebuild an argument: layout and dtype, not the values."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: str


def _meta(x: object) -> object:
    """A hashable stand-in for an argument: tensors become their layout, lists tuples."""
    if isinstance(x, torch.Tensor):
        return TensorMeta(tuple(x.shape), tuple(x.stride()), x.dtype, str(x.device))
    if isinstance(x, list | tuple):
        return tuple(_meta(v) for v in x)
    return x


class FlopOpRecorder(TorchDispatchMode):
    """Counts each distinct FLOP-carrying aten call (op + argument layouts) of what runs under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in flop_registry:
            key = (func, _meta(args), tuple(sorted((k, _meta(v)) for k, v in kwargs.items())))
            self.calls[key] += 1
        return func(*args, **kwargs)


def _materialise(x: object, g: torch.Generator) -> object:
    """Fresh random tensors in the recorded layouts (aten ops take lists, so tuples become lists)."""
    if isinstance(x, TensorMeta):
        # one flat buffer viewed with the recorded strides: expanded (stride-0) inputs stay expanded
        size = 1 + sum((n - 1) * st for n, st in zip(x.shape, x.stride) if n > 0)
        flat = torch.randn(size, generator=g) if x.dtype.is_floating_point else torch.zeros(size)
        return flat.to(device=x.device, dtype=x.dtype).as_strided(x.shape, x.stride)
    if isinstance(x, tuple):
        return [_materialise(v, g) for v in x]
    return x


def replay(calls: Counter, device: torch.device, repeats: int, seed: int = 0) -> list[dict]:
    """Best time and FLOPs of every recorded call, replayed alone; one row per distinct call."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for (func, args_meta, kwargs_meta), count in calls.items():
        args = _materialise(args_meta, g)
        kwargs = {k: _materialise(v, g) for k, v in kwargs_meta}
        with FlopCounterMode(display=False) as fc:
            func(*args, **kwargs)
        sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            func(*args, **kwargs)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        shapes = [list(a.shape) for a in args_meta if isinstance(a, TensorMeta)]
        rows.append(
            {
                "op": str(func),
                "shapes": shapes,
                "count": count,
                "flops": fc.get_total_flops() * count,
                "seconds": best * count,
            }
        )
    return sorted(rows, key=lambda r: -r["seconds"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_args(ap, repeats=5, repeats_help="timed calls per step / per replayed op")
    ap.add_argument("--top", type=int, default=8, help="ops listed, by replay time")
    args = ap.parse_args(argv)
    dev, loss_fn, inputs, info, step_flops, peak = open_step(args)
    _, step_s = time_step(loss_fn, inputs, dev.device, args.repeats)
    recorder = FlopOpRecorder()
    with recorder:
        loss_fn(*inputs).backward()
    rows = replay(recorder.calls, dev.device, args.repeats)
    ops_s = sum(r["seconds"] for r in rows)
    ops_flops = sum(r["flops"] for r in rows)
    out = {
        "model": args.model,
        "precision": args.precision,
        "batch": args.batch,
        "step_gflop": step_flops / 1e9,
        "replayed_gflop": ops_flops / 1e9,
        "peak_gflops": peak / 1e9,
        "step_s": step_s,
        "flop_ops_s": ops_s,
        "flop_ops_share_of_step": ops_s / step_s,
        "step_peak_share": step_flops / step_s / peak,
        "ceiling_peak_share": ops_flops / ops_s / peak,
        "ops": rows,
        "machine": info,
    }
    top = [
        [
            r["op"],
            " x ".join("x".join(map(str, s)) for s in r["shapes"][:3]),
            r["count"],
            f"{r['flops'] / 1e9:.3f}",
            f"{r['seconds'] * 1e3:.1f}",
            f"{r['flops'] / r['seconds'] / peak:.0%}",
        ]
        for r in rows[: args.top]
    ]
    print(markdown_table(["op", "input shapes", "calls", "GFLOP", "ms (alone)", "% peak"], top))
    print(
        f"{args.model} {args.precision} batch {args.batch}: step {step_s:.3f} s, {step_flops / 1e9:.2f} "
        f"GFLOP -> {out['step_peak_share']:.1%} of the {peak / 1e9:.0f} GFLOP/s peak; its "
        f"{sum(r['count'] for r in rows)} FLOP-carrying ops ({len(rows)} distinct, "
        f"{ops_flops / 1e9:.2f} GFLOP) take {ops_s:.3f} s alone ({out['flop_ops_share_of_step']:.0%} "
        f"of the step): ceiling {out['ceiling_peak_share']:.1%} of the peak",
        flush=True,
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return out


if __name__ == "__main__":
    main()
