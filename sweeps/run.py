"""Run a SpecialSAM sweep: should you fine-tune SAM's mask decoder for this task?

    python sweeps/run.py --task carpet            # offline defaults: tiny generalists, stand-in data
    python sweeps/run.py --task carpet --smoke    # a tiny sweep to check the set-up (~1-2 min)
    python sweeps/run.py --task carpet --plan     # what it will cost, then exit
    python sweeps/run.py --task carpet --resume   # continue the interrupted sweep
    python sweeps/run.py --task carpet --analyze-only <parent-run-id>
    python sweeps/run.py --task all --smoke       # the study table across tasks

Results go to MLflow (./mlflow.db unless --tracking-uri); browse them with the printed command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from specialsam.errors import UserError, cli_errors  # noqa: E402

STUDY_TASKS = ("carpet", "wood", "camouflage")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sweeps/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--task", help="carpet | wood | camouflage | folder | coco | all")
    ap.add_argument("--tasks", help="comma list of tasks to run in turn (the study table), e.g. carpet,wood")
    ap.add_argument("--config", type=Path, help="sweep YAML (default: sweeps/<task>.yaml)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config setting, e.g. --set search.num_samples=4 (repeatable)",
    )
    ap.add_argument("--data-root", help="real dataset root (default: the task's procedural stand-in)")
    ap.add_argument(
        "--checkpoint-dir",
        help="folder with official SAM/MobileSAM checkpoints (default: $SPECIALSAM_CHECKPOINTS)",
    )
    ap.add_argument(
        "--allow-unverified",
        action="store_true",
        help="accept checkpoints whose hash cannot be verified (MedSAM, in-house fine-tunes)",
    )
    ap.add_argument("--models", help="comma list, e.g. tiny-s,tiny-m or vit_t,vit_b,vit_l,vit_h")
    ap.add_argument(
        "--methods", help="how to fine-tune each model: comma list of decoder, lora, full (default: decoder)"
    )
    ap.add_argument("--num-samples", type=int, help="phase A trials per model (search.num_samples)")
    ap.add_argument("--cpus-per-trial", type=float)
    ap.add_argument(
        "--gpus-per-trial", type=float, help="GPU fraction per trial, e.g. 0.25 = 4 trials per GPU"
    )
    ap.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    ap.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db)")
    ap.add_argument("--experiment", help="MLflow experiment (default: specialsam-<task>)")
    ap.add_argument("--storage", help="Tune storage folder (shared on a cluster; default ./ray_results)")
    ap.add_argument("--cache-dir", help="embedding cache (shared on a cluster; default ~/.cache/specialsam)")
    ap.add_argument("--export-dir", help="where the specialised model is written (default ./exports)")
    ap.add_argument("--seed", type=int, help="task split seed")
    ap.add_argument("--smoke", action="store_true", help="a tiny sweep to check everything runs")
    ap.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="SWEEP",
        help="continue an interrupted sweep (default: the latest for the task)",
    )
    ap.add_argument(
        "--plan", action="store_true", help="print trials, encoder passes, cache size, time; exit"
    )
    ap.add_argument(
        "--analyze-only", metavar="RUN_ID", help="rebuild the report of a finished sweep from MLflow"
    )
    ap.add_argument(
        "--baseline-only",
        action="store_true",
        help="zero-shot survey: every category (data.category=all) x prompt strategy, no training",
    )
    return ap


def overrides(args: argparse.Namespace) -> list[str]:
    """CLI flags that are config settings, as --set overrides (applied last)."""
    out = list(args.set)
    if args.data_root:
        out.append(f"data_root={args.data_root}")
    if args.models:
        out.append(f"models=[{args.models}]")
    if args.methods:
        out.append(f"methods=[{args.methods}]")
    if args.num_samples is not None:
        out.append(f"search.num_samples={args.num_samples}")
    if args.cpus_per_trial is not None:
        out.append(f"resources.cpus_per_trial={args.cpus_per_trial}")
    if args.gpus_per_trial is not None:
        out.append(f"resources.gpus_per_trial={args.gpus_per_trial}")
    if args.seed is not None:
        out.append(f"seed={args.seed}")
    return out


def tasks_of(args: argparse.Namespace) -> list[str]:
    if args.tasks:
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.task == "all":
        return list(STUDY_TASKS)
    if not args.task:
        raise UserError("--task is required (carpet, wood, camouflage, folder, coco or all)")
    return [args.task]


def main(argv: list[str] | None = None) -> int:
    """Ctrl-C ends with one line (what to run to continue) and exit code 130, never a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:
        from specialsam.cli import EXIT_INTERRUPTED, interrupted_message

        print(interrupted_message(exc, argv), file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


@cli_errors
def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TQDM_MININTERVAL", "2")
    from specialsam.cli import run_cli

    return run_cli(args, tasks_of(args), overrides(args), argv)


if __name__ == "__main__":
    sys.exit(main())
