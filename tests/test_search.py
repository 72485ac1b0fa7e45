"""Phase A's search searches: multivariate TPE with a short random start, its own seed per model,
the default settings as its first trial; and the searcher proposes different settings per model."""

from __future__ import annotations

import optuna
import pytest

from specialsam.config import default_config_path, load_config
from specialsam.sweep.driver import search_seed
from specialsam.sweep.phases import search_alg, tune_param_space


@pytest.fixture(scope="module")
def carpet():
    return load_config(default_config_path("carpet"))


def test_sampler_is_multivariate_tpe_with_half_the_trials_random(carpet):
    assert carpet.search.num_samples == 6 and carpet.startup_trials() == 3
    alg = search_alg("optuna", 7, carpet.startup_trials(), carpet.default_point())
    sampler = alg._sampler
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._n_startup_trials == 3 and sampler._multivariate
    set_by_user = load_config(default_config_path("carpet"), ["search.searcher.n_startup_trials=2"])
    assert set_by_user.startup_trials() == 2


def test_each_model_gets_its_own_searcher_seed(carpet):
    seeds = {m: search_seed(carpet, m) for m in ("tiny-s", "tiny-m", "vit_b")}
    assert len(set(seeds.values())) == 3
    assert search_seed(carpet, "tiny-s") == seeds["tiny-s"]  # reproducible, not hash()-salted
    other = load_config(default_config_path("carpet"), ["search.searcher.seed=1"])
    assert search_seed(other, "tiny-s") != seeds["tiny-s"]


def test_default_point_is_the_defaults_inside_the_space(carpet):
    point = carpet.default_point()
    base = carpet.base_params()
    assert point == {k: base[k] for k in ("lr", "bce_weight", "dice_weight")}
    outside = load_config(
        default_config_path("carpet"), ["search.space.lr={type: loguniform, low: 1.0e-3, high: 3.0e-3}"]
    )
    assert outside.default_point() is None


def _proposals(cfg, seed: int, n: int) -> list[dict]:
    """What the searcher proposes for n trials, each told a made-up score (no training)."""
    space = tune_param_space(cfg.search.space)
    alg = search_alg("optuna", seed, cfg.startup_trials(), cfg.default_point())
    alg.set_search_properties("val_miou", "max", space)
    out = []
    for i in range(n):
        cfg_i = alg.suggest(f"t{i}")
        out.append(cfg_i)
        alg.on_trial_complete(f"t{i}", {"val_miou": 0.3 + 0.1 * cfg_i["bce_weight"]})
    return out


def test_first_trial_is_the_default_and_models_search_differently(carpet):
    a = _proposals(carpet, search_seed(carpet, "tiny-s"), 6)
    b = _proposals(carpet, search_seed(carpet, "tiny-m"), 6)
    assert a[0] == b[0] == carpet.default_point()
    assert a[1:] != b[1:]
    assert _proposals(carpet, search_seed(carpet, "tiny-s"), 6) == a  # seeded: same search again
