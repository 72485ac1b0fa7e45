"""A phase's progress in the terminal: trials finished / running / failed of the total, the best
validation mIoU so far with its configuration, elapsed time and an estimate of what is left.

``PhaseProgress`` is a Tune callback in the driver (Ray's own status tables stay off:
``RunConfig(verbose=0)``). In a terminal it keeps one live ``tqdm`` bar per phase; when output is
not a terminal (a log file, CI, a pipe) it prints one plain line each time a trial finishes, so
logs stay readable and grep-able::

    [tune-tiny-s] 3/4 trials (2 done, 1 stopped early, 0 failed), 1 running | best val mIoU 0.712
    (lr=0.00031, bce_weight=0.52) | 0:42 elapsed, ~0:14 left
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from specialsam.sweep import mlflow_runs as names

PREFIX = "["
"""Every plain progress line starts ``[<phase name>] ``: what tests and log readers look for."""


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclass
class PhaseState:
    """Counts and the best result of one phase; ``line`` is its plain-text form."""

    name: str
    total: int
    shown: tuple[str, ...]  # config keys that describe a trial in this phase
    started: float = field(default_factory=time.monotonic)
    running: set[str] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    stopped: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    best: float | None = None
    best_config: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return len(self.done) + len(self.stopped) + len(self.failed)

    def observe(self, trial_id: str, config: dict, result: dict) -> None:
        v = result.get(names.VAL_MIOU)
        if isinstance(v, (int, float)) and v == v and (self.best is None or v > self.best):
            self.best = float(v)
            self.best_config = {k: config[k] for k in self.shown if k in config}

    def finish(self, trial_id: str, outcome: str) -> None:
        self.running.discard(trial_id)
        for bucket in (self.done, self.stopped, self.failed):
            bucket.discard(trial_id)
        {"done": self.done, "stopped": self.stopped, "failed": self.failed}[outcome].add(trial_id)

    def eta(self) -> float | None:
        """Seconds left at the rate trials have finished so far (None before the first finishes)."""
        if not self.finished:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / self.finished * max(0, self.total - self.finished)

    def best_text(self) -> str:
        if self.best is None:
            return "best val mIoU -"
        cfg = ", ".join(f"{k}={_value(v)}" for k, v in self.best_config.items())
        return f"best val mIoU {self.best:.3f} ({cfg})"

    def counts(self) -> str:
        return (
            f"{len(self.done)} done, {len(self.stopped)} stopped early, {len(self.failed)} failed; "
            f"{len(self.running)} running"
        )

    def line(self) -> str:
        eta = self.eta()
        left = "?" if eta is None else _clock(eta)
        return (
            f"[{self.name}] {self.finished}/{self.total} trials ({self.counts()}) | {self.best_text()} | "
            f"{_clock(time.monotonic() - self.started)} elapsed, ~{left} left"
        )


def outcome_of(result: dict | None) -> str:
    """How a completed trial ended: ``failed`` (reported a failure), ``done`` (ran to its final
    report) or ``stopped`` (ASHA stopped it early)."""
    result = result or {}
    if "failed" in result:
        return "failed"
    return "done" if "final" in result else "stopped"


class PhaseProgress(tune.Callback):
    """Tune callback that shows one phase's progress (a live bar on a terminal, else plain lines)."""

    def __init__(self, name: str, total: int, shown: tuple[str, ...], out: TextIO | None = None) -> None:
        self.state = PhaseState(name, total, shown)
        self.out = out
        self.bar = None
        self._seen_restored = False

    def __getstate__(self) -> dict:
        # Tune pickles its run config; the live bar and stream stay out (a resume makes a new one)
        return {"state": self.state, "out": None, "bar": None, "_seen_restored": True}

    @property
    def stream(self) -> TextIO:
        return self.out or sys.stdout

    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        if total_num_samples and total_num_samples > 0:
            self.state.total = int(total_num_samples)
        self.state.started = time.monotonic()
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.state.total,
                desc=self.state.name,
                unit="trial",
                file=self.stream,
                dynamic_ncols=True,
            )

    def on_step_begin(self, iteration, trials, **info):
        if not self._seen_restored:  # a resumed phase: trials Tune restored as finished count
            self._seen_restored = True
            for t in trials:
                if t.status == "TERMINATED":
                    self.state.finish(t.trial_id, outcome_of(t.last_result))
                elif t.status == "ERROR":
                    self.state.finish(t.trial_id, "failed")
            if self.state.finished:
                self._show(force=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.state.running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        before = self.state.best
        self.state.observe(trial.trial_id, trial.config, result)
        if self.state.best != before:
            self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.state.finish(trial.trial_id, outcome_of(trial.last_result))
        self._show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.state.finish(trial.trial_id, "failed")
        self._show(force=True)

    def on_experiment_end(self, trials, **info):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _show(self, force: bool = False) -> None:
        """Update the bar; plain output prints only when a trial finished (``force``)."""
        if self.bar is not None:
            self.bar.n = self.state.finished
            self.bar.set_postfix_str(f"{self.state.counts()} | {self.state.best_text()}", refresh=True)
        elif force:
            print(self.state.line(), file=self.stream, flush=True)


def progress_for(name: str, param_space: dict[str, Any], num_samples: int) -> PhaseProgress:
    """The callback of one phase: its total is ``num_samples`` times the grid's combinations; a
    trial is described by its grid axes (phase B) or its searched values (phase A)."""
    from ray.tune.search.sample import Domain

    grid = {k: v["grid_search"] for k, v in param_space.items() if isinstance(v, dict) and "grid_search" in v}
    total = num_samples
    for values in grid.values():
        total *= len(values)
    shown = tuple(grid) if grid else tuple(k for k, v in param_space.items() if isinstance(v, Domain))
    return PhaseProgress(name, total, shown)
