"""Error wording of the sweep config: every mistake is one line naming the dotted key.

Kept apart from the schema (:mod:`specialsam.config.schema`) and the loading order
(:mod:`specialsam.config.loading`) so both share one voice: "unknown setting ... (did you mean ...?)",
"KEY must be >= 1 (got 0)". Nothing here knows the schema; callers pass ``fields_at`` (the known
names under a dotted key) where a suggestion needs it.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import ValidationError

from specialsam.errors import UserError

FieldsAt = typing.Callable[[tuple[str, ...]], list[str]]
"""Known setting names directly under a dotted key (for "did you mean" on an unknown key)."""


def _no_fields(parts: tuple[str, ...]) -> list[str]:
    return []


class _Bad(ValueError):
    """A validation problem at ``<loc>.<key>`` (``key`` may be empty: the validator's own loc).

    ``text`` may contain ``{key}``, replaced by the full dotted key; ``candidates`` (for unknown
    keys) are the known names at that level, for a "did you mean" suggestion.
    """

    def __init__(self, key: str, text: str, candidates: Sequence[str] | None = None) -> None:
        super().__init__(text)
        self.key, self.text, self.candidates = key, text, candidates


def _dotted(parts: Iterable[str | int]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif p.startswith("["):
            out += p
        else:
            out += f".{p}" if out else str(p)
    return out


def _suggest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def _check_names(
    names: Sequence[str],
    known: Sequence[str],
    noun: str,
    empty: str,
    listed_as: str = "choose from",
    unique: bool = True,
) -> None:
    """A list setting drawn from a vocabulary (models, methods, prompt strategies, LoRA targets):
    not empty (``{key} <empty>``), every name known (with a "did you mean"), none twice."""
    if not names:
        raise _Bad("", "{key} " + empty)
    for i, name in enumerate(names):
        if name not in known:
            raise _Bad(
                f"[{i}]",
                f"{{key}}: unknown {noun} {name!r}{_suggest(name, known)}; {listed_as} {', '.join(known)}",
            )
    if unique and len(set(names)) != len(names):
        raise _Bad("", f"{{key}} lists a {noun.split()[-1]} twice (got {list(names)})")


def _check_counts(values: Sequence[int], noun: str, each: str = "{key}") -> None:
    """A list of counts (training sizes, LoRA ranks): not empty, every one >= 1; ``each`` words
    the message about one value (``{key}`` is the setting)."""
    if not values:
        raise _Bad("", f"{{key}} must list at least one {noun}")
    for i, n in enumerate(values):
        if n < 1:
            raise _Bad(f"[{i}]", f"{each} must be >= 1 (got {n})")


def _unknown(full: str, candidates: Iterable[str]) -> str:
    head, _, last = full.rpartition(".")
    prefix = f"{head}." if head else ""
    cands = sorted(candidates)
    hint = _suggest(last, cands, prefix)
    if not hint and cands:
        hint = f" (known: {', '.join(cands)})"
    return f"unknown setting '{full}'{hint}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping of settings",
    "model_type": "a mapping of settings",
    "model_attributes_type": "a mapping of settings",
    "dataclass_type": "a mapping of settings",
    "none_required": "null",
    "finite_number": "a finite number",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _describe(
    err: dict[str, Any], loc: tuple[str | int, ...], fields_at: FieldsAt = _no_fields
) -> tuple[str, str]:
    """(full dotted key, one-line message) for one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    full = _dotted(loc)
    exc = ctx.get("error")
    if isinstance(exc, _Bad):
        full = _dotted((*loc, *exc.key.split("."))) if exc.key else full
        if exc.candidates is not None:
            return full, _unknown(full, exc.candidates) + exc.text.replace("{key}", full)
        return full, exc.text.replace("{key}", full)
    if kind == "extra_forbidden":
        return full, _unknown(full, fields_at(tuple(str(p) for p in loc[:-1])))
    if kind == "missing":
        return full, f"{full} is required"
    got = f" (got {_short(err.get('input'))})"
    if kind in _TYPE_WORDS:
        return full, f"{full} must be {_TYPE_WORDS[kind]}{got}"
    for bound, sign in _BOUNDS.items():
        if bound in ctx and kind.startswith(("greater_than", "less_than")):
            return full, f"{full} must be {sign} {_num(ctx[bound])}{got}"
    if kind == "literal_error":
        return full, f"{full} must be one of {ctx.get('expected', '?')}{got}"
    if kind in ("too_short", "too_long"):
        return full, f"{full} {err['msg'].lower()}"
    msg = err["msg"].removeprefix("Value error, ")
    return full, f"{full}: {msg}{got}"


def _raise(exc: ValidationError, label_for: typing.Callable[[str], str], fields_at: FieldsAt) -> None:
    errors = exc.errors(include_url=False)
    full, msg = _describe(errors[0], tuple(errors[0]["loc"]), fields_at)
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    raise UserError(f"{label_for(full)}: {msg}{more}") from None
