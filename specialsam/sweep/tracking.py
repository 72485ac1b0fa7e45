"""MLflow conventions: experiment per task, parent run per sweep, child run per baseline and trial.

All writes go through the sweep's driver (a Tune callback calls in here), never from trial
processes: a local SQLite store then has exactly one writer (no "database is locked"), trials on
other nodes need no route to the tracking server, and a resumed sweep can look its existing runs
up before logging, so nothing is duplicated. The local default is ``mlflow.db`` in the directory
the user ran from, resolved to an absolute URI before any trial starts (Ray moves trial processes
into their own directories, where a relative URI would point elsewhere).
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from specialsam.errors import UserError
from specialsam.sweep.mlflow_runs import (
    EXPERIMENT_KIND,
    KIND_MODEL_TRAINING,
    PARENT,
    ROLE,
    ROLE_SWEEP,
    ROLE_TRIAL,
    TRIAL_ID,
)

MAX_PARAM_LEN = 500


def resolve_tracking_uri(uri: str | None, cwd: Path | None = None) -> str:
    """Absolute tracking URI; a server URL is checked for reachability (one-line error if not)."""
    cwd = Path(cwd or Path.cwd())
    if not uri:
        return f"sqlite:///{(cwd / 'mlflow.db').resolve()}"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        return f"sqlite:///{(path if path.is_absolute() else cwd / path).resolve()}"
    if uri.startswith(("http://", "https://")):
        check_server(uri)
        return uri.rstrip("/")
    if "://" in uri:  # postgresql://, mysql://, databricks ...: MLflow validates the rest itself
        check_database_driver(uri)
        return uri
    raise UserError(
        f"tracking URI {uri!r} is a plain path; MLflow 3 needs a database or a server: "
        f"use sqlite:///{Path(uri).resolve() / 'mlflow.db'} or http://host:5000"
    )


_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
"""Import name of a database driver -> the package that provides it."""

_DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
"""SQLAlchemy-backed stores MLflow opens by URI scheme (``sqlite`` is handled apart)."""


def check_database_driver(uri: str) -> None:
    """A database tracking URI whose Python driver is missing fails now, in one line, instead of as
    an ImportError traceback once the sweep first logs (after the embedding cache is filled).

    SQLAlchemy imports the driver when the engine is built, before any connection is made."""
    if uri.split("://", 1)[0].split("+", 1)[0] not in _DATABASE_SCHEMES:
        return
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(uri).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - SQLAlchemy's URL parser raises several types
        raise UserError(
            "--tracking-uri: not a valid database URL (expected dialect://user@host/db)"
        ) from None
    try:
        sqlalchemy.create_engine(uri).dispose()
    except ImportError as exc:
        name = (exc.name or "").split(".")[0]
        package = _DRIVER_PACKAGES.get(name, name or "its driver")
        raise UserError(
            f"--tracking-uri {shown}: the database driver {name or '?'} is not installed; "
            f"pip install {package} (or use sqlite:///... or http://host:5000)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - an unknown dialect or a malformed URL
        raise UserError(
            f"--tracking-uri {shown}: MLflow cannot open it ({type(exc).__name__}: {exc})"
        ) from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for any other store)."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def check_server(url: str, timeout: float = 5.0) -> None:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as r:
            if r.status >= 400:
                raise OSError(f"HTTP {r.status}")
    except (TimeoutError, OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(
            f"MLflow tracking server {url} is unreachable ({reason}); start it (see cluster/README.md) "
            "or drop --tracking-uri to log to ./mlflow.db"
        ) from None


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            s = json.dumps(v) if not isinstance(v, str) else v
            out[key] = s[:MAX_PARAM_LEN]
    return out


class Tracker:
    """Thin, explicit wrapper over ``MlflowClient`` (no global active-run state)."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.mlflow = mlflow
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if tracking_uri.startswith("sqlite:///"):
                root = artifact_root or Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts"
                location = root.resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id
        if exp is None:
            self.open_in_runs_view()
        self.experiment = experiment

    def open_in_runs_view(self) -> None:
        """Make MLflow 3's UI open this experiment in its runs table ("Model training") rather than
        its GenAI view; a kind the user chose in the UI stays."""
        if EXPERIMENT_KIND not in self.client.get_experiment(self.experiment_id).tags:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND, KIND_MODEL_TRAINING)

    @classmethod
    def for_run(cls, tracking_uri: str, run_id: str, label: str) -> tuple[Tracker, Any]:
        """The tracker of an existing run's experiment, and the run; creates nothing (no database,
        no experiment) when the run is not there. ``label`` names the flag in the error."""
        from mlflow.tracking import MlflowClient

        db = sqlite_path(tracking_uri)
        if db is not None and not db.is_file():
            raise UserError(
                f"{label}: no MLflow database at {db}; pass the --tracking-uri the sweep logged to"
            )
        client = MlflowClient(tracking_uri)
        try:
            run = client.get_run(run_id)
            exp = client.get_experiment(run.info.experiment_id)
        except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
            raise UserError(f"{label}: no such run in {tracking_uri} ({type(exc).__name__})") from None
        return cls(tracking_uri, exp.name), run  # the experiment exists: nothing is created

    # runs -----------------------------------------------------------------------------------
    def create_run(self, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        tags = {k: str(v) for k, v in tags.items()}
        if parent:
            tags[PARENT] = parent
        return self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and v == v  # drop NaN
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i : i + 500])

    def log_new_params(self, run_id: str, params: dict[str, Any]) -> list[str]:
        """Log the params not yet on the run (MLflow params are immutable, so a rebuilt summary can
        only add); returns the keys already logged with another value, which stay as they were."""
        have = self.client.get_run(run_id).data.params
        flat = _flatten(params)
        self.log_params(run_id, {k: v for k, v in flat.items() if k not in have})
        return sorted(k for k, v in flat.items() if k in have and have[k] != v)

    def log_inputs(self, run_id: str, inputs: list) -> None:
        """Dataset inputs (``mlflow.entities.DatasetInput``, built by ``sweep.datasets``)."""
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id: str, path: Path, subdir: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def log_json(self, run_id: str, obj: Any, name: str, subdir: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / name
            p.write_text(json.dumps(obj))
            self.log_artifact(run_id, p, subdir)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    # queries --------------------------------------------------------------------------------
    def children(self, parent: str, role: str | None = None) -> list:
        f = f"tags.`{PARENT}` = '{parent}'"
        if role:
            f += f" and tags.`{ROLE}` = '{role}'"
        return list(self.client.search_runs([self.experiment_id], filter_string=f, max_results=5000))

    def trial_runs(self, parent: str) -> dict[str, Any]:
        """Existing trial child runs by trial id (for resume: reuse, never duplicate)."""
        return {
            r.data.tags[TRIAL_ID]: r for r in self.children(parent, ROLE_TRIAL) if TRIAL_ID in r.data.tags
        }

    def close_running(self, parent: str, status: str = "KILLED") -> int:
        """Children still RUNNING (a driver killed mid-sweep) end as KILLED, never left running."""
        n = 0
        for r in self.children(parent):
            if r.info.status == "RUNNING":
                self.finish(r.info.run_id, status)
                n += 1
        return n

    def close_sweep(self, parent: str, status: str = "KILLED") -> int:
        """A stopped sweep leaves no run RUNNING: its open children and the parent end as
        ``status`` (KILLED after a Ctrl-C, FAILED after an error), which ``--resume`` reopens.
        Returns how many children were open."""
        n = self.close_running(parent, status)
        if self.client.get_run(parent).info.status == "RUNNING":
            self.finish(parent, status)
        return n

    def download_json(self, run_id: str, artifact: str) -> Any:
        with tempfile.TemporaryDirectory() as d:
            local = self.mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=d, tracking_uri=self.uri
            )
            return json.loads(Path(local).read_text())

    def sweeps(self) -> Iterable:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{ROLE}` = '{ROLE_SWEEP}'", max_results=1000
        )


def experiment_name(task: str) -> str:
    return f"specialsam-{task}"
