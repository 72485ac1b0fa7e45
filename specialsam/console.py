"""The ``specialsam`` console command: ``specialsam sweep|trial|models ...``.

One name for the three command lines, each passed its arguments unchanged:

    specialsam sweep --task carpet ...   = python sweeps/run.py --task carpet ...
    specialsam trial --task carpet ...   = python -m specialsam.trial ...
    specialsam models list               = python -m specialsam.models list

``python sweeps/run.py`` stays the documented main command; the sweep runs from a source checkout
(its configs live in ``<repo>/sweeps``), so ``specialsam sweep`` loads that same script.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable

from specialsam.errors import EXIT_USER_ERROR, UserError

USAGE = """usage: specialsam {sweep,trial,models} ...

  sweep    a sweep: should you fine-tune SAM for this task? (same flags as python sweeps/run.py)
  trial    one fine-tuning trial without Ray or MLflow, or --baseline-only (python -m specialsam.trial)
  models   the SAM model registry: list, download, check (python -m specialsam.models)

`specialsam <command> --help` lists a command's flags."""


def _sweep(argv: list[str]) -> int:
    from specialsam.config.loading import SWEEPS_DIR

    script = SWEEPS_DIR / "run.py"
    if not script.is_file():
        raise UserError(
            f"{script} is missing: `specialsam sweep` runs from a source checkout (pip install -e .)"
        )
    spec = importlib.util.spec_from_file_location("specialsam_sweep_script", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def _trial(argv: list[str]) -> int:
    from specialsam.trial import main

    return main(argv) or 0


def _models(argv: list[str]) -> int:
    from specialsam.models.registry import main

    return main(argv) or 0


COMMANDS: dict[str, Callable[[list[str]], int]] = {"sweep": _sweep, "trial": _trial, "models": _models}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else EXIT_USER_ERROR
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"error: unknown command {argv[0]!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return EXIT_USER_ERROR
    try:
        return command(argv[1:])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
