"""Config values: Hydra/OmegaConf containers turned plain (safe to save in checkpoints), numbers and choices
checked (``checked_number``, ``choice``: the one validator of each kind, one error format)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from pneumo.errors import ConfigError

T = TypeVar("T")


def to_plain(value: Any) -> Any:
    """``DictConfig``/``ListConfig`` -> ``dict``/``list`` (resolved); anything else unchanged."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def checked_number(
    value: Any,
    key: str,
    kind: type = int,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> int | float:
    """``value`` as an ``int``/``float`` within ``[low, high]`` (``(`` / ``)`` with ``*_open``), or a
    ``ConfigError`` naming ``key``, the value and the valid range.

    Example:
        >>> checked_number("16", "data.batch_size", int, 1)
        16
        >>> checked_number("abc", "data.batch_size", int, 1)
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.batch_size='abc': must be a whole number >= 1
        >>> checked_number(1.0, "data.val_fraction", float, 0, 1, low_open=True, high_open=True)
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.val_fraction=1.0: must be a number > 0 and < 1
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {high:g}")
    what = ("a whole number" if kind is int else "a number") + (" " + " and ".join(bounds) if bounds else "")
    bad = ConfigError(f"{key}={value!r}: must be {what}")
    if isinstance(value, bool) or value is None:
        raise bad
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise bad from None
    if number != number or (kind is int and not number.is_integer()):  # NaN, or 2.5 for a count
        raise bad
    if low is not None and (number < low or (low_open and number == low)):
        raise bad
    if high is not None and (number > high or (high_open and number == high)):
        raise bad
    return int(number) if kind is int else number


def suggestion(value: object, choices: Iterable[object]) -> str:
    """``" (did you mean 'x'?)"`` for the choice closest to ``value``, or ``""`` when none is close.

    Example:
        >>> suggestion("densnet121", ["densenet121", "resnet50"])
        " (did you mean 'densenet121'?)"
        >>> suggestion("zzz", ["auto", "window"])
        ''
    """
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def choice(value: Any, key: str, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``, else a one-line ``ConfigError`` naming ``key``, the value, the
    valid choices and the closest one: the one validator of every option that takes a name.

    Example:
        >>> choice("skip", "data.on_missing", ("error", "skip"))
        'skip'
        >>> choice("skp", "data.on_missing", ("error", "skip"))
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.on_missing='skp': choose one of 'error', 'skip' (did you mean 'skip'?)
    """
    options = tuple(choices)
    for option in options:
        if value == option:
            return option
    listed = ", ".join(repr(o) for o in options)
    raise ConfigError(f"{key}={value!r}: choose one of {listed}{suggestion(value, options)}")
