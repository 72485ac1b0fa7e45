"""What ``sweeps/run.py`` does once its flags are parsed (kept in the package so it is testable)."""

from __future__ import annotations

import argparse
import shlex
import sys

from specialsam.errors import UserError

EXIT_INTERRUPTED = 130
"""128 + SIGINT: what a shell reports for a command stopped with Ctrl-C."""
EXIT_TRIALS_ERRORED = 1
"""A sweep ran to its report but some trials errored: the answer is incomplete (``--resume``)."""

SCRIPT = "sweeps/run.py"


def run_cli(
    args: argparse.Namespace, tasks: list[str], overrides: list[str], argv: list[str] | None = None
) -> int:
    from specialsam.config import default_config_path, load_config
    from specialsam.config.grids import set_keys
    from specialsam.sweep.driver import run_sweep
    from specialsam.sweep.finish import analyze_only
    from specialsam.sweep.outputs import RunOptions, mlflow_ui_hint
    from specialsam.sweep.plan import Plan

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
        set_keys=set_keys(overrides),
        # test hook for fault injection (sweep.trainable._maybe_inject_fault); never set by users
        fault=json.loads(os.environ.get("SPECIALSAM_TEST_FAULTS", "null")),
    )
    if getattr(args, "baseline_only", False):
        return _survey(configs, opts)
    if args.analyze_only:
        if len(configs) != 1:
            raise UserError("--analyze-only rebuilds one sweep's report; give a single --task")
        out = analyze_only(configs[0][1], opts, args.analyze_only)
        print(f"\n{out.summary}\n\nreport logged to run {out.parent_run_id} (artifacts: rules/)")
        print(f"browse: {mlflow_ui_hint(out.tracking_uri)}")
        return 0
    outcomes, errors = [], []
    for task, cfg in configs:
        res = run_sweep(cfg, opts)
        if isinstance(res, Plan):
            print(f"plan for {task} ({', '.join(cfg.models)}):\n{res.format()}")
            continue
        print(f"\n== {task}: verdicts {res.verdicts}\n{res.summary}")
        if res.export_paths:
            full, dec = res.export_paths
            print(f"specialised model: {full}\ndecoder only:      {dec}")
        if res.model is not None:
            uri = res.model.registered or res.model.model_uri
            serve = f"MLFLOW_TRACKING_URI={res.tracking_uri} mlflow models serve -m {uri} --env-manager local"
            print(f"MLflow model:      {uri}\n  serve it: {serve} --host 127.0.0.1")
        print(f"sweep: {res.sweep_dir.name}, parent run {res.parent_run_id}")
        outcomes.append((task, res))
        if res.failures and (diverged := res.failures.line("diverged")):
            print(f"note: {task}: {diverged}")
        if res.failures and (errored := res.failures.line("errored")):
            rerun = resume_command(argv or [], task, res.sweep_dir.name)
            errors.append(f"{task}: {errored}; nothing exported; fix the cause and rerun: {rerun}")
    if len(outcomes) > 1:
        from specialsam.sweep.study import log_study

        primary = configs[0][1].eval.primary
        run, table = log_study(outcomes[0][1].tracking_uri, outcomes, primary, configs[0][1].rules.threshold)
        print(
            f"\n== the study table ({primary} prompt; logged to experiment specialsam-study, run {run})"
            f"\n{table}"
        )
    if outcomes:
        print(f"\nbrowse the results: {mlflow_ui_hint(outcomes[-1][1].tracking_uri)}")
    if errors:
        print("\n".join(f"error: {line}" for line in errors), file=sys.stderr, flush=True)
        return EXIT_TRIALS_ERRORED
    return 0


def _survey(configs: list, opts) -> int:
    """``--baseline-only``: the zero-shot survey of each task (sweep.survey), its table printed."""
    from specialsam.sweep.outputs import mlflow_ui_hint
    from specialsam.sweep.survey import run_survey

    for _task, cfg in configs:
        out = run_survey(cfg, opts)
        print(f"\nzero-shot survey ({out.data_kind} data), mIoU [95% CI]:\n{out.table}")
        print(f"logged to run {out.run_id} (artifacts: survey/); browse: {mlflow_ui_hint(out.tracking_uri)}")
    return 0


def _without(argv: list[str], is_flag, value: str) -> list[str]:
    """``argv`` less the flags ``is_flag`` accepts (``--flag=v`` or ``--flag [v]``); ``value``:
    "one" (a value always follows) or "optional" (one follows unless the next token is a flag)."""
    out, skip = [], False
    for i, tok in enumerate(argv):
        if skip:
            skip = False
            continue
        head, eq, _ = tok.partition("=")
        if not is_flag(head):
            out.append(tok)
            continue
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        skip = not eq and nxt is not None and (value == "one" or not nxt.startswith("-"))
    return out


def _is_resume(head: str) -> bool:
    return len(head) >= 3 and "--resume".startswith(head)  # argparse takes any unique prefix


def resume_command(argv: list[str], task: str, sweep: str | None) -> str:
    """The user's command line continuing ``sweep`` (or, without one, simply run again): the same
    flags, ``--resume SWEEP``; a several-task run resumes the task that was interrupted."""
    args = _without(argv, _is_resume, "optional")
    if any(t.partition("=")[0] == "--tasks" for t in args) or "all" in _task_values(args):
        args = ["--task", task, *_without(args, lambda h: h in ("--task", "--tasks"), "one")]
    if sweep:
        args += ["--resume"] if sweep == "latest" else ["--resume", sweep]
    return shlex.join(["python", SCRIPT, *args])


def _task_values(argv: list[str]) -> list[str]:
    out = [t.partition("=")[2] for t in argv if t.startswith("--task=")]
    out += [argv[i + 1] for i, t in enumerate(argv[:-1]) if t == "--task"]
    return out


def interrupted_message(exc: KeyboardInterrupt, argv: list[str]) -> str:
    """The one line a Ctrl-C ends with: what was stopped and the command that continues it."""
    task, sweep = getattr(exc, "task", None), getattr(exc, "sweep", None)  # runner.SweepInterrupted
    if task is None:  # before any sweep began: nothing was written
        return f"interrupted; nothing to resume, run again: {shlex.join(['python', SCRIPT, *argv])}"
    if sweep is None:
        return (
            f"interrupted before sweep {task} saved its state (no MLflow run left RUNNING; embeddings "
            f"encoded so far stay cached); run again: {resume_command(argv, task, None)}"
        )
    return (
        f"interrupted; sweep {task} stopped, its open MLflow runs marked KILLED; resume with: "
        f"{resume_command(argv, task, sweep)}"
    )
