"""User-facing errors.

Every mistake a user can make (bad path, bad config, wrong checkpoint) raises ``UserError`` with a
one-line message naming the file or setting and what to do. CLIs catch it, print the line, exit 2;
no traceback, because the user did nothing a traceback would help with.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A problem with the user's input; the message is a single actionable line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def cli_errors(main: F) -> F:
    """Run a CLI entry point, turning ``UserError`` into one line on stderr and exit code 2."""

    @wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
