"""The sweep as users see it (issue 24): progress lines, the parent run's summary, dataset inputs and
the specialised model as a registered MLflow pyfunc that loads in a fresh process and serves.

Everything reads the shared smoke sweep (tests/conftest.py); nothing here runs another sweep."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from specialsam.sweep import mlflow_runs as names
from tests.conftest import free_port

pytestmark = pytest.mark.usefixtures("ray_cluster")

LINE = re.compile(r"^\[(?P<phase>[\w-]+)\] (?P<done>\d+)/(?P<total>\d+) trials \((?P<counts>[^)]*)\)")


@pytest.fixture(scope="module")
def sweep(smoke_sweep):
    client = MlflowClient(smoke_sweep["uri"])
    exp = client.get_experiment_by_name("specialsam-carpet")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parent = next(r for r in runs if r.data.tags.get(names.ROLE) == names.ROLE_SWEEP)
    return client, parent, runs


# ------------------------------------------------------------------------------------ progress
def test_progress_lines_reach_each_phases_total(smoke_sweep):
    lines = [m for m in map(LINE.match, smoke_sweep["stdout"].splitlines()) if m]
    by_phase: dict[str, list] = {}
    for m in lines:
        by_phase.setdefault(m["phase"], []).append(m)
    assert set(by_phase) == {"tune-tiny-s", "curve"}
    for phase, ms in by_phase.items():
        done = [int(m["done"]) for m in ms]
        assert done == sorted(done) and done[-1] == int(ms[-1]["total"]) == 4, phase  # one line per trial
        assert len(ms) == 4
    last_curve = by_phase["curve"][-1]["counts"]
    assert "1 failed" in last_curve and "0 running" in last_curve  # the NaN trial; nothing left over
    assert "stopped early" in by_phase["tune-tiny-s"][-1]["counts"]
    text = smoke_sweep["stdout"]
    assert re.search(
        r"\[curve\] 4/4 trials .* best val mIoU 0\.\d{3} \(model=tiny-s, n_train=\d+, seed=\d\)", text
    )
    assert re.search(r"elapsed, ~0:00 left", text)
    assert "Trial status" not in text and "Current time" not in text  # Ray's own tables stay quiet


# ---------------------------------------------------------------------------- the MLflow contract
def test_parent_run_summarises_the_sweep(sweep):
    client, parent, runs = sweep
    m, p = parent.data.metrics, parent.data.params
    per_cell = [
        f"{k}.tiny-s.{s}" for k in ("baseline_miou", "specialised_miou", "gain") for s in ("center", "box")
    ]
    assert set(per_cell) <= set(m)
    headline = {"baseline_miou", "specialised_miou", "gain", "gain_ci_lo", "gain_ci_hi", "retention_change"}
    assert headline <= set(m)
    assert m["gain_ci_lo"] <= m["gain"] <= m["gain_ci_hi"]
    assert m["gain"] == m["gain.tiny-s.center"] and m["baseline_miou"] == m["baseline_miou.tiny-s.center"]
    base = next(
        r
        for r in runs
        if r.data.tags.get(names.ROLE) == names.ROLE_BASELINE and r.data.params["strategy"] == "center"
    )
    assert m["baseline_miou"] == pytest.approx(base.data.metrics["test_miou"])
    report = Path(client.download_artifacts(parent.info.run_id, "rules/report.md")).read_text()
    assert f"{m['gain']:+.3f} [{m['gain_ci_lo']:+.3f}, {m['gain_ci_hi']:+.3f}]" in report
    page = Path(client.download_artifacts(parent.info.run_id, "rules/report.html")).read_text()
    images = report.count("![")  # every plot the report links (gain, curve, clicks, ...)
    assert images >= 3 and page.count('src="data:image/png;base64,') == images  # all inline in the HTML
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == (
        "custom_model_development"  # opens in MLflow 3's runs table ("Model training")
    )
    assert p["recommended.model"] == "tiny-s" and p["recommended.prompt"] == "center"
    assert int(p["recommended.n_train"]) in (32, 64) and "recommended.lr" in p


def test_specialised_model_is_registered_with_the_champion_alias(sweep):
    client, parent, _ = sweep
    version = client.get_model_version_by_alias("specialsam-carpet", "champion")
    assert version.run_id == parent.info.run_id
    assert parent.data.tags[names.LOGGED_MODEL] == "models:/specialsam-carpet@champion"
    assert version.source.startswith("models:/m-")  # the logged model (MLflow 3)
    logged = client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.source_run_id == parent.info.run_id and logged.name == names.PYFUNC_MODEL


def test_parent_and_trials_log_their_data_as_dataset_inputs(sweep):
    _, parent, runs = sweep

    def inputs(run):
        return {
            i.tags[0].value: i.dataset
            for i in run.inputs.dataset_inputs
            if i.tags and i.tags[0].key == "mlflow.data.context"
        }

    top = inputs(parent)
    assert {d.name for d in top.values()} == {"carpet-train", "carpet-val", "carpet-test"}
    assert set(top) == {"training", "validation", "testing"}
    assert json.loads(top["testing"].source)["tags"]["specialsam.data"] == "procedural"
    curve = [r for r in runs if r.data.tags.get(names.PHASE) == "curve"]
    digests: dict[str, set] = {}
    for r in curve:
        mine = inputs(r)
        n = r.data.params["n_train"]
        assert mine["training"].name == f"carpet-train-n{n}"
        assert json.loads(mine["training"].profile)["num_samples"] == int(n)
        assert mine["testing"].digest == top["testing"].digest  # the same test split everywhere
        digests.setdefault(n, set()).add(mine["training"].digest)
    assert len(digests) == 2 and all(len(d) == 1 for d in digests.values())  # seeds share the data
    assert len(set().union(*digests.values())) == 2  # 32 and 64 samples differ
    for base in (r for r in runs if r.data.tags.get(names.ROLE) == names.ROLE_BASELINE):
        assert {c: d.name for c, d in inputs(base).items()} == {"testing": "carpet-test"}


# ------------------------------------------------------------------------ the pyfunc, load and serve
def _image_and_prompts():
    from specialsam.prompts import tight_box
    from specialsam.tasks.procedural.scenes import make_scene

    sc = make_scene((4242, 77))
    mask = max(sc.targets, key=lambda t: t.sum())
    ys, xs = np.nonzero(mask)
    i = len(xs) // 2
    return sc.image, [int(xs[i]), int(ys[i])], [int(v) for v in tight_box(mask)]


def _our_masks(smoke_sweep, image, point, box) -> list[np.ndarray]:
    """The exported specialised checkpoint through our own inference (not the pyfunc)."""
    from specialsam.models.inference import encode, predict_masks
    from specialsam.models.registry import load_model
    from specialsam.prompts import box_prompt, points_prompt

    (full,) = (smoke_sweep["dir"] / "exports").glob("*.pth")
    sam, _ = load_model("tiny-s", checkpoint=full, allow_unverified=True)
    emb = encode(sam, [image, image])
    prompts = [points_prompt([point]), box_prompt(*box)]
    return predict_masks(sam, emb, prompts, [image.shape[:2]] * 2, "single")


LOAD = """
import json, sys
import mlflow, numpy as np, pandas as pd
d = json.load(open(sys.argv[1]))
model = mlflow.pyfunc.load_model("models:/specialsam-carpet@champion")
rows = pd.DataFrame({"image": [d["image"]] * 2, "point": [d["point"], None], "box": [None, d["box"]]})
out = model.predict(rows)
import specialsam
masks = [np.asarray(m).tolist() for m in out["mask"]]
json.dump({"masks": masks, "code": specialsam.__file__}, open(sys.argv[2], "w"))
"""


def _env(smoke_sweep) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the model brings its own code
    env.update(MLFLOW_TRACKING_URI=smoke_sweep["uri"], OMP_NUM_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # uvicorn
    return env


def test_pyfunc_loads_in_a_fresh_process_and_predicts_our_masks(sweep, smoke_sweep, tmp_path):
    image, point, box = _image_and_prompts()
    (tmp_path / "in.json").write_text(json.dumps({"image": image.tolist(), "point": point, "box": box}))
    (tmp_path / "load.py").write_text(LOAD)
    subprocess.run(
        [sys.executable, "load.py", "in.json", "out.json"],
        cwd=tmp_path,
        env=_env(smoke_sweep),
        check=True,
        timeout=180,
    )
    got = json.loads((tmp_path / "out.json").read_text())
    assert "/code/specialsam/" in got["code"]  # imported from the model's own code, not the checkout
    want = _our_masks(smoke_sweep, image, point, box)
    for g, w in zip(got["masks"], want, strict=True):
        g = np.asarray(g, bool)
        assert g.shape == image.shape[:2] and w.any()
        np.testing.assert_array_equal(g, w)


def test_mlflow_models_serve_answers_an_invocation(sweep, smoke_sweep, tmp_path):
    image, point, box = _image_and_prompts()
    port = free_port()
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cli), "models", "serve", "-m", "models:/specialsam-carpet@champion"]
    cmd += ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(smoke_sweep), stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/ping", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"image": image.tolist(), "point": point}]}).encode()
        req = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            (pred,) = json.loads(r.read())["predictions"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    np.testing.assert_array_equal(
        np.asarray(pred["mask"], bool), _our_masks(smoke_sweep, image, point, box)[0]
    )


# ------------------------------------------------------------------------------- console command
def test_console_command_dispatches_to_the_three_command_lines(capsys):
    from specialsam.console import main

    assert main(["models", "list"]) == 0
    assert "tiny-s" in capsys.readouterr().out
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the sweep script's one-line errors, exit 2
        main(["sweep", "--task", "no-such-task"])
    assert exc.value.code == 2
    assert "unknown task 'no-such-task'" in capsys.readouterr().err
