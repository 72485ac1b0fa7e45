"""Bad input: one line on stderr, exit code 2, no traceback, nothing written to MLflow."""

from __future__ import annotations

import pytest

from tests.conftest import free_port, run_sweep_cli

SMOKE = ["--task", "carpet", "--smoke"]


def _fails(argv, tmp_path, capsys, match: str, env=None):
    with pytest.raises(SystemExit) as exc:
        run_sweep_cli(argv, tmp_path, env=env)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert match in err[0], err[0]
    assert "Traceback" not in err[0]
    assert not (tmp_path / "mlflow.db").exists()  # nothing written
    assert not (tmp_path / "ray_results").exists()
    return err[0]


def test_unknown_task(tmp_path, capsys):
    _fails(["--task", "carpte"], tmp_path, capsys, "unknown task 'carpte'")


def test_yaml_typo_names_the_key(tmp_path, capsys):
    from tests.conftest import REPO

    cfg = tmp_path / "typo.yaml"
    cfg.write_text((REPO / "sweeps" / "carpet.yaml").read_text().replace("num_samples:", "num_sample:"))
    line = _fails(["--task", "carpet", "--config", str(cfg)], tmp_path, capsys, "search.num_sample")
    assert "typo.yaml" in line and "num_samples" in line  # did-you-mean


def test_lr_must_be_positive(tmp_path, capsys):
    _fails([*SMOKE, "--set", "search.space.lr={type: fixed, value: 0}"], tmp_path, capsys, "lr")


def test_both_loss_weights_zero(tmp_path, capsys):
    _fails(
        [
            *SMOKE,
            "--set",
            "search.space.bce_weight={type: fixed, value: 0}",
            "--set",
            "search.space.dice_weight={type: fixed, value: 0}",
        ],
        tmp_path,
        capsys,
        "both 0",
    )


def test_n_train_larger_than_available_says_how_many_exist(tmp_path, capsys, cache_dir):
    line = _fails([*SMOKE, "--set", "curve.n_train=[32, 100000]"], tmp_path, capsys, "100000")
    assert "64 training samples available" in line


@pytest.mark.usefixtures("ray_cluster")
def test_gpus_per_trial_without_gpus(tmp_path, capsys, cache_dir):
    _fails([*SMOKE, "--gpus-per-trial", "0.25"], tmp_path, capsys, "no GPUs")


def test_unreachable_address(tmp_path, capsys, cache_dir):
    _fails([*SMOKE, "--address", f"127.0.0.1:{free_port()}"], tmp_path, capsys, "unreachable")


def test_unreachable_tracking_server(tmp_path, capsys):
    _fails([*SMOKE, "--tracking-uri", f"http://127.0.0.1:{free_port()}"], tmp_path, capsys, "unreachable")


def test_missing_data_root(tmp_path, capsys):
    _fails([*SMOKE, "--data-root", str(tmp_path / "nope")], tmp_path, capsys, "does not exist")


def test_folder_task_needs_a_data_root(tmp_path, capsys):
    _fails(["--task", "folder", "--smoke"], tmp_path, capsys, "--data-root")
