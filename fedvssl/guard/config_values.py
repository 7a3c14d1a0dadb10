"""Typed values out of a composed config, each refused by its key when it does not fit.

Hydra hands the entry points whatever the command line said: ``rounds=abc`` arrives as the string
``"abc"``, ``resume=yes`` as a string that Python would call true. These readers take a dotted key
(``optimizer.lr``), check the value's type and range, and raise :class:`ConfigValueError` with one
line that names the key, the value and what it must be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class ConfigValueError(ValueError):
    """A config value of the wrong type or out of range; the message names its key."""


_MISSING = object()


def lookup(cfg: Mapping[str, Any], key: str, default: Any = _MISSING) -> Any:
    """Return the value at the dotted ``key`` (``default`` when absent, else an error)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise ConfigValueError(f"{key} is missing from the config")
            return default
        node = node[part]
    return node


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def integer(cfg: Mapping[str, Any], key: str, at_least: int | None = None) -> int:
    """Return the integer at ``key``, at least ``at_least`` when given."""
    value = lookup(cfg, key)
    if not _is_integer(value):
        raise ConfigValueError(f"{key} must be an integer, got {value!r}")
    if at_least is not None and value < at_least:
        raise ConfigValueError(f"{key} must be at least {at_least}, got {value}")
    return int(value)


def optional_integer(cfg: Mapping[str, Any], key: str, at_least: int | None = None) -> int | None:
    """Return the integer at ``key`` (see :func:`integer`), or None when it is null or absent."""
    if lookup(cfg, key, None) is None:
        return None
    return integer(cfg, key, at_least)


def number(
    cfg: Mapping[str, Any], key: str, at_least: float | None = None, above: float | None = None
) -> float:
    """Return the finite number at ``key``: at least ``at_least``, or above ``above``."""
    value = lookup(cfg, key)
    if not (_is_number(value) and math.isfinite(value)):
        raise ConfigValueError(f"{key} must be a finite number, got {value!r}")
    if at_least is not None and value < at_least:
        raise ConfigValueError(f"{key} must be at least {at_least:g}, got {value:g}")
    if above is not None and value <= above:
        raise ConfigValueError(f"{key} must be above {above:g}, got {value:g}")
    return float(value)


def flag(cfg: Mapping[str, Any], key: str) -> bool:
    """Return the boolean at ``key`` (``true`` or ``false``, never a string that looks like one)."""
    value = lookup(cfg, key)
    if not isinstance(value, bool):
        raise ConfigValueError(f"{key} must be true or false, got {value!r}")
    return value


def choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """Return the string at ``key``, one of ``choices``."""
    value = lookup(cfg, key)
    if value not in choices:
        raise ConfigValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return str(value)


def integers(cfg: Mapping[str, Any], key: str, at_least: int | None = None) -> tuple[int, ...]:
    """Return the list of integers at ``key`` (each at least ``at_least``) as a tuple."""
    value = lookup(cfg, key)
    if not isinstance(value, list | tuple) or not all(_is_integer(v) for v in value):
        raise ConfigValueError(f"{key} must be a list of integers, e.g. [1, 5], got {value!r}")
    if at_least is not None and any(v < at_least for v in value):
        raise ConfigValueError(f"every entry of {key} must be at least {at_least}, got {value}")
    return tuple(int(v) for v in value)


def numbers(cfg: Mapping[str, Any], key: str) -> tuple[float, ...]:
    """Return the list of finite numbers at ``key`` as a tuple."""
    value = lookup(cfg, key)
    if not isinstance(value, list | tuple) or not all(
        _is_number(v) and math.isfinite(v) for v in value
    ):
        raise ConfigValueError(f"{key} must be a list of numbers, e.g. [0.0, 0.9], got {value!r}")
    return tuple(float(v) for v in value)


def strings(cfg: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """Return the list of strings at ``key`` as a tuple."""
    value = lookup(cfg, key)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigValueError(f"{key} must be a list of names, e.g. [a, b], got {value!r}")
    return tuple(value)
