"""Where a sweep writes, checked before it writes: Tune storage, its state file, caches, exports.

A sweep keeps a small state file next to its Tune storage (``sweep.json``: parent run, config,
phase results) so ``--resume`` continues the same sweep. Every location is checked writable before
the first write, so a bad path fails before any MLflow run exists instead of after the sweep.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from specialsam.atomic import atomic_write_bytes
from specialsam.config import SweepConfig
from specialsam.errors import UserError, check_writable_dir
from specialsam.finetune.cache import default_cache_dir
from specialsam.sweep.tracking import sqlite_path


@dataclass
class RunOptions:
    address: str | None = None
    tracking_uri: str | None = None
    experiment: str | None = None
    storage: str | None = None
    cache_dir: str | None = None
    checkpoint_dir: str | None = None
    allow_unverified: bool = False
    resume: str | None = None  # "latest" or a sweep name
    plan: bool = False
    export_dir: str | None = None
    cwd: Path = field(default_factory=Path.cwd)
    fault: dict | None = None  # test hook, forwarded to trials
    set_keys: frozenset[str] = frozenset()
    """Settings given on the command line (``--set``): a training size there that exceeds the data
    is an error, a configured one is fitted to the data (``config.grids``)."""
    quiet: bool = False

    def __post_init__(self) -> None:
        # absolute: trials and cluster workers load checkpoints from other working folders
        if self.checkpoint_dir:
            self.checkpoint_dir = str(_absolute(self.checkpoint_dir, self))


def _absolute(path: Path | str, opts: RunOptions) -> Path:
    """A user's path, relative ones taken from the folder the sweep was started in (trials run in
    other working folders)."""
    return (opts.cwd / Path(path).expanduser()).resolve()


def storage_root(cfg: SweepConfig, opts: RunOptions) -> Path:
    raw = opts.storage or cfg.storage.tune_dir or str(opts.cwd / "ray_results")
    if "://" in raw and not raw.startswith("file://"):
        raise UserError(
            f"Tune storage {raw!r}: only shared filesystem paths are supported here; "
            "mount it and pass the path"
        )
    return Path(raw.removeprefix("file://")).expanduser().resolve()


def sweep_dir(cfg: SweepConfig, opts: RunOptions) -> tuple[Path, dict | None]:
    root = storage_root(cfg, opts)
    if opts.resume:
        if opts.resume == "latest":
            found = sorted(root.glob(f"{cfg.task}-*/sweep.json"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise UserError(
                    f"--resume: no {cfg.task} sweep found under {root}; run without --resume first"
                )
            folder = found[-1].parent
        else:
            folder = root / opts.resume
            if not (folder / "sweep.json").exists():
                raise UserError(f"--resume {opts.resume}: no sweep state at {folder}/sweep.json")
        return folder, read_state(folder / "sweep.json")
    return root / f"{cfg.task}-{time.strftime('%Y%m%d-%H%M%S')}", None


_STATE_KEYS = {"parent_run_id": str, "config": dict, "best": dict, "done": list}


def read_state(path: Path) -> dict:
    """``sweep.json`` as ``_save_state`` wrote it; anything else (truncated, hand-edited, not
    JSON) is one line naming the file, not a traceback."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        bad = [k for k, t in _STATE_KEYS.items() if not isinstance(state.get(k), t)]
        problem = f"missing or malformed {', '.join(bad)}" if bad else ""
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        raise UserError(
            f"--resume: the sweep state {path} is corrupt ({problem}); restore it from a backup, "
            "or start a new sweep without --resume"
        )
    return state


def save_state(folder: Path, state: dict) -> None:
    atomic_write_bytes(folder / "sweep.json", json.dumps(state, indent=2, default=str).encode())


def cache_root(cfg: SweepConfig, opts: RunOptions) -> tuple[Path, str]:
    """The embedding cache folder (absolute: trials open it from worker processes whose working
    folder is not ours), and where that choice came from (for error messages)."""
    if opts.cache_dir:
        return _absolute(opts.cache_dir, opts), "--cache-dir"
    if cfg.storage.cache_dir:
        return _absolute(cfg.storage.cache_dir, opts), "storage.cache_dir"
    label = "$SPECIALSAM_CACHE" if os.environ.get("SPECIALSAM_CACHE") else "the embedding cache"
    return _absolute(default_cache_dir(), opts), label


def export_root(opts: RunOptions) -> Path:
    return Path(opts.export_dir or (opts.cwd / "exports")).expanduser().resolve()


def check_outputs(cfg: SweepConfig, opts: RunOptions, uri: str) -> None:
    """Every location a sweep writes (Tune storage, embedding cache, export folder, the SQLite
    database and its artifact folder) is a writable folder or can be made one, checked before the
    first write: a path that is a file fails now, not after the sweep with its parent run left
    RUNNING."""
    storage = "--storage" if opts.storage else "storage.tune_dir" if cfg.storage.tune_dir else "Tune storage"
    check_writable_dir(storage_root(cfg, opts), storage)
    check_writable_dir(*cache_root(cfg, opts))
    check_writable_dir(export_root(opts), "--export-dir" if opts.export_dir else "the export folder")
    check_tracking_db(uri)


def check_tracking_db(uri: str) -> None:
    """A ``sqlite:///`` store's database file is a writable file (or can be created) and the
    folder it keeps artifacts in is writable; other stores are checked by their servers."""
    db = sqlite_path(uri)
    if db is None:
        return
    if db.exists() and not (db.is_file() and os.access(db, os.R_OK | os.W_OK)):
        raise UserError(
            f"--tracking-uri {uri}: {db} is not a writable SQLite file; pass another sqlite:/// path"
        )
    check_writable_dir(db.parent, "the MLflow database folder")
    check_writable_dir(db.parent / "mlartifacts", "the MLflow artifact folder")


def mlflow_ui_hint(uri: str) -> str:
    if uri.startswith("sqlite:///"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    return f"open {uri} in a browser"
