"""Sweep config: the shipped YAMLs load, every mistake is one line naming the key, overrides order."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from specialsam.config import (
    SWEEPS_DIR,
    SweepConfig,
    config_to_dict,
    default_config_path,
    load_config,
    parse_override,
)
from specialsam.errors import UserError
from specialsam.tasks import TASKS, load_task, task_module, task_options

SHIPPED = sorted(TASKS)


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def error_of(path: Path, overrides: list[str] | tuple[str, ...] = (), smoke: bool = False) -> str:
    with pytest.raises(UserError) as info:
        load_config(path, list(overrides), smoke=smoke)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------ shipped configs


@pytest.mark.parametrize("task", SHIPPED)
@pytest.mark.parametrize("smoke", [False, True])
def test_shipped_yaml_loads_and_its_data_fits_the_task(task, smoke):
    path = default_config_path(task)
    assert path == SWEEPS_DIR / f"{task}.yaml" and path.is_file()
    cfg = load_config(path, smoke=smoke)
    assert cfg.task == task
    options = task_options(task, cfg.data)
    assert isinstance(options, task_module(task).Options)
    names = {f.name for f in dataclasses.fields(options)}
    assert set(cfg.data) <= names
    for key, value in cfg.data.items():
        assert getattr(options, key) == value
    # the sizes the sweep asks for are ascending and the search size is a sensible one
    assert cfg.curve.n_train == sorted(set(cfg.curve.n_train))
    assert cfg.curve_max_n() == cfg.curve.n_train[-1]
    assert cfg.max_n_train() == max(cfg.curve.n_train[-1], cfg.search.n_train)
    assert cfg.eval.primary in cfg.eval.strategies
    if smoke:
        assert cfg.models == ["tiny-s"]
        assert cfg.search.num_samples == 3 and cfg.search.n_train == 64
        assert cfg.train.epochs == 3 and cfg.train.max_steps == 12
        assert cfg.curve.n_train == [32, 64] and cfg.curve.seeds == [0, 1]
        assert cfg.eval.strategies == ["center", "box"] and cfg.eval.retention_n == 20
        assert cfg.eval.extra_metrics is False
    else:
        assert cfg.models == ["tiny-s", "tiny-m"]
        assert cfg.data_root is None


def test_shipped_yamls_comment_every_setting():
    """Users read these files: every setting line above the smoke: overrides says what it does."""
    for task in SHIPPED:
        lines = (SWEEPS_DIR / f"{task}.yaml").read_text().splitlines()
        assert any(line.startswith("smoke:") for line in lines), task
        for i, line in enumerate(lines, 1):
            if line.startswith("smoke:"):
                break
            if line.strip() and not line.lstrip().startswith("#"):
                assert "#" in line, f"sweeps/{task}.yaml line {i} has no comment: {line!r}"


def test_shipped_default_sizes_cover_the_curve():
    """The stand-ins generate enough training samples for the largest curve size."""
    carpet = load_config(default_config_path("carpet"))
    assert carpet.data["n_synthetic"] >= carpet.max_n_train()
    assert carpet.data["standin_size"] == 256 and carpet.data["max_side"] == 512
    wood = load_config(default_config_path("wood"))
    assert wood.data["n_train"] >= wood.max_n_train()
    cam = load_config(default_config_path("camouflage"))
    opts = task_options("camouflage", cam.data)
    assert int(opts.procedural_train * (1 - opts.val_fraction)) >= cam.max_n_train()


@pytest.mark.parametrize("task", ["carpet", "wood", "camouflage"])
def test_smoke_data_loads_with_enough_training_samples(task):
    cfg = load_config(default_config_path(task), smoke=True)
    data = load_task(task, cfg.data_root, cfg.data, cfg.seed)
    assert data.data == "procedural"
    assert len(data.train) >= cfg.max_n_train()
    assert len(data.val) >= 1 and len(data.test) >= 1


def test_folder_yaml_has_no_standin():
    cfg = load_config(default_config_path("folder"), smoke=True)
    with pytest.raises(UserError, match="--data-root"):
        load_task("folder", cfg.data_root, cfg.data, cfg.seed)


def test_default_config_path_errors(monkeypatch, tmp_path):
    with pytest.raises(UserError, match=r"unknown task 'carpt' \(did you mean 'carpet'\?\)"):
        default_config_path("carpt")
    monkeypatch.setattr("specialsam.config.loading.SWEEPS_DIR", tmp_path)
    with pytest.raises(UserError, match="no shipped sweep config for task wood"):
        default_config_path("wood")


def test_config_to_dict_round_trips_through_json():
    cfg = load_config(default_config_path("carpet"), ["search.space.dice_weight=[0.5, 1]"])
    d = config_to_dict(cfg)
    again = json.loads(json.dumps(d))
    assert again == d
    assert SweepConfig.model_validate(again) == cfg
    assert d["search"]["space"]["dice_weight"] == {
        "type": "choice",
        "low": None,
        "high": None,
        "values": [0.5, 1.0],
        "value": None,
    }
    assert d["curve"]["n_train"] == cfg.curve.n_train


def test_defaults_and_base_params(tmp_path):
    cfg = load_config(write(tmp_path, "task: carpet\ntrain: {weight_decay: 0.01}\n"))
    assert cfg.models == ["tiny-s", "tiny-m"] and cfg.search.num_samples == 8
    assert cfg.curve.n_train == [125, 250, 500, 1000, 2000, 4000, 8000] and cfg.curve.seeds == [0, 1, 2]
    assert cfg.eval.strategies == ["center", "box", "random3"] and cfg.eval.primary == "center"
    assert cfg.rules.threshold == 0.75 and cfg.rules.claimed_n == 5000
    base = cfg.base_params()
    assert base["weight_decay"] == 0.01  # from train:, not TrainConfig
    from specialsam.finetune.train import TrainConfig

    assert base["lr"] == TrainConfig().lr and base["dice_weight"] == TrainConfig().dice_weight


def test_yaml11_exponent_floats_and_shorthand_params(tmp_path):
    text = "task: carpet\nsearch:\n  space:\n    lr: 1e-3\n    bce_weight: [0.25, 1]\n"
    cfg = load_config(write(tmp_path, text))
    lr, bce = cfg.search.space["lr"], cfg.search.space["bce_weight"]
    assert (lr.type, lr.value) == ("fixed", 1e-3)
    assert (bce.type, bce.values) == ("choice", [0.25, 1.0])


# ------------------------------------------------------------------------------ overrides


def test_override_order_file_then_smoke_then_cli(tmp_path):
    text = (
        "task: carpet\nsearch: {num_samples: 5, n_train: 300}\n"
        "smoke:\n  search.num_samples: 2\n  models: [tiny-s]\n"
    )
    path = write(tmp_path, text)
    assert load_config(path).search.num_samples == 5
    assert load_config(path).models == ["tiny-s", "tiny-m"]
    assert load_config(path, smoke=True).search.num_samples == 2
    cfg = load_config(path, ["search.num_samples=7"], smoke=True)
    assert cfg.search.num_samples == 7 and cfg.models == ["tiny-s"] and cfg.search.n_train == 300
    # later --set wins over earlier --set
    assert load_config(path, ["search.num_samples=4", "search.num_samples=6"]).search.num_samples == 6


def test_overrides_parse_values_as_yaml(tmp_path):
    path = default_config_path("carpet")
    cfg = load_config(
        path,
        [
            "models=[tiny-s]",
            "data.n_synthetic=300",
            "search.space.lr.low=1e-5",
            "data_root=",
            "resources.max_concurrent=2",
        ],
    )
    assert cfg.models == ["tiny-s"] and cfg.data["n_synthetic"] == 300
    assert cfg.search.space["lr"].low == 1e-5 and cfg.data_root is None
    assert cfg.resources.max_concurrent == 2
    assert parse_override("storage.tune_dir = s3://bucket/x") == ("storage.tune_dir", "s3://bucket/x")


def test_nested_smoke_section_is_accepted(tmp_path):
    text = "task: carpet\nsmoke:\n  search: {num_samples: 2}\n  data: {n_synthetic: 40}\n"
    cfg = load_config(write(tmp_path, text), smoke=True)
    assert cfg.search.num_samples == 2 and cfg.data["n_synthetic"] == 40


def test_malformed_set(tmp_path):
    msg = error_of(default_config_path("carpet"), ["search.num_samples"])
    assert msg.startswith("--set search.num_samples:") and "KEY=VALUE" in msg
    msg = error_of(default_config_path("carpet"), ["train.epochs=[1"])
    assert msg.startswith("--set train.epochs=[1:") and "not valid YAML" in msg


def test_unknown_set_key_suggests(tmp_path):
    msg = error_of(default_config_path("carpet"), ["search.num_sampls=4"])
    assert msg == (
        "--set search.num_sampls: unknown setting 'search.num_sampls' (did you mean 'search.num_samples'?)"
    )
    msg = error_of(default_config_path("carpet"), ["data.n_synth=3"])
    assert msg.startswith("--set data.n_synth: unknown setting 'data.n_synth'")
    assert "did you mean 'data.n_synthetic'?" in msg
    msg = error_of(default_config_path("carpet"), ["models.x=1"])
    assert msg.startswith("--set models.x:") and "'models' is a single setting" in msg


def test_bad_set_value_names_the_override():
    msg = error_of(default_config_path("carpet"), ["search.num_samples=0"])
    assert msg == "--set search.num_samples=0: search.num_samples must be >= 1 (got 0)"
    msg = error_of(default_config_path("carpet"), ["eval.strategies=[box]"])
    assert msg.startswith("sweeps/carpet.yaml with --set eval.strategies=[box]: eval.primary")


def test_bad_smoke_section_is_caught_without_smoke(tmp_path):
    path = write(tmp_path, "task: carpet\nsmoke:\n  search.num_sampls: 2\n")
    msg = error_of(path)
    assert "(smoke search.num_sampls)" in msg
    assert "unknown setting 'search.num_sampls' (did you mean 'search.num_samples'?)" in msg
    path = write(tmp_path, "task: carpet\nsmoke:\n  search.num_samples: 0\n")
    assert error_of(path).endswith("(smoke search.num_samples): search.num_samples must be >= 1 (got 0)")


def test_file_errors_come_before_smoke_errors_and_set_can_fix_them(tmp_path):
    path = write(tmp_path, "task: carpet\nsearch: {num_samples: 0}\nsmoke:\n  search.num_samples: 3\n")
    assert error_of(path) == f"{path}: search.num_samples must be >= 1 (got 0)"
    assert load_config(path, smoke=True).search.num_samples == 3
    assert load_config(path, ["search.num_samples=2"]).search.num_samples == 2


# ------------------------------------------------------------------------------ one-line errors


CASES = [
    # (yaml text, expected message after "<file>: ")
    ("task: carpet\nsearch:\n  spce: {}\n", "unknown setting 'search.spce' (did you mean 'search.space'?)"),
    ("task: carpet\ntrian: {epochs: 2}\n", "unknown setting 'trian' (did you mean 'train'?)"),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: loguniform, low: 0, high: 1}\n",
        "search.space.lr.low must be > 0 for a loguniform range (got 0)",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: uniform, low: 0, high: 1}\n",
        "search.space.lr.low must be > 0 (got 0)",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: fixed, value: -0.1}\n",
        "search.space.lr.value must be > 0 (got -0.1)",
    ),
    ("task: carpet\nsearch:\n  space:\n    lr: [1e-3, 0]\n", "search.space.lr.values[1] must be > 0 (got 0)"),
    (
        "task: carpet\nsearch:\n  space:\n    bce_weight: 0\n    dice_weight: {type: choice, values: [0]}\n",
        "search.space: bce_weight and dice_weight are both 0: the loss would be empty",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    bce_weight: [0, 1]\n    dice_weight: [0, 0.5]\n",
        "search.space: bce_weight and dice_weight can both be 0: the loss would be empty",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    dice_weight: -1\n",
        "search.space.dice_weight.value must be >= 0 (got -1)",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    point_fraction: {type: uniform, low: 0.5, high: 1.5}\n",
        "search.space.point_fraction.high must be within [0, 1] (got 1.5)",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: uniform, low: 0.1, high: 0.01}\n",
        "search.space.lr.high must be > low (got low=0.1, high=0.01)",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: choice, values: []}\n",
        "search.space.lr.values must list at least one value",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: fixed}\n",
        "search.space.lr.value is required for type fixed",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: fixed, value: 0.1, low: 0.01}\n",
        "search.space.lr.low is not used by type fixed; remove it",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lr: {type: log, low: 0.1, high: 1}\n",
        "search.space.lr.type must be one of 'loguniform', 'uniform', 'choice' or 'fixed' (got 'log')",
    ),
    (
        "task: carpet\nsearch:\n  space:\n    lrr: 0.1\n",
        "unknown setting 'search.space.lrr' (did you mean 'search.space.lr'?)",
    ),
    (
        "task: carpet\neval:\n  strategies: [box, random3]\n",
        "eval.primary 'center' must be one of eval.strategies (box, random3)",
    ),
    (
        "task: carpet\neval:\n  strategies: [center, centre]\n",
        "eval.strategies[1]: unknown prompt strategy 'centre'",
    ),
    (
        "task: carpet\ncurve:\n  n_train: [500, 125]\n",
        "curve.n_train must be sorted ascending (got [500, 125]; use [125, 500])",
    ),
    (
        "task: carpet\ncurve:\n  n_train: [125, 125, 500]\n",
        "curve.n_train lists 125 twice; give each training size once",
    ),
    ("task: carpet\ncurve:\n  n_train: [0, 5]\n", "curve.n_train[0] must be >= 1 (got 0)"),
    ("task: carpet\ncurve:\n  seeds: []\n", "curve.seeds must list at least one seed"),
    ("task: carpet\nmodels: [tiny-s, vit-b]\n", "models[1]: unknown model 'vit-b' (did you mean 'vit_b'?)"),
    ("task: carpet\nmodels: [tiny-s, tiny-s]\n", "models lists a model twice"),
    ("task: carpet\nmodels: []\n", "models must list at least one model"),
    ("task: carpt\n", "task: unknown task 'carpt' (did you mean 'carpet'?)"),
    ("models: [tiny-s]\n", "task is required"),
    (
        "task: carpet\nresources:\n  gpus_per_trial: -0.5\n",
        "resources.gpus_per_trial must be >= 0 (got -0.5)",
    ),
    ("task: carpet\nresources:\n  gpus_per_trial: 9\n", "resources.gpus_per_trial must be <= 8 (got 9)"),
    ("task: carpet\nresources:\n  cpus_per_trial: 0\n", "resources.cpus_per_trial must be > 0 (got 0)"),
    ("task: carpet\nrules: {threshold: 1}\n", "rules.threshold must be < 1 (got 1)"),
    ("task: carpet\ntrain:\n  epochs: eight\n", "train.epochs must be an integer (got 'eight')"),
    ("task: carpet\ntrain:\n  flip: 1\n", "train.flip must be true or false (got 1)"),
    (
        "task: carpet\ntrain:\n  loss_res: 32\n",
        "train.loss_res must be 0 (the model's input size) or >= 64 (got 32)",
    ),
    ("task: carpet\ntrain:\n  warmup_fraction: 0.6\n", "train.warmup_fraction must be <= 0.5 (got 0.6)"),
    (
        "task: carpet\nsearch:\n  scheduler: {type: hyperband}\n",
        "search.scheduler.type must be one of 'asha' or 'none'",
    ),
    (
        "task: carpet\nsearch:\n  scheduler: {reduction_factor: 1}\n",
        "search.scheduler.reduction_factor must be > 1 (got 1)",
    ),
    (
        "task: carpet\ntrain: {epochs: 2}\nsearch:\n  scheduler: {grace_period: 3}\n",
        "search.scheduler.grace_period must be <= train.epochs (got 3 > 2)",
    ),
    ("task: carpet\nsearch: 5\n", "search must be a mapping of settings (got 5)"),
    (
        "task: carpet\ndata:\n  n_synthtic: 5\n",
        "unknown setting 'data.n_synthtic' (did you mean 'data.n_synthetic'?)",
    ),
    ("task: carpet\ndata:\n  n_val: many\n", "data.n_val must be an integer (got 'many')"),
    ("task: carpet\ndata:\n  n_val: 0\n", "data.n_val must be an integer of at least 1 (got 0)"),
    ("task: wood\ndata:\n  mode: hardest\n", "data.mode='hardest' for task wood"),
    ("- task\n- carpet\n", "expected a mapping of settings"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[1][:40] for c in CASES])
def test_one_line_error_names_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    msg = error_of(path)
    assert msg.startswith(f"{path}: "), msg
    assert expected in msg, msg


def test_yaml_syntax_error_gives_line_number(tmp_path):
    path = write(tmp_path, "task: carpet\nsearch:\n  n_train: [1, 2\n  num_samples: 3\n")
    msg = error_of(path)
    assert msg.startswith(f"{path}: YAML syntax error at line 4"), msg


def test_missing_file(tmp_path):
    assert "no such sweep config" in error_of(tmp_path / "nope.yaml")


def test_several_problems_are_counted_in_one_line(tmp_path):
    path = write(tmp_path, "task: carpet\ntrain: {epochs: 0, batch_size: 0}\n")
    msg = error_of(path)
    assert "train.epochs must be >= 1 (got 0)" in msg and msg.endswith("(and 1 more problem)")


def test_relative_file_shown_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").mkdir()
    (tmp_path / "sweeps" / "carpet.yaml").write_text("task: carpet\nsearch:\n  spce: {}\n")
    msg = error_of(tmp_path / "sweeps" / "carpet.yaml")
    assert msg == "sweeps/carpet.yaml: unknown setting 'search.spce' (did you mean 'search.space'?)"
