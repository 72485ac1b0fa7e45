"""User-facing errors.

Every mistake a user can make (bad path, bad config, wrong checkpoint) raises ``UserError`` with a
one-line message naming the file or setting and what to do. CLIs catch it, print the line, exit 2;
no traceback, because the user did nothing a traceback would help with. A full disk gets the same
treatment: it is the machine's state, not a bug, and the fix (free space) is the user's.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])

_DISK_FULL_TEXT = ("No space left on device", "database or disk is full")


class UserError(Exception):
    """A problem with the user's input; the message is a single actionable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or any(
        t in str(exc) for t in _DISK_FULL_TEXT
    )


def _written_path(exc: BaseException) -> str | None:
    """The file a failed write was writing: the error's own ``filename``, else the innermost
    frame's open file or ``path``-like local (``f.write`` errors carry no file name)."""
    if getattr(exc, "filename", None):
        return str(exc.filename)
    tb, frames = exc.__traceback__, []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name, value in frame.f_locals.items():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
            if name in ("path", "tmp", "dst", "target") and isinstance(value, (str, Path)):
                return str(value)
    return None


def disk_full(exc: BaseException) -> UserError | None:
    """The one-line error for a full disk anywhere in ``exc``'s chain (``ENOSPC`` from a write,
    or SQLite's "database or disk is full" wrapped by MLflow); None for anything else."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if _is_disk_full(cur):
            where = _written_path(cur)
            place = f" writing {where}" if where else ""
            return UserError(
                f"no space left on the device{place}: free space there (or point the output "
                "elsewhere) and run again"
            )
        cur = cur.__cause__ or cur.__context__
    return None


def check_writable_dir(path: Path, label: str) -> None:
    """Fail now, before anything is written, unless ``path`` is a writable folder or can be made
    one (its nearest existing ancestor is a writable folder). Creates nothing."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{label} {path} is a file, not a folder; pass a folder (or a new path)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{label} {path} is not writable; fix its permissions or pass another folder")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label} {path} cannot be created: {parent} is not writable")


def cli_errors(main: F) -> F:
    """Run a CLI entry point, turning ``UserError`` (and a full disk) into one line on stderr and
    exit code 2."""

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except Exception as exc:
            full = disk_full(exc)
            if full is None:
                raise
            print(f"error: {full}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
