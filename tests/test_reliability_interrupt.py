"""Ctrl-C stops a sweep (#18): exit 130, open MLflow runs KILLED, no phase B, the resume command
printed; that command then finishes the sweep with every trial once. The driver is a separate
process on the session's Ray cluster, as in tests/test_cluster.py, and SIGINT reaches the driver
alone while a phase-A trial lingers in the fault hook."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from specialsam.cli import EXIT_INTERRUPTED, resume_command
from specialsam.sweep.tracking import ROLE, TRIAL_ID
from tests.conftest import REPO, run_sweep_cli, running_trials

SMALL = ["--task", "carpet", "--smoke", "--set", "search.num_samples=2"]
SMALL += ["--set", "curve.n_train=[32]", "--set", "curve.seeds=[0]"]


def _driver(args: list[str], cwd, env_extra: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_extra}
    return subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "run.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _runs(db) -> list:
    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("specialsam-carpet")
    return list(client.search_runs([exp.experiment_id], max_results=1000))


def _cluster_cpus_free(ray_cluster, timeout: float = 30) -> bool:
    """Every CPU of the session's cluster free again (no trial actor of the stopped driver left)."""
    import ray

    deadline = time.time() + timeout
    while time.time() < deadline:
        if ray.available_resources().get("CPU", 0) >= ray.cluster_resources().get("CPU", -1):
            return True
        time.sleep(0.5)
    return False


def test_ctrl_c_stops_the_sweep_and_its_resume_command_finishes_it(ray_cluster, tmp_path):
    import ray

    args = [*SMALL, "--address", ray_cluster.address, "--cache-dir", str(tmp_path / "cache")]
    release = tmp_path / "release"
    linger = {"sleep": {"match": {"n_train": 64}, "at_step": 1, "seconds": 60, "until_file": str(release)}}
    env = {"SPECIALSAM_TEST_FAULTS": json.dumps(linger)}
    db = tmp_path / "mlflow.db"
    proc = _driver(args, tmp_path, env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and running_trials(db) < 1:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert running_trials(db) >= 1, "no phase-A trial ever ran"
        os.kill(proc.pid, signal.SIGINT)  # the driver alone, as `kill -INT` or a terminal's Ctrl-C
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "Tuner.restore" not in out, out[-3000:]
    line = next(x for x in out.splitlines() if "resume with: " in x)
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["python", "sweeps/run.py"] and command[-2] == "--resume"
    sweep = command[-1]
    assert (tmp_path / "ray_results" / sweep / "sweep.json").is_file()

    runs = _runs(db)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get(ROLE) == "sweep"]
    assert parent.info.status == "KILLED"
    killed = {
        r.data.tags[TRIAL_ID]: r.info.run_id
        for r in runs
        if r.info.status == "KILLED" and r.data.tags.get(ROLE) == "trial"
    }
    assert any(k.startswith("tune-tiny-s/") for k in killed)
    assert not [r for r in runs if r.data.tags.get("specialsam.phase") == "curve"]  # phase B never began
    assert not (tmp_path / "exports").exists()
    # the user's cluster lives on, its resources all free again
    assert sum(n["Alive"] for n in ray.nodes()) >= 2
    assert _cluster_cpus_free(ray_cluster)

    release.touch()
    resumed = _driver(command[2:], tmp_path, env)  # exactly the printed command
    out = resumed.communicate(timeout=240)[0].decode()
    assert resumed.returncode == 0, out[-3000:]
    runs = _runs(db)
    trials = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    keys = [r.data.tags[TRIAL_ID] for r in trials]
    assert len(keys) == len(set(keys)) == 2 + 1  # every trial exactly once
    assert all(r.info.status == "FINISHED" for r in runs)
    for key, run_id in killed.items():  # the interrupted trials' runs were reused, not doubled
        if key in keys:
            assert [r.info.run_id for r in trials if r.data.tags[TRIAL_ID] == key] == [run_id]
    assert [r.info.run_id for r in runs if r.data.tags.get(ROLE) == "sweep"] == [parent.info.run_id]


@pytest.mark.parametrize(
    ("argv", "task", "sweep", "expected"),
    [
        (["--task", "carpet", "--smoke"], "carpet", "carpet-1", "--task carpet --smoke --resume carpet-1"),
        (["--task", "carpet", "--resume", "--smoke"], "carpet", "latest", "--task carpet --smoke --resume"),
        (["--res=old", "--task", "carpet"], "carpet", "carpet-2", "--task carpet --resume carpet-2"),
        (["--task", "all", "--set", "a=b c"], "wood", "wood-1", "--task wood --set 'a=b c' --resume wood-1"),
        (["--tasks", "carpet,wood", "--smoke"], "wood", None, "--task wood --smoke"),
    ],
)
def test_resume_command_keeps_the_users_flags(argv, task, sweep, expected):
    assert resume_command(argv, task, sweep) == f"python sweeps/run.py {expected}"


def test_resume_scores_again_a_baseline_an_interrupt_cut_short(tmp_path):
    """A baseline run left KILLED (Ctrl-C between its creation and its scores) is not reused on
    resume (it has no per-image IoU to download) and not doubled: it goes to MLflow's trash."""
    from specialsam.sweep.driver import _reusable_baselines
    from specialsam.sweep.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "specialsam-carpet")
    parent = tracker.create_run("sweep", {ROLE: "sweep"})
    done = tracker.create_run("b", {ROLE: "baseline", TRIAL_ID: "baseline/tiny-s/box"}, parent=parent)
    tracker.finish(done)
    cut = tracker.create_run("c", {ROLE: "baseline", TRIAL_ID: "baseline/tiny-s/center"}, parent=parent)
    assert tracker.close_sweep(parent) == 1  # the Ctrl-C: open child and parent KILLED
    assert tracker.client.get_run(parent).info.status == "KILLED"
    assert tracker.client.get_run(cut).info.status == "KILLED"

    reusable = _reusable_baselines(tracker, parent)
    assert {k: r.info.run_id for k, r in reusable.items()} == {"baseline/tiny-s/box": done}
    assert tracker.client.get_run(cut).info.lifecycle_stage == "deleted"
    assert [r.info.run_id for r in tracker.children(parent, "baseline")] == [done]


def test_an_error_mid_sweep_leaves_no_run_running(ray_cluster, tmp_path, monkeypatch):
    """Not only Ctrl-C: a sweep that stops on an error marks its open runs FAILED (the MLflow UI
    never shows a dead sweep as running) and keeps its state for --resume."""
    from specialsam.sweep import driver

    def broken(sweep):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(driver, "score_baselines", broken)
    args = [*SMALL, "--address", ray_cluster.address, "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(RuntimeError, match="scoring broke"):
        run_sweep_cli(args, tmp_path)
    runs = _runs(tmp_path / "mlflow.db")
    assert [r.data.tags[ROLE] for r in runs] == ["sweep"]
    assert runs[0].info.status == "FAILED"
    assert len(list((tmp_path / "ray_results").glob("carpet-*/sweep.json"))) == 1
