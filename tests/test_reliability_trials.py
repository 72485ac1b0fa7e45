"""Trials that cannot do their work are never silently left out: an errored trial (its process
raised after every retry) makes the sweep exit 1 with one line and the --resume command, its
parent run FAILED and nothing exported; the resume reruns it and finishes the sweep. (Relative
data and cache paths reaching the trials: tests/test_sweep_methods.py, the frozen-head sweep.)"""

from __future__ import annotations

import json

from mlflow.tracking import MlflowClient

from specialsam.cli import EXIT_TRIALS_ERRORED
from tests.conftest import run_sweep_cli

SMALL = ["--task", "carpet", "--smoke", "--models", "tiny-s", "--set", "search.num_samples=1"]
SMALL += ["--set", "curve.n_train=[32]", "--set", "curve.seeds=[0]"]


def _parent(db):
    client = MlflowClient(f"sqlite:///{db}")
    (exp,) = [e for e in client.search_experiments() if e.name.startswith("specialsam-")]
    (parent,) = client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'sweep'")
    return client, exp, parent


def test_an_errored_trial_fails_the_sweep_and_resume_reruns_it(ray_cluster, tmp_path, capsys):
    args = [*SMALL, "--address", ray_cluster.address, "--cache-dir", str(tmp_path / "cache")]
    broken = {"raise": {"match": {"n_train": 32}, "message": "the disk went away"}}
    rc = run_sweep_cli(args, tmp_path, env={"SPECIALSAM_TEST_FAULTS": json.dumps(broken)})
    out = capsys.readouterr()
    assert rc == EXIT_TRIALS_ERRORED
    (line,) = out.err.strip().splitlines()[-1:]
    assert line.startswith("error: carpet: 1 of 2 trials errored (the report leaves them out)"), line
    assert "the disk went away" in line and "nothing exported" in line
    (sweep,) = [p.name for p in (tmp_path / "ray_results").iterdir()]
    assert line.endswith(f"--resume {sweep}"), line
    client, _, parent = _parent(tmp_path / "mlflow.db")
    assert parent.info.status == "FAILED" and parent.data.tags["specialsam.trials_errored"] == "1"
    assert not (tmp_path / "exports").exists()
    report = _report(client, parent, tmp_path / "first")
    said = line.removeprefix("error: carpet: ").split("; nothing exported")[0]
    assert f"> **Trials left out**: {said}." in report  # under the title, before any verdict
    assert report.index("Trials left out") < report.index("## Recommendation")
    # the report rebuilt from MLflow alone says the same
    assert run_sweep_cli([*SMALL, "--analyze-only", parent.info.run_id], tmp_path) == 0
    assert _report(client, parent, tmp_path / "again") == report

    assert run_sweep_cli([*args, "--resume", sweep], tmp_path) == 0
    client, exp, parent = _parent(tmp_path / "mlflow.db")
    assert parent.info.status == "FINISHED" and parent.data.tags["specialsam.trials_errored"] == "0"
    trials = client.search_runs([exp.experiment_id], "tags.`specialsam.role` = 'trial'")
    assert sorted(r.info.status for r in trials) == ["FINISHED", "FINISHED"]
    assert not any("specialsam.failure_kind" in r.data.tags for r in trials)  # the rerun's old failure
    assert list((tmp_path / "exports").glob("carpet-tiny-s-*.pth"))
    assert "Trials left out" not in _report(client, parent, tmp_path / "resumed")


def _report(client, parent, dst) -> str:
    dst.mkdir()
    return open(client.download_artifacts(parent.info.run_id, "rules/report.md", str(dst))).read()
