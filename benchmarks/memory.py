"""Peak driver memory of ``--plan`` + encoder precompute + pack building at 2,000 vs 20,000 images.

Images are streamed (``tasks.base.ImageSource``): a task keeps a reference and a content hash per
image, and pixels are decoded only where needed (the encoder precompute, the pack's masks and
thumbnails), one batch at a time. So the driver's peak RSS should not grow with the dataset. This
benchmark generates a ``--task folder`` dataset of small images (so it runs in minutes: the encoder
sees 256 px whatever the file size), then, in a fresh process per size, runs the sweep's own stages
(``prepare_sweep`` -> ``plan_sweep`` -> ``build_packs``, tiny-s only, training sizes fitted to the
whole pool so every image is encoded and packed) and reads the process's peak RSS
(``getrusage``). Target: the two peaks within 20% of each other.

    python benchmarks/memory.py                    # 2,000 vs 20,000 images (~10 min on 2 cores)
    python benchmarks/memory.py --sizes 40,400     # a quick check that it works
    python benchmarks/memory.py --layout coco      # the same on a COCO json (two instances per image)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_folder(root: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` distinct noisy images with one ellipse mask each, as ``images/`` + ``masks/`` PNGs."""
    import cv2

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        c = tuple(int(v) for v in rng.integers(side // 4, 3 * side // 4, 2))
        axes = tuple(int(v) for v in rng.integers(side // 8, side // 3, 2))
        cv2.ellipse(mask, c, axes, 0, 0, 360, 255, -1)
        img[mask > 0] //= 2
        cv2.imwrite(str(root / "images" / f"{i:06d}.png"), img)
        cv2.imwrite(str(root / "masks" / f"{i:06d}.png"), mask)


def write_coco(root: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` images with two rectangle instances each (polygons) in one COCO json (split by image)."""
    import cv2

    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        for k in range(2):
            x, y = (int(v) for v in rng.integers(0, side // 2, 2))
            w, h = (int(v) for v in rng.integers(side // 3, side // 2, 2))
            img[y : y + h, x : x + w] //= 2
            poly = [x, y, x + w, y, x + w, y + h, x, y + h]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + k, "segmentation": [poly],
                         "area": w * h, "bbox": [x, y, w, h], "iscrowd": 0})  # fmt: skip
        cv2.imwrite(str(root / "images" / f"{i:06d}.png"), img)
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": side, "height": side})
    cats = [
        {"id": 1, "name": "box", "supercategory": "thing"},
        {"id": 2, "name": "lid", "supercategory": "thing"},
    ]
    (root / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats})
    )


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(layout: str, data_root: Path, work: Path) -> dict:
    """The sweep's stages up to the packs, in this (fresh) process; returns the figures."""
    from specialsam.config import default_config_path, load_config
    from specialsam.sweep.driver import build_packs, plan_sweep, prepare_sweep
    from specialsam.sweep.outputs import RunOptions

    big = 10**7  # fitted to the pool (config.grids): every training image is encoded and packed
    sets = ["models=[tiny-s]", f"curve.n_train=[{big}]", f"search.n_train={big}"]
    if layout == "coco":  # every image (no max_images cap), instances under 100 px kept
        sets += ["data.annotations=annotations.json", "data.images=images", "data.min_area=1"]
        sets += [f"data.max_images={{train: {big}, val: {big}, test: {big}}}"]
    cfg = load_config(default_config_path(layout), sets).model_copy(update={"data_root": str(data_root)})
    opts = RunOptions(
        cwd=work, cache_dir=str(work / "cache"), storage=str(work / "ray"), plan=True, quiet=True
    )
    t0 = time.perf_counter()
    sweep = prepare_sweep(cfg, opts)
    plan = plan_sweep(sweep)
    after_plan = rss_mb()
    t1 = time.perf_counter()
    build_packs(sweep)
    t = sweep.task
    return {
        "images": len({s.image_hash() for s in t.train + t.val + t.test}),
        "samples": len(t.train) + len(t.val) + len(t.test),
        "encoded": sum(m.to_encode for m in plan.models),
        "peak_rss_after_plan_mb": round(after_plan, 1),
        "peak_rss_mb": round(rss_mb(), 1),
        "plan_s": round(t1 - t0, 1),
        "packs_s": round(time.perf_counter() - t1, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,20000", help="dataset sizes (images), comma-separated")
    ap.add_argument("--side", type=int, default=32, help="image side in pixels")
    ap.add_argument("--layout", choices=("folder", "coco"), default="folder", help="dataset layout (task)")
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--child", nargs=3, metavar=("LAYOUT", "DATA_ROOT", "WORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return 0
    from benchmarks._common import git_commit

    load = os.getloadavg()[0]
    busy = " CONTENDED (peak RSS still holds; times do not)" if load > 1 else ""
    where = f"commit {git_commit()}, {os.cpu_count()} CPUs, load {load:.2f}{busy}"
    print(f"{args.layout}, {args.side} px images; {where}")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"specialsam-mem-{n}-") as d:
            root, work = Path(d) / "data", Path(d) / "work"
            work.mkdir()
            (write_coco if args.layout == "coco" else write_folder)(root, n, args.side)
            env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}
            out = subprocess.run(
                [sys.executable, __file__, "--child", args.layout, str(root), str(work)],
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            if out.returncode:
                print(out.stdout + out.stderr, file=sys.stderr)
                return 1
            rows.append({"n_images": n, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    print(
        "\n| images | samples | encoded | peak RSS after --plan (MiB) | peak RSS (MiB) | plan s | packs s |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n_images']:,} | {r['samples']:,} | {r['encoded']:,} | {r['peak_rss_after_plan_mb']:,.0f} "
            f"| {r['peak_rss_mb']:,.0f} | {r['plan_s']} | {r['packs_s']} |"
        )
    peaks = [r["peak_rss_mb"] for r in rows]
    ratio = max(peaks) / min(peaks)
    print(
        f"\nlargest / smallest peak RSS: {ratio:.3f} (target <= 1.20): {'met' if ratio <= 1.2 else 'MISSED'}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
