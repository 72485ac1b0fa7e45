"""What ``sweeps/run.py`` does once its flags are parsed (kept in the package so it is testable)."""

from __future__ import annotations

import argparse

from specialsam.errors import UserError


def run_cli(args: argparse.Namespace, tasks: list[str], overrides: list[str]) -> int:
    from specialsam.config import default_config_path, load_config
    from specialsam.plan import Plan
    from specialsam.runner import RunOptions, analyze_only, mlflow_ui_hint, run_sweep

    if args.config and len(tasks) > 1:
        raise UserError("--config names one sweep file; use it with a single --task")
    if args.data_root and len(tasks) > 1:
        raise UserError("--data-root points at one dataset; use it with a single --task")
    # every config is validated before anything runs
    configs = [
        (t, load_config(args.config or default_config_path(t), overrides, smoke=args.smoke)) for t in tasks
    ]
    import json
    import os

    opts = RunOptions(
        address=args.address,
        tracking_uri=args.tracking_uri,
        experiment=args.experiment,
        storage=args.storage,
        cache_dir=args.cache_dir,
        checkpoint_dir=args.checkpoint_dir,
        allow_unverified=args.allow_unverified,
        resume=args.resume,
        plan=args.plan,
        export_dir=args.export_dir,
        # test hook for fault injection (see specialsam.sweep._maybe_inject_fault); never set by users
        fault=json.loads(os.environ.get("SPECIALSAM_TEST_FAULTS", "null")),
    )
    if args.analyze_only:
        if len(configs) != 1:
            raise UserError("--analyze-only rebuilds one sweep's report; give a single --task")
        out = analyze_only(configs[0][1], opts, args.analyze_only)
        print(f"\n{out.summary}\n\nreport logged to run {out.parent_run_id} (artifacts: rules/)")
        print(f"browse: {mlflow_ui_hint(out.tracking_uri)}")
        return 0
    outcomes = []
    for task, cfg in configs:
        res = run_sweep(cfg, opts)
        if isinstance(res, Plan):
            print(f"plan for {task} ({', '.join(cfg.models)}):\n{res.format()}")
            continue
        print(f"\n== {task}: verdicts {res.verdicts}\n{res.summary}")
        if res.export_paths:
            full, dec = res.export_paths
            print(f"specialised model: {full}\ndecoder only:      {dec}")
        print(f"sweep: {res.sweep_dir.name}, parent run {res.parent_run_id}")
        outcomes.append((task, res))
    if len(outcomes) > 1:
        from specialsam.study import log_study

        primary = configs[0][1].eval.primary
        run, table = log_study(outcomes[0][1].tracking_uri, outcomes, primary, configs[0][1].rules.threshold)
        print(
            f"\n== the study table ({primary} prompt; logged to experiment specialsam-study, run {run})"
            f"\n{table}"
        )
    if outcomes:
        print(f"\nbrowse the results: {mlflow_ui_hint(outcomes[-1][1].tracking_uri)}")
    return 0
