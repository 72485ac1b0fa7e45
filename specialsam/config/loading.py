"""Reading a sweep config: the YAML file, its ``smoke:`` section, ``--set`` overrides, validation.

Loading order (:func:`load_config`): the file, then its ``smoke:`` overrides (``--smoke`` only),
then the command line's ``--set KEY=VALUE`` overrides, then validation against
:mod:`specialsam.config.schema`. The ``smoke:`` section is checked on every load (applied to a
copy), so a typo there shows up before anyone runs ``--smoke``.

YAML 1.1 (PyYAML) reads ``1e-4`` (no dot) as a string; the loader turns such exponent-notation
strings back into numbers, in the file and in ``--set`` values alike. Non-finite numbers (``.inf``,
``.nan``, ``1e999``) are errors wherever they appear. YAML anchors and aliases (``&name``,
``*name``) are refused: a sweep config has no use for them, and a few hundred bytes of nested
aliases ("billion laughs") would otherwise expand into gigabytes, so reading any config is linear
in its size.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from specialsam.config._text import _raise, _short, _suggest
from specialsam.config.schema import SweepConfig, _fields_at, _resolve
from specialsam.errors import UserError
from specialsam.tasks import TASKS

SWEEPS_DIR = Path(__file__).resolve().parents[2] / "sweeps"
"""Where the shipped sweep configs live (a source checkout: ``<repo>/sweeps``)."""

_EXP_FLOAT = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$")


class _NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` that stops at the first anchor or alias, before anything is expanded."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            mark = event.start_mark
            raise UserError(
                f"YAML anchors and aliases (&name, *name) are not allowed (line {mark.line + 1}, "
                f"column {mark.column + 1}); write the values out"
            )
        return super().compose_node(parent, index)


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` without anchors/aliases; work and memory are linear in ``len(text)``.

    Raises ``UserError`` (message without the source) for aliases and absurd nesting, and
    ``yaml.YAMLError`` for syntax errors."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise UserError("the YAML is nested too deeply; a sweep config needs a few levels at most") from None
    finally:
        loader.dispose()


class _NonFinite(ValueError):
    """A non-finite number at ``key`` (a dotted path inside the value being read)."""

    def __init__(self, key: str, value: float) -> None:
        super().__init__(key)
        self.key, self.value = key, value


def _yaml12_numbers(obj: Any, key: str = "") -> Any:
    """Turn exponent-notation strings PyYAML leaves as text (``1e-4``) into floats; a non-finite
    number anywhere (``.inf``, ``.nan``, ``1e999``) raises ``_NonFinite`` with its dotted key."""
    if isinstance(obj, str) and _EXP_FLOAT.match(obj.strip()):
        obj = float(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        raise _NonFinite(key, obj)
    if isinstance(obj, dict):
        return {k: _yaml12_numbers(v, f"{key}.{k}" if key else str(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_yaml12_numbers(v, f"{key}[{i}]") for i, v in enumerate(obj)]
    return obj


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


MAX_CONFIG_BYTES = 1024**2
"""Largest sweep config read (the shipped ones are 2-6 KB)."""


def _read_yaml(path: Path) -> dict[str, Any]:
    shown = _display(path)
    try:
        with path.open("rb") as f:  # bounded: --config /dev/zero must not read forever
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise UserError(
                f"{shown}: larger than {MAX_CONFIG_BYTES // 1024**2} MB; a sweep config is a few KB "
                "(pass the sweep's YAML file)"
            )
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{shown}: no such sweep config; pass an existing YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{shown}: cannot read the sweep config ({exc})") from None
    try:
        raw = _safe_load(text)
    except UserError as exc:
        raise UserError(f"{shown}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{shown}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{shown}: expected a mapping of settings (task: ..., search: ...), got {type(raw).__name__}"
        )
    try:
        return _yaml12_numbers(raw)
    except _NonFinite as exc:
        raise UserError(f"{shown}: {exc.key} must be a finite number (got {exc.value})") from None


def _apply(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    _resolve(parts, raw.get("task"))
    node = raw
    for name in parts[:-1]:
        nxt = node.get(name)
        if not isinstance(nxt, dict):
            nxt = {}
            node[name] = nxt
        node = nxt
    node[parts[-1]] = value


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested ``smoke:`` groups to dotted keys; a value that is not a mapping ends a key, and the
    task's ``data.*`` settings and the search space's entries are kept whole."""
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        parts = key.split(".")
        whole = (len(parts) >= 2 and parts[0] == "data") or (
            len(parts) >= 3 and parts[:2] == ["search", "space"]
        )
        if isinstance(v, dict) and v and not whole:
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` (VALUE read as YAML: ``4``, ``1e-4``, ``[tiny-s]``, ``null``) -> (key, value)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    shown = f"--set {text if len(text) <= 80 else text[:77] + '...'}"
    if not sep or not key or any(not p for p in key.split(".")):
        raise UserError(f"{shown}: expected KEY=VALUE with a dotted key, e.g. --set search.num_samples=4")
    try:
        parsed = _safe_load(value) if value.strip() else None
    except UserError as exc:
        raise UserError(f"{shown}: {exc}") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{shown}: the value is not valid YAML ({problem})") from None
    try:
        return key, _yaml12_numbers(parsed, key)
    except _NonFinite as exc:
        raise UserError(f"{shown}: {exc.key} must be a finite number (got {exc.value})") from None


def _validate(raw: dict[str, Any], shown: str, sources: dict[str, tuple[str, str]]) -> SweepConfig:
    """Validate; ``sources`` maps each overridden dotted key to (label when the error is at that
    key, label when it is at a sibling key)."""

    def label_for(full: str) -> str:
        """Name where the offending value came from: the override that set it (or a setting under
        it), else the file, with the override that set a sibling setting when there is one."""

        def under(key: str, prefix: str) -> bool:
            return key == prefix or key.startswith((prefix + ".", prefix + "["))

        direct = [k for k in sources if under(full, k) or under(k, full)]
        if direct:
            return sources[max(direct, key=len)][0]
        siblings = [k for k in sources if "." in k and under(full, k.rpartition(".")[0])]
        if siblings:
            return sources[max(siblings, key=len)][1]
        return shown

    try:
        return SweepConfig.model_validate(raw)
    except ValidationError as exc:
        _raise(exc, label_for, _fields_at)
    raise AssertionError("unreachable")


def load_config(path: Path | str, overrides: Sequence[str] = (), smoke: bool = False) -> SweepConfig:
    """Read, override and validate a sweep config; every problem is a one-line ``UserError``.

    Order: the file, its ``smoke:`` section (only when ``smoke``), the ``overrides``
    (``KEY=VALUE`` strings, as ``--set`` gives them), then validation.
    """
    path = Path(path)
    shown = _display(path)
    raw = _read_yaml(path)
    smoke_raw = raw.get("smoke") or {}
    if not isinstance(smoke_raw, dict):
        raise UserError(
            f"{shown}: smoke must be a mapping of dotted keys to values (got {_short(smoke_raw)})"
        )
    smoke_items = _flatten(smoke_raw)

    def with_smoke(base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        out: dict[str, Any] = copy.deepcopy(base)
        sources: dict[str, tuple[str, str]] = {}
        for key, value in smoke_items.items():
            label = f"{shown} (smoke {key})"
            try:
                _apply(out, key, value)
            except UserError as exc:
                raise UserError(f"{label}: {exc}") from None
            sources[key] = (label, f"{shown} (with smoke {key})")
        return out, sources

    parsed = [(parse_override(text), f"--set {text.strip()}") for text in overrides]

    def build(use_smoke: bool) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
        out, sources = with_smoke(raw) if use_smoke else (copy.deepcopy(raw), {})
        for (key, value), label in parsed:
            try:
                _apply(out, key, value)
            except UserError as exc:
                raise UserError(f"--set {key}: {exc}") from None
            sources[key] = (label, f"{shown} with {label}")
        return out, sources

    merged, sources = build(smoke)
    cfg = _validate(merged, shown, sources)
    if not smoke and smoke_items:
        # check the smoke: section now too, so a mistake there shows before anyone runs --smoke
        merged, sources = build(True)
        _validate(merged, shown, sources)
    return cfg


def default_config_path(task: str) -> Path:
    """The shipped sweep config of a task: ``<repo>/sweeps/<task>.yaml``."""
    if task not in TASKS:
        raise UserError(
            f"unknown task {task!r}{_suggest(task, TASKS)}; choose from {', '.join(sorted(TASKS))}"
        )
    path = SWEEPS_DIR / f"{task}.yaml"
    if not path.is_file():
        raise UserError(
            f"no shipped sweep config for task {task} ({path} is missing); "
            "write one (sweeps/carpet.yaml is a commented example) and pass its path"
        )
    return path


def config_to_dict(cfg: SweepConfig) -> dict[str, Any]:
    """The config as plain JSON-able data (for MLflow params and the report); validates back
    to an equal config with ``SweepConfig.model_validate``."""
    return json.loads(cfg.model_dump_json())
