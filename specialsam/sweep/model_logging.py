"""The specialised model as an MLflow model: logged on the sweep's parent run, registered, aliased.

``log_specialised`` wraps the exported checkpoint in ``models.pyfunc.SpecialSamModel`` and logs it
with ``mlflow.pyfunc.log_model`` (MLflow 3 ``name=``) with a signature, an input example, its code
(the ``specialsam`` package, without the shipped weights) and its pip requirements; where the
tracking store has a model registry (SQLite, a database, a server) the model becomes a version of
``specialsam-<task>`` and the alias ``champion`` moves to it, so
``models:/specialsam-<task>@champion`` always names the newest sweep's recommended model.

MLflow's ``log_model`` logs into the *active* run of the global tracking URI (and the registry
resolves a ``models:/`` source under it); both are set for these calls only and restored after, so
the driver keeps its explicit, client-only style.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from specialsam.sweep import mlflow_runs as names

REGISTRY_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
"""Tracking stores that carry a model registry (a file store does not; MLflow 3 refuses plain paths)."""

REQUIREMENTS = ("torch", "torchvision", "segment-anything", "numpy", "opencv-python-headless", "pandas")
"""What the pyfunc imports when it loads (pinned to the versions the sweep ran with)."""


@dataclass
class LoggedModel:
    """Where the specialised model went: its logged-model URI and, with a registry, its version."""

    model_uri: str
    registered: str | None = None  # models:/<name>@champion
    version: str | None = None


def has_registry(uri: str) -> bool:
    return uri.split("://", 1)[0].split("+", 1)[0] in REGISTRY_SCHEMES


def signature():
    """Columns people can type: ``image`` (H x W x 3 ints), then ``point`` [x, y] or ``box``
    [x0, y0, x1, y1] in integer pixels (MLflow refuses typed ints for a double column)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    image = Array(Array(Array(DataType.long)))
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(image, "image"),
                ColSpec(Array(DataType.long), "point", required=False),
                ColSpec(Array(DataType.long), "box", required=False),
            ]
        ),
        outputs=Schema([ColSpec(Array(Array(DataType.long)), "mask")]),
    )


def input_example():
    """A 48 x 64 image with a bright square and a point on it (small: it is stored as JSON)."""
    import pandas as pd

    img = np.full((48, 64, 3), 40, np.uint8)
    img[12:36, 20:44] = 210
    return pd.DataFrame({"image": [img.tolist()], "point": [[32, 24]]})


def requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


@contextlib.contextmanager
def _code_copy() -> Iterator[str]:
    """The ``specialsam`` package as model code: sources only (no weights, no caches)."""
    import specialsam

    src = Path(specialsam.__file__).parent
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "specialsam"
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "weights", "*.pyc"))
        yield str(dst)


_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def _active_run(uri: str, run_id: str) -> Iterator[None]:
    """``run_id`` active under ``uri`` for MLflow's fluent ``log_model``; both restored after.

    The run is resumed and left RUNNING (the driver finishes it)."""
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    bars = os.environ.get(_BARS)
    os.environ[_BARS] = "false"  # no "Downloading artifacts" bars in the sweep's output
    try:
        mlflow.start_run(run_id=run_id)
        try:
            yield
        finally:
            mlflow.end_run("RUNNING")
    finally:
        mlflow.set_tracking_uri(before)
        if bars is None:
            os.environ.pop(_BARS, None)
        else:
            os.environ[_BARS] = bars


def log_specialised(
    tracker, parent: str, task: str, model: str, checkpoint: Path, mask_selection: str
) -> LoggedModel:
    """Log ``checkpoint`` (a full SAM checkpoint of ``model``) as the sweep's pyfunc model."""
    import mlflow

    from specialsam.models import pyfunc
    from specialsam.models.checkpoints import file_hashes

    with tempfile.TemporaryDirectory() as d, _code_copy() as code:
        settings = Path(d) / "settings.json"
        settings.write_text(
            json.dumps(pyfunc.settings_json(model, mask_selection, file_hashes(checkpoint).sha256))
        )
        with _active_run(tracker.uri, parent):
            info = mlflow.pyfunc.log_model(
                name=names.PYFUNC_MODEL,
                python_model=pyfunc.__file__,  # models from code
                artifacts={pyfunc.CHECKPOINT: str(checkpoint), pyfunc.SETTINGS: str(settings)},
                code_paths=[code],
                signature=signature(),
                input_example=input_example(),
                pip_requirements=requirements(),
                tags={names.MODEL: model, names.TASK: task},
            )
            out = LoggedModel(info.model_uri)
            if has_registry(tracker.uri):  # the registry resolves models:/ under the global URI
                out.version, out.registered = register(tracker, info.model_uri, task, parent)
    tracker.set_tags(parent, {names.LOGGED_MODEL: out.registered or out.model_uri})
    return out


def register(tracker, model_uri: str, task: str, parent: str) -> tuple[str, str]:
    """A new version of ``specialsam-<task>`` and the ``champion`` alias on it."""
    from mlflow.exceptions import MlflowException

    client = tracker.client
    name = names.registered_model(task)
    try:
        client.get_registered_model(name)
    except MlflowException:  # not there yet (any other trouble resurfaces in create_model_version)
        client.create_registered_model(name, description=names.REGISTERED_MODEL_DESCRIPTION)
    version = client.create_model_version(
        name, model_uri, run_id=parent, model_id=model_uri.removeprefix("models:/")
    )
    client.set_registered_model_alias(name, names.CHAMPION, version.version)
    return version.version, names.champion_uri(task)
