"""The Ray runtime a sweep runs on: start or join it, keep it on loopback, stop it, own Ctrl-C.

A local Ray binds to 127.0.0.1 only (checked on a real socket after start); a cluster address is
checked for reachability first (one-line error, not a hang). ``sigint_stops_tune`` turns Ctrl-C
during a Tune phase into a saved, resumable stop instead of a phase reported as complete.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray


def quiet_tune() -> None:
    """Tune's console tables repeat what our own progress lines and MLflow show."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Local Ray on 127.0.0.1 without dashboard, or connect to a cluster (checked first)."""
    from specialsam.errors import UserError

    quiet_tune()
    address = address or os.environ.get("RAY_ADDRESS")
    if address and address not in ("local", "auto"):  # "auto": Ray finds the local cluster itself
        _check_reachable(address)
    if ray.is_initialized():
        return
    if address and address != "local":
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        return
    with loopback_only():
        ray.init(
            address="local",  # always a new local instance, never one a test suite or other sweep runs
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
            configure_logging=False,
        )
    _check_loopback()


# Ray's switch for its local-only mode (the default on macOS and Windows); "0" turns it on.
RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def loopback_only() -> Iterator[None]:
    """Ray started inside keeps 127.0.0.1 as its node address, so every Ray server binds loopback.

    Ray's servers (GCS, raylet, object manager, workers, the driver, its agents, metrics export)
    bind loopback only when the node address is a loopback one and every interface otherwise, but
    ray.init rewrites _node_ip_address="127.0.0.1" to the machine's network address
    (ray/_private/worker.py: services.resolve_ip_for_localhost) unless Ray runs in its local-only
    mode. Ray reads that switch once at import (ray_constants.ENABLE_RAY_CLUSTER), so the flag is set
    here too; the processes Ray starts meanwhile inherit the environment variable. Both are restored.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(RAY_LOCAL_ONLY_ENV)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(RAY_LOCAL_ONLY_ENV, None)
        else:
            os.environ[RAY_LOCAL_ONLY_ENV] = saved_env


def _check_loopback() -> None:
    """Refuse a local Ray that took a network address (a Ray upgrade changed the switch above)."""
    import ipaddress

    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"local Ray took the node address {node_ip}, not 127.0.0.1, so its servers would listen "
            f"on every interface; this Ray version ignores {RAY_LOCAL_ONLY_ENV}=0 (see sweep.loopback_only)"
        )


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    import socket

    from specialsam.errors import UserError

    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(
            f"--address {address!r} must look like HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:10001"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise UserError(
            f"Ray cluster at {address} is unreachable ({exc.strerror or exc}); check --address "
            "/ RAY_ADDRESS and that `ray start --head` runs there"
        ) from None


def check_gpus(gpus_per_trial: float) -> None:
    from specialsam.errors import UserError

    if gpus_per_trial > 0 and ray.cluster_resources().get("GPU", 0) <= 0:
        raise UserError(
            f"--gpus-per-trial {gpus_per_trial:g} requested but the Ray cluster has no GPUs; "
            "drop it (CPU trials) or add GPU workers"
        )


class PhaseInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a Tune phase after Tune saved its experiment state (the trials it stopped
    are unfinished there, so ``--resume`` reruns them)."""


def ray_running() -> bool:
    """Whether this process has started or joined a Ray instance."""
    return ray.is_initialized()


def stop_ray() -> None:
    """End this process's Ray: a local instance it started is shut down with its processes; a
    cluster it joined is only disconnected from (it keeps running for other drivers)."""
    if ray.is_initialized():
        ray.shutdown()


# Tune reads this at every fit; "1" leaves SIGINT to the driver (the SIGUSR1 stop stays Tune's).
TUNE_SIGINT_ENV = "TUNE_DISABLE_SIGINT_HANDLER"


# What Tune logs once stopped: its own resume hint (Tuner.restore, not our --resume) and the
# interrupted trials as failures; the driver prints the one line that applies instead.
_TUNE_STOP_NOISE = ("Experiment has been interrupted", "Trials did not complete", "Failed to fetch metrics")
_TUNE_STOP_LOGGERS = ("ray.tune.tune", "ray.tune.analysis.experiment_analysis")


class _AfterStop(logging.Filter):
    def __init__(self, stopped: threading.Event) -> None:
        super().__init__()
        self.stopped = stopped

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.stopped.is_set() and str(record.msg).startswith(_TUNE_STOP_NOISE))


@contextmanager
def sigint_stops_tune() -> Iterator[Callable[[], bool]]:
    """Own SIGINT around ``Tuner.fit`` and yield a function telling whether Ctrl-C came.

    Tune's own SIGINT handler stops an experiment gracefully (state saved with the running trials
    unfinished, trial actors stopped) but then ``fit`` returns as if the phase had completed, and
    the handler stays installed after ``fit`` (a later Ctrl-C would be swallowed). Here the
    driver's handler records the Ctrl-C and asks Tune for the same graceful stop through the
    handler Tune registers for SIGUSR1; before Tune's loop has started, or at a second Ctrl-C
    (skip the final save, as in Tune), it raises KeyboardInterrupt. Handlers and the environment
    variable are restored on exit."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield lambda: False
        return
    hit = threading.Event()
    usr1 = getattr(signal, "SIGUSR1", None)
    saved_int = signal.getsignal(signal.SIGINT)
    saved_usr1 = signal.getsignal(usr1) if usr1 is not None else None
    saved_env = os.environ.get(TUNE_SIGINT_ENV)

    def on_sigint(signum: int, frame: Any) -> None:
        first = not hit.is_set()
        hit.set()
        tune_stop = signal.getsignal(usr1) if usr1 is not None else None
        if first and callable(tune_stop) and tune_stop is not saved_usr1:
            tune_stop(signum, frame)  # Tune's handler: end the loop, save, stop the trials
            signal.signal(signal.SIGINT, on_sigint)  # it put back what it found (this); keep it so
            return
        raise KeyboardInterrupt

    quiet = _AfterStop(hit)
    for name in _TUNE_STOP_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    os.environ[TUNE_SIGINT_ENV] = "1"
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield hit.is_set
    finally:
        for name in _TUNE_STOP_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
        signal.signal(signal.SIGINT, saved_int)
        if usr1 is not None and saved_usr1 is not None:
            signal.signal(usr1, saved_usr1)
        if saved_env is None:
            os.environ.pop(TUNE_SIGINT_ENV, None)
        else:
            os.environ[TUNE_SIGINT_ENV] = saved_env
