"""Training-size grids that fit the data a task actually has.

A shipped config's ``curve.n_train`` / ``search.n_train`` are written for a typical dataset; a
bring-your-own folder or a COCO-format dataset may hold fewer training samples. For tasks with a
fixed real pool (``DERIVE_N_TRAIN_GRID = True`` in the task module: folder, coco) a sweep whose
*configured* sizes exceed the pool derives them from the pool instead (:func:`pool_grid`: x2
steps ending at the pool size) and says so in one line. A size the user gave on the command line
(``--set curve.n_train=...``) is taken as meant: exceeding the pool is a one-line error naming the
pool size and the setting. Tasks that generate their training data keep the old check (their
``N_TRAIN_REMEDY``: generate more).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from specialsam.config.loading import parse_override
from specialsam.config.schema import SweepConfig
from specialsam.errors import UserError
from specialsam.tasks import derives_n_train_grid

GRID_KEYS = ("curve.n_train", "search.n_train")
MAX_GRID_SIZES = 6
MIN_GRID_SIZE = 8
"""No derived size below this (half a batch or less says little about a learning curve), unless the
pool itself is smaller."""


def pool_grid(pool: int, n_sizes: int) -> list[int]:
    """Ascending training sizes ending at ``pool``, each half the next, at most ``n_sizes`` of them
    and none below :data:`MIN_GRID_SIZE` (just ``[pool]`` for a tiny pool)."""
    if pool < 1:
        raise ValueError(f"pool must be positive (got {pool})")
    sizes, n = [], pool
    while n >= MIN_GRID_SIZE and len(sizes) < max(1, n_sizes):
        sizes.append(n)
        n //= 2
    return sorted(sizes) or [pool]


def set_keys(overrides: Sequence[str]) -> frozenset[str]:
    """The dotted keys the command line set (``--set KEY=VALUE`` strings, as ``load_config`` takes)."""
    return frozenset(parse_override(text)[0] for text in overrides)


def _was_set(key: str, keys: Collection[str]) -> bool:
    """True when ``key`` or a group above it (``curve``) was set on the command line."""
    return any(key == k or key.startswith(k + ".") for k in keys)


def fit_n_train(
    cfg: SweepConfig, pool: int, command_line: Collection[str] = ()
) -> tuple[SweepConfig, str | None]:
    """``cfg`` with training sizes that fit a training pool of ``pool`` samples, and the line that
    says what changed (None when nothing did).

    Unchanged when everything fits, or when the task generates its data (the sweep's own check
    then asks for more). A size over the pool that the user set on the command line
    (``command_line``: :func:`set_keys` of the overrides) is a ``UserError``; configured sizes
    over the pool are replaced: ``curve.n_train`` by :func:`pool_grid` with as many sizes as the
    configured curve (2 to 6), ``search.n_train`` by the pool size."""
    asked = {"curve.n_train": max(cfg.curve.n_train), "search.n_train": cfg.search.n_train}
    over = [k for k in GRID_KEYS if asked[k] > pool]
    if not over or not derives_n_train_grid(cfg.task):
        return cfg, None
    for key in over:
        if _was_set(key, command_line):
            raise UserError(
                f"--set {key} asks for {asked[key]} training samples but task {cfg.task} has {pool} in its "
                f"training split; set every size in {key} to at most {pool}, or add training data"
            )
    curve = cfg.curve
    search = cfg.search
    changed = []
    if "curve.n_train" in over:
        grid = pool_grid(pool, min(MAX_GRID_SIZES, max(2, len(curve.n_train))))
        curve = curve.model_copy(update={"n_train": grid})
        changed.append(f"curve.n_train {grid}")
    if "search.n_train" in over:
        search = search.model_copy(update={"n_train": pool})
        changed.append(f"search.n_train {pool}")
    note = (
        f"the training split of {cfg.task} has {pool} samples, fewer than the configured "
        f"{' / '.join(f'{k} {asked[k]}' for k in over)}: using {' and '.join(changed)} "
        "(--set them to choose other sizes)"
    )
    return cfg.model_copy(update={"curve": curve, "search": search}), note
