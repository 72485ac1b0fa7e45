"""The sweep, end to end: one shared smoke sweep, checked through MLflow as a user would see it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from specialsam.sweep.tracking import PARENT, ROLE, TRIAL_ID

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def runs(smoke_sweep):
    client = MlflowClient(smoke_sweep["uri"])
    exp = client.get_experiment_by_name("specialsam-carpet")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_role: dict[str, list] = {}
    for r in all_runs:
        by_role.setdefault(r.data.tags.get(ROLE), []).append(r)
    return client, by_role


def test_parent_run_carries_report_and_verdicts(runs):
    client, by_role = runs
    (parent,) = by_role["sweep"]
    tags = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert tags["specialsam.task"] == "carpet" and tags["specialsam.data"] == "procedural"
    for rule in ("baseline_rule", "data_rule"):
        assert tags[f"specialsam.verdict.{rule}"] in ("supported", "contradicted", "inconclusive")
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "rules")}
    assert {"rules/report.md", "rules/gain_vs_baseline.png", "rules/learning_curve.png"} <= arts
    report = client.download_artifacts(parent.info.run_id, "rules/report.md")
    text = open(report).read()
    assert "demonstration" in text and "decoder-only" in text.lower()
    assert "## Per category" in text  # the carpet stand-in's test defects come in categories
    assert any(a.path.startswith("export/") for a in client.list_artifacts(parent.info.run_id, "export"))


def test_baseline_runs_one_per_model_and_strategy(runs):
    _, by_role = runs
    parent = by_role["sweep"][0].info.run_id
    base = by_role["baseline"]
    assert sorted((r.data.params["model"], r.data.params["strategy"]) for r in base) == [
        ("tiny-s", "box"),
        ("tiny-s", "center"),
    ]
    for r in base:
        assert r.data.tags[PARENT] == parent and r.info.status == "FINISHED"
        assert 0.0 <= r.data.metrics["test_miou"] <= 1.0
        assert r.data.tags["specialsam.protocol.strategy"] == r.data.params["strategy"]
        assert r.data.tags["specialsam.protocol.mask_selection"] == "single"
        assert r.data.tags["specialsam.image_size"] == "tiny-s=256"


def test_trial_runs_follow_the_contract(runs):
    client, by_role = runs
    parent = by_role["sweep"][0].info.run_id
    trials = by_role["trial"]
    # phase A: 4 Optuna trials; phase B: 2 sizes x 2 seeds; each exactly once
    keys = [r.data.tags[TRIAL_ID] for r in trials]
    assert len(keys) == len(set(keys)) == 4 + 4
    assert all(r.info.status in ("FINISHED", "FAILED") for r in trials)  # never left RUNNING
    for r in trials:
        assert r.data.tags[PARENT] == parent
        assert {"lr", "bce_weight", "dice_weight", "n_train", "model", "seed"} <= set(r.data.params)
        assert r.data.tags["specialsam.data"] == "procedural"
        assert r.data.tags["specialsam.prompt_protocol"].startswith("center/single")
    done = [r for r in trials if "test_miou.center" in r.data.metrics]
    assert len(done) >= 4
    for r in done:
        m = r.data.metrics
        assert {"test_miou.box", "baseline_miou", "gain", "retention_miou", "trial_seconds"} <= set(m)
        assert m["gain"] == pytest.approx(m["test_miou.center"] - m["baseline_miou"])
        assert any(k.startswith("test_miou.cat.") for k in m)  # defect categories, primary prompt
        assert r.data.tags["specialsam.health"] in ("ok",) or set(
            r.data.tags["specialsam.health"].split(",")
        ) <= {"collapse", "spike", "divergence"}
        hist = client.get_metric_history(r.info.run_id, "val_miou")
        assert [h.step for h in hist] == list(range(len(hist))) and len(hist) >= 1
        arts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"curves.png", "overlay.png", "result.json"} <= arts


def test_asha_stopped_some_phase_a_trials_early(runs):
    _, by_role = runs
    tune_trials = [r for r in by_role["trial"] if r.data.tags["specialsam.phase"] == "tune"]
    stopped = [r for r in tune_trials if r.data.tags.get("specialsam.stopped_early") == "asha"]
    assert 1 <= len(stopped) < len(tune_trials)
    curve = [r for r in by_role["trial"] if r.data.tags["specialsam.phase"] == "curve"]
    assert not [r for r in curve if r.data.tags.get("specialsam.stopped_early") == "asha"]


def test_optuna_proposed_the_phase_a_configs(runs, smoke_sweep):
    """Phase A's first trial is the default settings, the next one exactly Optuna's suggestion under
    the model's own seed (the sweep's searcher, rebuilt here)."""
    from specialsam.config import default_config_path, load_config
    from specialsam.sweep.driver import search_seed
    from specialsam.sweep.phases import search_alg, tune_param_space

    cfg = load_config(default_config_path("carpet"), ["search.num_samples=4"], smoke=True)
    space = {
        **tune_param_space(cfg.search.space),
        "model": "tiny-s",
        "n_train": cfg.search.n_train,
        "seed": 0,
    }
    searcher = search_alg("optuna", search_seed(cfg, "tiny-s"), cfg.startup_trials(), cfg.default_point())
    searcher.set_search_properties("val_miou", "max", space)
    first, second = searcher.suggest("t0"), searcher.suggest("t1")
    assert first["lr"] == cfg.default_point()["lr"]
    _, by_role = runs
    tune_trials = sorted(
        (r for r in by_role["trial"] if r.data.tags["specialsam.phase"] == "tune"),
        key=lambda r: r.info.start_time,
    )
    lrs = sorted(float(r.data.params["lr"]) for r in tune_trials)
    assert any(np.isclose(first["lr"], lr) for lr in lrs) and any(np.isclose(second["lr"], lr) for lr in lrs)
    assert len(set(lrs)) == len(lrs)  # proposals, not one config repeated
    lo, hi = cfg.search.space["lr"].low, cfg.search.space["lr"].high
    assert all(lo <= lr <= hi for lr in lrs)


def test_trials_ran_on_more_than_one_node(runs):
    _, by_role = runs
    nodes = {
        r.data.tags.get("specialsam.node_id")
        for r in by_role["trial"]
        if r.data.tags.get("specialsam.node_id")
    }
    assert len(nodes) >= 2


def client_report(smoke_sweep, parent) -> str:
    import tempfile

    client = MlflowClient(smoke_sweep["uri"])
    return client.download_artifacts(parent.info.run_id, "rules/report.md", tempfile.mkdtemp())


def test_killed_trial_was_retried_and_nan_trial_failed_cleanly(runs, smoke_sweep):
    _, by_role = runs
    curve = {
        (r.data.params["n_train"], r.data.params["seed"]): r
        for r in by_role["trial"]
        if r.data.tags["specialsam.phase"] == "curve"
    }
    assert list((smoke_sweep["dir"] / "faults").glob("killed-*")), "the fault hook never fired"
    killed = curve[("64", "1")]
    assert killed.info.status == "FINISHED" and "test_miou.center" in killed.data.metrics
    assert killed.data.tags.get("specialsam.retried") == "1"
    nan = curve[("32", "1")]
    assert nan.info.status == "FAILED"
    assert "loss became nan" in nan.data.tags["specialsam.failure"]
    # said, not silently dropped from the curve; a diverged training is a result, not an error
    (parent,) = by_role["sweep"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["specialsam.trials_diverged"] == "1"
    assert parent.data.tags["specialsam.trials_errored"] == "0"
    (note,) = [ln for ln in smoke_sweep["stdout"].splitlines() if ln.startswith("note: carpet: ")]
    assert "1 of " in note and "trials diverged (left out of the learning curve)" in note
    assert "loss became nan" in note
    report = open(client_report(smoke_sweep, parent)).read()
    assert f"> **Trials left out**: {note.removeprefix('note: carpet: ')}." in report


def test_best_trial_decoder_loads_into_a_sam_predictor(runs):
    from segment_anything import SamPredictor

    from specialsam.models.headless import load_decoder_state
    from specialsam.models.registry import load_model

    client, by_role = runs
    best = [r for r in by_role["trial"] if r.data.tags.get("specialsam.best_for_model") == "true"]
    assert len(best) == 1
    path = client.download_artifacts(best[0].info.run_id, "decoder.pt")
    state = torch.load(path, weights_only=True)
    sam, _ = load_model("tiny-s")
    base = {k: v.clone() for k, v in sam.mask_decoder.state_dict().items()}
    load_decoder_state(sam, state)
    assert any(not torch.equal(base[k], v) for k, v in sam.mask_decoder.state_dict().items())
    pred = SamPredictor(sam)
    img = np.zeros((300, 200, 3), np.uint8)
    img[100:200, 50:150] = 200
    pred.set_image(img)
    masks, scores, _ = pred.predict(
        point_coords=np.array([[100, 150]]), point_labels=np.array([1]), multimask_output=False
    )
    assert masks.shape == (1, 300, 200) and np.isfinite(scores).all()


def test_exported_full_checkpoint_loads_in_official_layout(smoke_sweep):
    from specialsam.models.tiny import build_tiny_sam

    (full,) = (smoke_sweep["dir"] / "exports").glob("*.pth")
    state = torch.load(full, weights_only=True)
    sam = build_tiny_sam("tiny-s")
    sam.load_state_dict(state, strict=True)  # the official key layout, every key
    dec = torch.load(str(full).replace(".pth", "-decoder.pt"), weights_only=True)
    for k, v in dec.items():
        assert torch.equal(state[k], v)


def test_analyze_only_rebuilds_the_report_from_mlflow(runs, smoke_sweep):
    from tests.conftest import run_sweep_cli

    _, by_role = runs
    parent = by_role["sweep"][0]
    rc = run_sweep_cli(
        [
            "--task",
            "carpet",
            "--smoke",
            "--set",
            "search.num_samples=4",
            "--analyze-only",
            parent.info.run_id,
        ],
        smoke_sweep["dir"],
    )
    assert rc == 0
    client = MlflowClient(smoke_sweep["uri"])
    after = client.get_run(parent.info.run_id).data.tags
    for rule in ("baseline_rule", "data_rule"):
        assert after[f"specialsam.verdict.{rule}"] == parent.data.tags[f"specialsam.verdict.{rule}"]
    gains = [h.value for h in client.get_metric_history(parent.info.run_id, "gain")]
    assert len(gains) == 2 and gains[0] == gains[1]  # the parent's summary metrics, logged again


def test_trial_record_holds_per_image_iou_aligned_with_baseline(runs):
    client, by_role = runs
    base = next(r for r in by_role["baseline"] if r.data.params["strategy"] == "center")
    b = json.load(open(client.download_artifacts(base.info.run_id, "per_image_iou.json")))
    done = next(r for r in by_role["trial"] if "test_miou.center" in r.data.metrics)
    rec = json.load(open(client.download_artifacts(done.info.run_id, "result.json")))
    assert rec["test"]["center"]["keys"] == b["keys"]
    assert np.mean(rec["test"]["center"]["per_image_iou"]) == pytest.approx(
        done.data.metrics["test_miou.center"]
    )


def test_orphan_trial_runs_of_a_killed_driver_are_deleted_on_resume(tmp_path):
    """Runs whose trial the restored Tune experiment does not know go; every other run stays."""
    from specialsam.sweep.phases import SweepLogging, drop_orphan_trial_runs
    from specialsam.sweep.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "orphans")
    parent = tracker.create_run("sweep", {ROLE: "sweep"})
    ids = {
        key: tracker.create_run(key, {ROLE: "trial", TRIAL_ID: key}, parent=parent)
        for key in ("tune-tiny-s/aaa", "tune-tiny-s/bbb", "tune-tiny-s/orphan", "curve/ccc")
    }
    log = SweepLogging(tracker, parent, {}, {}, {}, "center")
    dirs = ["tune-tiny-s-aaa", "tune-tiny-s-bbb"]  # Tune's trial folders: <name>-<trial_id>
    assert drop_orphan_trial_runs(log, "tune-tiny-s", dirs) == 1
    assert set(tracker.trial_runs(parent)) == {"tune-tiny-s/aaa", "tune-tiny-s/bbb", "curve/ccc"}
    assert tracker.client.get_run(ids["tune-tiny-s/orphan"]).info.lifecycle_stage == "deleted"
    assert drop_orphan_trial_runs(log, "tune-tiny-s", dirs) == 0  # nothing left to drop
