"""Several tasks in one command: the wood and camouflage stand-ins end to end, and the study table.

One trimmed smoke sweep per task on the session's Ray cluster: what is checked here is what only
these tasks have (extra test sets: the other wood mode, the camouflage transfer set; categories;
the cross-task study run), the shared contract is checked on the carpet smoke sweep."""

from __future__ import annotations

import pytest

from tests.conftest import run_sweep_cli

TRIM = ["search.num_samples=2", "curve.n_train=[32,64]", "curve.seeds=[0]", "eval.retention_n=0"]


@pytest.fixture(scope="module")
def study(ray_cluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    argv = ["--tasks", "wood,camouflage", "--smoke", "--cache-dir", str(d / "cache")]
    rc = run_sweep_cli(argv + sum((["--set", s] for s in TRIM), []), d)
    assert rc == 0
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{d / 'mlflow.db'}")


def _runs(client, experiment: str, role: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`specialsam.role` = '{role}'")


@pytest.mark.parametrize(
    "task, extra", [("wood", "extra_miou.hard"), ("camouflage", "extra_miou.procedural-transfer")]
)
def test_extra_test_sets_are_scored_for_baseline_and_trials(study, task, extra):
    (base,) = [
        r for r in _runs(study, f"specialsam-{task}", "baseline") if r.data.params["strategy"] == "center"
    ]
    assert 0 <= base.data.metrics[extra] <= 1
    assert any(k.startswith("test_miou.cat.") for k in base.data.metrics)
    done = [r for r in _runs(study, f"specialsam-{task}", "trial") if "test_miou.center" in r.data.metrics]
    assert done
    for r in done:
        m = r.data.metrics
        change = extra.replace("extra_miou", "extra_change")
        assert m[change] == pytest.approx(m[extra] - base.data.metrics[extra])
    (parent,) = _runs(study, f"specialsam-{task}", "sweep")
    text = open(study.download_artifacts(parent.info.run_id, "rules/report.md")).read()
    assert "## Extra test sets" in text and "## Per category" in text


def test_study_run_tabulates_both_tasks(study):
    (run,) = _runs(study, "specialsam-study", "study")
    assert run.data.tags["specialsam.tasks"] == "wood,camouflage"
    assert any(k.startswith("baseline.wood.") for k in run.data.metrics)
    assert any(k.startswith("baseline.camouflage.") for k in run.data.metrics)
    arts = {a.path for a in study.list_artifacts(run.info.run_id)}
    assert {"study_table.md", "gain_vs_baseline_across_tasks.png", "study_table.json"} <= arts
