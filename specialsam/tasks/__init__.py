"""Tasks: a dataset layout + a prompt protocol, turned into train/val/test samples.

Each task module exposes ``Options`` (a dataclass of its ``data:`` settings, with defaults) and
``load(data_root, options, seed) -> TaskData``. ``data_root=None`` means "no real data": the
module returns its procedural stand-in, labelled ``data="procedural"``. A given but missing or
malformed root is a ``UserError``, never a silent fallback, and so is an empty train, val or test
split (``load_task`` checks; a module may say what to do in ``EMPTY_SPLIT_REMEDY``, and what to do
when a sweep wants more training samples than it has in ``N_TRAIN_REMEDY``). A module with a fixed
real pool sets ``DERIVE_N_TRAIN_GRID = True``: a sweep then derives its training sizes from the pool
(``specialsam.config.grids``) instead of failing.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from specialsam.errors import UserError
from specialsam.tasks.base import TaskData, check_splits

GENERIC_EMPTY_SPLIT_REMEDY = "check the dataset under --data-root and the task's data: settings"
GENERIC_N_TRAIN_REMEDY = "provide more training data"

TASKS: dict[str, str] = {
    "carpet": "specialsam.tasks.carpet",  # MVTec AD (any category) + synthetic defects
    "wood": "specialsam.tasks.wood",  # wood-texture mosaics
    "camouflage": "specialsam.tasks.camouflage",  # COD10K-v3 (+ CAMO/CHAMELEON/NC4K test sets)
    "folder": "specialsam.tasks.folder",  # bring your own: images/ + masks/
    "coco": "specialsam.tasks.coco",  # COCO-format instance json (COCO 2017, TrashCan, TACO, ZeroWaste-f)
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose from {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name])


def task_options(name: str, values: dict[str, Any] | None = None) -> Any:
    """The task's ``Options`` built from a mapping; an unknown key is a one-line error naming it."""
    cls = task_module(name).Options
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise UserError(
            f"unknown data setting 'data.{unknown[0]}' for task {name}; known: {', '.join(sorted(known))}"
        )
    return cls(**(values or {}))


def load_task(
    name: str, data_root: Path | str | None = None, options: dict[str, Any] | None = None, seed: int = 0
) -> TaskData:
    """Load a task's split samples (real data under ``data_root``, else its procedural stand-in)."""
    module = task_module(name)
    # absolute: trials read the files from worker processes whose working folder is not ours
    root = Path(data_root).expanduser().resolve() if data_root else None
    if root is not None and not root.exists():
        raise UserError(f"data root {root} does not exist; pass --data-root pointing at the {name} dataset")
    task = module.load(root, task_options(name, options), seed)
    check_splits(task, getattr(module, "EMPTY_SPLIT_REMEDY", GENERIC_EMPTY_SPLIT_REMEDY))
    return task


def n_train_remedy(name: str) -> str:
    """What a user of task ``name`` can do when a sweep asks for more training samples than exist."""
    return getattr(task_module(name), "N_TRAIN_REMEDY", GENERIC_N_TRAIN_REMEDY)


def derives_n_train_grid(name: str) -> bool:
    """Whether task ``name`` has a fixed real training pool from which a sweep derives its training
    sizes when the configured ones are larger (``DERIVE_N_TRAIN_GRID``; see config.grids)."""
    return bool(getattr(task_module(name), "DERIVE_N_TRAIN_GRID", False))
