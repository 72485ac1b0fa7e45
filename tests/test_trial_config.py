"""`python -m specialsam.trial --config sweeps/<task>.yaml`: one trial with a sweep's settings.

The CLI's own defaults differ from the shipped sweep configs (e.g. the carpet stand-in's image
size), so without --config a trial's figures are not the sweep's."""

from __future__ import annotations

import re

import pytest

from specialsam.config import default_config_path, load_config
from specialsam.errors import UserError
from specialsam.trial import DEFAULTS, main, parse_args, resolve

CARPET = default_config_path("carpet")
SMALL = ["n_synthetic=16", "n_val=4", "standin_good=6", "standin_test=10"]  # bare keys: data.<key>


def test_config_supplies_the_sweeps_trial_settings():
    sweep = load_config(CARPET)
    setup = resolve(parse_args(["--config", str(CARPET)]))
    assert setup.task == "carpet" and setup.data_options == sweep.data
    t = setup.train
    assert (t.n_train, t.epochs, t.max_steps, t.batch_size) == (
        sweep.search.n_train,
        sweep.train.epochs,
        sweep.train.max_steps,
        sweep.train.batch_size,
    )
    assert (t.patience, t.weight_decay, t.warmup_fraction) == (
        sweep.train.patience,
        sweep.train.weight_decay,
        sweep.train.warmup_fraction,
    )
    assert setup.pack.primary == sweep.eval.primary
    assert set(setup.pack.strategies) == set(sweep.eval.strategies)
    assert setup.retention == sweep.eval.retention_n and setup.threshold == sweep.rules.threshold
    # not vacuous: the shipped config differs from the CLI's defaults where it matters
    plain = resolve(parse_args([]))
    assert sweep.train.epochs != DEFAULTS["epochs"] and plain.train.epochs == DEFAULTS["epochs"]
    assert plain.data_options == {} and setup.data_options["standin_size"] == 256


def test_flags_given_on_the_command_line_win_over_the_config():
    args = ["--config", str(CARPET), "--epochs", "2", "--strategies", "box", "--seed", "3"]
    sets = ["--set", "standin_size=128", "--set", "train.patience=0", "--set", "rules.threshold=0.6"]
    setup = resolve(parse_args(args + sets))
    assert setup.train.epochs == 2 and setup.train.patience == 0 and setup.threshold == 0.6
    assert setup.pack.strategies == ("box",) and setup.pack.primary == "box"
    assert setup.seed == 3 and setup.train.seed == 3
    assert setup.data_options["standin_size"] == 128
    assert setup.train.max_steps == load_config(CARPET).train.max_steps  # the rest stays the config's


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--task", "wood"], "does not match the task of"),
        (["--set", "train.epochs=0"], "train.epochs"),
        (["--set", "colour=red"], "colour"),
    ],
)
def test_config_mistakes_are_one_line_errors(extra, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(CARPET), *extra, "--baseline-only"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and needle in err and "\n" not in err


def _center(out: str) -> str:
    return re.search(r"^center\s+(\S+)", out, re.M)[1]


def test_baseline_with_config_is_the_sweeps_figure(tmp_path, capsys):
    """--config reaches the data: the figure equals the one with the config's data settings spelled
    out, and differs from the CLI's own default image size."""
    common = ["--model", "tiny-s", "--strategies", "center", "--cache-dir", str(tmp_path), "--baseline-only"]
    main(["--config", str(CARPET), *common, *(f"--set={kv}" for kv in SMALL)])
    out = capsys.readouterr().out
    assert f"settings from {CARPET}" in out
    size = load_config(CARPET).data["standin_size"]
    spelled = [f"--set={kv}" for kv in [*SMALL, f"standin_size={size}"]]
    main(["--task", "carpet", *common, *spelled])
    assert _center(capsys.readouterr().out) == _center(out)
    main(["--task", "carpet", *common, *(f"--set={kv}" for kv in SMALL)])  # the CLI's default size
    assert _center(capsys.readouterr().out) != _center(out)


def test_a_trial_encodes_only_the_training_samples_it_uses(tmp_path, capsys):
    import json

    common = ["--task", "carpet", "--model", "tiny-s", "--strategies", "center", "--cache-dir", str(tmp_path)]
    small = [f"--set={kv}" for kv in SMALL]
    with pytest.raises(SystemExit):  # a pool too small fails before anything is encoded
        main([*common, *small, "--n-train", "17"])
    assert "--n-train 17 is larger than the 16 training samples" in capsys.readouterr().err
    assert not list(tmp_path.glob("packs/*"))
    main([*common, *small, "--n-train", "8", "--epochs", "1", "--max-steps", "1"])
    assert "trained 1 steps" in capsys.readouterr().out
    (manifest,) = [json.loads(p.read_text()) for p in tmp_path.glob("packs/*/manifest.json")]
    assert manifest["n_train_pool"] == 8 and len(manifest["splits"]["train"]["keys"]) == 8


def test_a_lora_trial_tunes_the_encoder_on_cached_activations(tmp_path, capsys):
    common = ["--task", "carpet", "--model", "tiny-s", "--strategies", "center", "--cache-dir", str(tmp_path)]
    small = [f"--set={kv}" for kv in SMALL]
    with pytest.raises(SystemExit) as exc:  # checked before anything is encoded
        main([*common, *small, "--method", "lora", "--rank", "0"])
    assert exc.value.code == 2 and "LoRA rank must be a whole number >= 1" in capsys.readouterr().err
    assert not list(tmp_path.glob("packs/*"))
    main([*common, *small, "--n-train", "4", "--epochs", "2", "--max-steps", "2", "--method", "lora"])
    assert "trained 2 steps (8 samples; method lora)" in capsys.readouterr().out
    assert len(list(tmp_path.glob("activations/*/*.npy"))) > 0


def test_clicks_flag_sets_or_turns_off_the_interactive_evaluation():
    from specialsam.config import EvalSettings
    from specialsam.trial import _click_settings

    ev = EvalSettings()
    assert _click_settings("3,1,3", ev).clicks == [1, 3] and _click_settings("3,1", ev).noc_thresholds == [
        0.85,
        0.9,
    ]
    off = _click_settings("none", ev)
    assert off.clicks == [] and off.noc_thresholds == []
    for bad in ("0,2", "x", "1;2"):
        with pytest.raises(UserError, match="--clicks"):
            _click_settings(bad, ev)
    assert resolve(parse_args(["--clicks", "none"])).eval.clicks == []
    assert resolve(parse_args([])).eval.clicks == ev.clicks
