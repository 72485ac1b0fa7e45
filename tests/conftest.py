"""Shared fixtures. One torch thread: tests run on 2-core CI machines beside Ray workers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("TQDM_DISABLE", "1")
# The test cluster lives entirely on 127.0.0.1. Ray rewrites 127.0.0.1 in addresses to the
# machine's network address, which sandboxed CI machines cannot reach; this (oddly named) switch
# makes Ray's own "node address" the loopback one. Subprocess drivers inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("SPECIALSAM_CACHE", str(d))
    return d


def scene_task(n_train: int = 24, n_val: int = 8, n_test: int = 8, name: str = "scenes"):
    """A small TaskData built from generalist scenes (independent of any task module)."""
    from specialsam.tasks.base import Sample, TaskData
    from specialsam.tasks.procedural.scenes import make_scene

    def samples(split: str, n: int, base: int):
        out = []
        for i in range(n):
            sc = make_scene((4242, base + i))
            j = int(np.argmax([m.sum() for m in sc.targets]))
            out.append(Sample(key=f"{split}-{i}", image=sc.image, mask=sc.targets[j], category=f"c{i % 2}"))
        return out

    return TaskData(
        name=name,
        data="procedural",
        train=samples("train", n_train, 0),
        val=samples("val", n_val, 1000),
        test=samples("test", n_test, 2000),
        source="scenes",
    )


# --------------------------------------------------------------------------------------------
# One real multi-node Ray cluster per test session (head + worker, both on 127.0.0.1, no
# dashboard, small object stores), one lean MLflow server, one shared smoke sweep.
# --------------------------------------------------------------------------------------------
REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray.cluster_utils import Cluster

    from specialsam.sweep.ray_runtime import loopback_only

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2, "node_ip_address": "127.0.0.1"}
    with loopback_only():  # as a local sweep's Ray (init_ray): every Ray server listens on loopback only
        cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1, kept lean: one worker."""
    import subprocess
    import time
    import urllib.request

    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/mlflow") if (REPO / ".venv/bin/mlflow").exists() else "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{d}/mlflow.db",
            "--artifacts-destination",
            str(d / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(d / "server.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"mlflow server did not start: {(d / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=20)


SMOKE_SETS = [
    "search.num_samples=4",  # enough trials for ASHA to stop some at its first rung
]


def run_sweep_cli(argv: list[str], cwd, monkeypatch=None, env: dict | None = None) -> int:
    """sweeps/run.py's main, in this process (so it shares the session's Ray cluster)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweeps_run", REPO / "sweeps" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    old = os.getcwd()
    os.chdir(cwd)
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        return mod.main(argv)
    finally:
        os.chdir(old)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def running_trials(db) -> int:
    """Trial runs RUNNING in a driver's SQLite store, read-only (an MlflowClient here would race the
    driver creating its tables)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'specialsam.role' and t.value = 'trial' and r.status = 'RUNNING'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="session")
def smoke_sweep(ray_cluster, tmp_path_factory):
    """The shared smoke sweep (carpet stand-in, tiny-s), with trial faults injected:
    one trial process killed once mid-training (retried) and one trial whose loss goes NaN.
    Its terminal output is captured (not a TTY: plain progress lines) as ``stdout``."""
    import contextlib
    import io
    import json

    d = tmp_path_factory.mktemp("smoke")
    faults = {
        "kill": {"match": {"n_train": 64, "seed": 1}, "at_step": 2, "marker_dir": str(d / "faults")},
        "nan": {"match": {"n_train": 32, "seed": 1}},
    }
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_sweep_cli(
            [
                "--task",
                "carpet",
                "--smoke",
                *sum((["--set", s] for s in SMOKE_SETS), []),
                "--cache-dir",
                str(d / "cache"),
            ],
            d,
            env={"SPECIALSAM_TEST_FAULTS": json.dumps(faults)},
        )
    print(out.getvalue())  # shown with a failing test
    assert rc == 0
    return {"dir": d, "uri": f"sqlite:///{d / 'mlflow.db'}", "faults": faults, "stdout": out.getvalue()}
