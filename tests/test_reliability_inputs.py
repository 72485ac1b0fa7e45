"""Hostile configs, bad output locations and non-finite numbers (issue #18, defects 6-8).

Each case is one line on stderr, exit code 2, no traceback, and nothing written: no MLflow
database, experiment or artifact folder, no sweep folder, no export."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sweep_cli

SMOKE = ["--task", "carpet", "--smoke"]
OUTPUTS = ("mlflow.db", "mlartifacts", "ray_results", "exports")


def _fails(argv, cwd: Path, capsys, *needles: str, keep: tuple[str, ...] = ()) -> str:
    """Run sweeps/run.py in-process in ``cwd``; assert the one-line error and that nothing was
    written there except the paths in ``keep`` (ones the test made)."""
    before = set(cwd.iterdir())
    capsys.readouterr()  # drop what the test's own set-up printed
    with pytest.raises(SystemExit) as exc:
        run_sweep_cli(argv, cwd)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    assert set(cwd.iterdir()) == before, "something was written"
    assert not any((cwd / name).exists() for name in OUTPUTS if name not in keep)
    return err[0]


# ------------------------------------------------------------------ 6. YAML alias bomb


def _billion_laughs(path: Path, levels: int = 9, width: int = 9) -> Path:
    lines = ["task: carpet", "a0: &a0 [" + ",".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_alias_bomb_config_fails_at_once(tmp_path, capsys):
    cfg = _billion_laughs(tmp_path / "bomb.yaml")
    assert cfg.stat().st_size < 500  # 9 levels of 9: 387 million strings once expanded
    line = _fails(["--task", "carpet", "--config", str(cfg)], tmp_path, capsys, "bomb.yaml", "aliases")
    assert "line 2" in line
    from specialsam.config import load_config
    from specialsam.errors import UserError

    start = time.perf_counter()  # the reading alone (the CLI call above also imported the package)
    with pytest.raises(UserError):
        load_config(cfg)
    assert time.perf_counter() - start < 0.5


def test_alias_in_a_set_value_is_refused(tmp_path, capsys):
    _fails([*SMOKE, "--set", "curve.n_train=&n [32, *n]"], tmp_path, capsys, "--set curve.n_train", "aliases")


def test_absurdly_nested_config_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "deep.yaml"
    cfg.write_text("task: carpet\ndata: " + "[" * 5000 + "]" * 5000 + "\n")
    _fails(["--task", "carpet", "--config", str(cfg)], tmp_path, capsys, "deep.yaml", "nested too deeply")


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_endless_config_file_is_read_no_further_than_a_limit(tmp_path, capsys):
    _fails(["--task", "carpet", "--config", "/dev/zero"], tmp_path, capsys, "/dev/zero", "larger than")


def test_shipped_sweeps_use_no_anchors():
    from specialsam.config import load_config

    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        load_config(path, smoke=True)


# ------------------------------------------------------- 7. output locations, disk full


@pytest.mark.parametrize("flag", ["--export-dir", "--storage", "--cache-dir"])
def test_output_location_that_is_a_file(tmp_path, capsys, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _fails([*SMOKE, flag, str(blocker)], tmp_path, capsys, flag, str(blocker), "not a folder")


def test_output_location_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    _fails([*SMOKE, "--export-dir", str(blocker / "sub")], tmp_path, capsys, "--export-dir", "a-file")


def test_sqlite_database_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    _fails([*SMOKE, "--tracking-uri", uri], tmp_path, capsys, "MLflow database folder", "a-file")


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")),
    reason="a PostgreSQL driver is installed",
)
def test_postgresql_uri_without_its_driver(tmp_path, capsys):
    line = _fails(
        [*SMOKE, "--tracking-uri", "postgresql://alice:s3cret@127.0.0.1:1/sweeps"],
        tmp_path,
        capsys,
        "--tracking-uri",
        "pip install psycopg",
    )
    assert "s3cret" not in line  # the password is never echoed


@pytest.mark.parametrize("content", ['{"parent_run_id": "abc", "conf', "[]", '{"parent_run_id": 3}'])
def test_corrupt_sweep_state_on_resume(tmp_path, capsys, content):
    state = tmp_path / "ray_results" / "carpet-20240101-000000" / "sweep.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    line = _fails([*SMOKE, "--resume"], tmp_path, capsys, "sweep.json", "corrupt", keep=("ray_results",))
    assert str(state) in line and "without --resume" in line
    assert state.read_text() == content  # left as it was


def _saved_sweep(tmp_path: Path, edit) -> Path:
    """A sweep.json as an older version wrote it: the smoke config as the driver saved it,
    changed by ``edit``."""
    import json

    from specialsam.config import config_to_dict, default_config_path, load_config
    from specialsam.sweep.driver import prepare
    from specialsam.sweep.outputs import RunOptions

    cfg, _, _ = prepare(load_config(default_config_path("carpet"), smoke=True), RunOptions(cwd=tmp_path))
    config = config_to_dict(cfg)
    edit(config)
    state = tmp_path / "ray_results" / "carpet-20240101-000000" / "sweep.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"parent_run_id": "abc", "config": config, "best": {}, "done": []}))
    return state


def test_a_sweep_saved_before_the_method_axis_resumes(tmp_path, capsys):
    """Keys added since (``methods``, ``method``) take today's defaults: the same sweep."""
    _saved_sweep(tmp_path, lambda c: (c.pop("methods"), c.pop("method")))
    assert run_sweep_cli([*SMOKE, "--resume", "--plan"], tmp_path) == 0
    assert "plan for" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda c: c["search"].update(num_samples=c["search"]["num_samples"] + 1), "config differs"),
        (lambda c: c.update(methods=["sideways"]), "no longer valid"),
    ],
)
def test_a_changed_or_invalid_saved_config_refuses_to_resume(tmp_path, capsys, edit, needle):
    state = _saved_sweep(tmp_path, edit)
    before = state.read_text()
    _fails([*SMOKE, "--resume", "--plan"], tmp_path, capsys, "--resume", needle, keep=("ray_results",))
    assert state.read_text() == before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("how", ["path", "file object"])
