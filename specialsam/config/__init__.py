"""The validated sweep configuration (``sweeps/<task>.yaml``).

A sweep config is YAML validated by pydantic models; every mistake is a one-line
:class:`~specialsam.errors.UserError` naming the file (or the ``--set`` override) and the dotted
key, with a "did you mean" suggestion for typos::

    sweeps/carpet.yaml: unknown setting 'search.spce' (did you mean 'search.space'?)
    sweeps/carpet.yaml: search.space.lr.low must be > 0 (got 0)
    --set search.num_samples=0: search.num_samples must be >= 1 (got 0)

The parts: :mod:`~specialsam.config.schema` (the whole config and its checks across sections),
:mod:`~specialsam.config.sections` (one model per section, and :func:`train_config`, which turns
``train:`` plus a trial's parameters into its ``TrainConfig``), :mod:`~specialsam.config.loading`
(YAML, ``smoke:``, ``--set``, the shipped configs) and ``_text`` (error wording).
"""

from specialsam.config.loading import (
    MAX_CONFIG_BYTES,
    SWEEPS_DIR,
    config_to_dict,
    default_config_path,
    load_config,
    parse_override,
)
from specialsam.config.schema import SweepConfig
from specialsam.config.sections import (
    LOSS_WEIGHTS,
    SPACE_KEYS,
    SWEEP_TRAIN_DEFAULTS,
    CurveSettings,
    EvalSettings,
    MethodSettingsConfig,
    Param,
    ResourceSettings,
    RuleSettings,
    SchedulerSettings,
    SearcherSettings,
    SearchSettings,
    StorageSettings,
    TrainSettings,
    train_config,
)

__all__ = [
    "LOSS_WEIGHTS",
    "MAX_CONFIG_BYTES",
    "SPACE_KEYS",
    "SWEEPS_DIR",
    "SWEEP_TRAIN_DEFAULTS",
    "CurveSettings",
    "EvalSettings",
    "MethodSettingsConfig",
    "Param",
    "ResourceSettings",
    "RuleSettings",
    "SchedulerSettings",
    "SearchSettings",
    "SearcherSettings",
    "StorageSettings",
    "SweepConfig",
    "TrainSettings",
    "config_to_dict",
    "default_config_path",
    "load_config",
    "parse_override",
    "train_config",
]