def test_disk_full_is_one_line_naming_the_path(capsys, how):
    """/dev/full answers every write with ENOSPC, as a full disk does."""
    from specialsam.errors import cli_errors

    @cli_errors
    def main() -> None:
        if how == "path":
            Path("/dev/full").write_bytes(b"x" * 8192)
        else:
            with open("/dev/full", "wb") as f:  # f.write's OSError carries no file name
                f.write(b"x" * 8192)

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left" in err[0] and "/dev/full" in err[0], err
    assert "free space" in err[0]


def test_other_errors_still_raise():
    from specialsam.errors import cli_errors

    @cli_errors
    def main() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        main()


# ------------------------------------------------------------ 8. non-finite numbers


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("search.space.lr=.inf", "search.space.lr"),
        ("search.space.lr={type: loguniform, low: 1e-4, high: 1e999}", "search.space.lr.high"),
        ("search.space.bce_weight=.nan", "search.space.bce_weight"),
        ("train.weight_decay=.inf", "train.weight_decay"),
    ],
)
def test_non_finite_set_value(tmp_path, capsys, value, key):
    _fails([*SMOKE, "--plan", "--set", value], tmp_path, capsys, f"--set {value}", f"{key} must be a finite")


def test_non_finite_number_in_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "inf.yaml"
    cfg.write_text(
        "task: carpet\nsearch: {n_train: 32}\ncurve: {n_train: [32]}\ntrain: {weight_decay: .inf}\n"
    )
    _fails(["--task", "carpet", "--plan", "--config", str(cfg)], tmp_path, capsys, "inf.yaml", "finite")


@pytest.mark.parametrize(
    ("flag", "value"), [("--lr", "inf"), ("--dice-weight", "nan"), ("--focal-weight", "inf")]
)
def test_trial_flags_must_be_finite(flag, value):
    from specialsam.errors import UserError
    from specialsam.trial import parse_args, resolve

    with pytest.raises(UserError, match=f"^{flag} must be a finite number"):
        resolve(parse_args([flag, value]))


def test_train_config_refuses_non_finite():
    from specialsam.errors import UserError
    from specialsam.finetune.train import TrainConfig

    with pytest.raises(UserError, match="finite"):
        TrainConfig(lr=float("inf")).validate()


def test_analyze_only_with_no_database_creates_none(tmp_path, capsys):
    _fails([*SMOKE, "--analyze-only", "0123456789abcdef"], tmp_path, capsys, "--analyze-only", "mlflow.db")


def test_analyze_only_bogus_run_creates_no_experiment(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("elsewhere", artifact_location=(tmp_path / "art").as_uri())
    before = [e.name for e in client.search_experiments()]
    _fails(
        [*SMOKE, "--analyze-only", "0123456789abcdef"],
        tmp_path,
        capsys,
        "no such run",
        keep=("mlflow.db",),
    )
    assert [e.name for e in MlflowClient(uri).search_experiments()] == before
