"""Config values: Hydra/OmegaConf containers turned plain (safe to save in checkpoints), numbers and choices
checked (``checked_number``, ``choice``: the one validator of each kind, one error format)."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Iterable, Mapping
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
        >>> checked_number("16", "data.loader.batch_size", int, 1)
        16
        >>> checked_number("abc", "data.loader.batch_size", int, 1)
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.loader.batch_size='abc': must be a whole number >= 1
        >>> checked_number(1.0, "data.split.val_fraction", float, 0, 1, low_open=True, high_open=True)
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.split.val_fraction=1.0: must be a number > 0 and < 1
    """
    bounds = []
    if low is not None:
        bounds.append(f"{'>' if low_open else '>='} {_number(low)}")
    if high is not None:
        bounds.append(f"{'<' if high_open else '<='} {_number(high)}")
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


def _number(x: float) -> str:
    """A bound as written: whole numbers in full (``4294967295``, not ``4.29497e+09``), others short."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


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


def choice_error(
    value: Any, key: str, choices: Iterable[object], *, also: str = "", error: type[Exception] = ConfigError
) -> Exception:
    """The one error of an option value that is none of its ``choices``: ``key=value: choose one of ...``,
    ``also`` naming the other forms the option takes (``"a number in [0, 1]"``), and the closest choice.
    ``error`` is the class to raise (a ``ConfigError`` subclass of the module, e.g. ``GradCamError``).

    Example:
        >>> print(choice_error("yuoden", "eval.threshold", ["youden"], also="a number in [0, 1]"))
        eval.threshold='yuoden': choose one of 'youden' or a number in [0, 1] (did you mean 'youden'?)
    """
    options = tuple(choices)
    listed = ", ".join("null" if o is None else repr(o) for o in options)  # null: how a config writes None
    names = [o for o in options if o is not None]
    return error(
        f"{key}={value!r}: choose one of {listed}{' or ' + also if also else ''}{suggestion(value, names)}"
    )


def choice(
    value: Any, key: str, choices: Iterable[T], *, also: str = "", error: type[Exception] = ConfigError
) -> T:
    """``value`` if it is one of ``choices``, else a one-line ``ConfigError`` naming ``key``, the value, the
    valid choices and the closest one (``choice_error``): the one validator of every option that takes a name.

    Example:
        >>> choice("skip", "data.images.on_missing", ("error", "skip"))
        'skip'
        >>> choice("skp", "data.images.on_missing", ("error", "skip"))
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.images.on_missing='skp': choose one of 'error', 'skip' (did you mean 'skip'?)
        >>> choice("fast", "callbacks.performance.matmul_precision", ("highest", "high", "medium", None))
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: callbacks.performance.matmul_precision='fast': choose one of 'highest', 'high', 'medium', null
    """
    options = tuple(choices)
    for option in options:
        if value == option and isinstance(value, bool) == isinstance(option, bool):  # True is not 1
            return option
    raise choice_error(value, key, options, also=also, error=error)


#: Hydra's mark of a value the user must give (``key: ???``).
MISSING_VALUE = "???"

S = TypeVar("S")


def _settings_class(hint: Any) -> type | None:
    """The dataclass named by a field's type hint (``X`` or ``X | None``), or ``None``."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg) and isinstance(arg, type):
            return arg
    return None


def settings_from(cls: type[S], values: Any, key: str = "") -> S:
    """A settings dataclass ``cls`` built from a config block in one call: every key must be a field of
    ``cls`` (else a one-line ``ConfigError`` naming ``key.name`` and the closest field), fields typed with
    another settings dataclass are built the same way from their sub-block, absent fields keep their
    defaults (a settings class with its own ``from_config`` reads its block itself) and ``???`` (Hydra's
    "must be given") is an error naming the key. ``values`` may also be a ``cls`` already (returned as is)
    or ``None`` (all defaults). The values themselves are checked by ``cls`` (its ``__post_init__``), so a
    settings object made in Python is checked the same way.

    Example:
        >>> @dataclasses.dataclass
        ... class Loader:
        ...     batch_size: int = 32
        ...     num_workers: int = 4
        >>> settings_from(Loader, {"batch_size": 8}, "data.loader")
        Loader(batch_size=8, num_workers=4)
        >>> settings_from(Loader, {"batchsize": 8}, "data.loader")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: data.loader.batchsize is not a setting (did you mean 'batch_size'?); known: batch_size, num_workers
        >>> @dataclasses.dataclass
        ... class Checks:
        ...     evaluate: bool = False
        >>> settings_from(Checks, {"evaluate": "maybe"}, "saliency")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: saliency.evaluate='maybe': must be true or false
    """
    if isinstance(values, cls):
        return values
    values = {} if values is None else to_plain(values)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key or cls.__name__}={values!r}: must be a mapping of {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        where = f"{key}.{name}" if key else str(name)
        if name not in fields:
            raise ConfigError(
                f"{where} is not a setting{suggestion(name, fields)}; known: {', '.join(fields)}"
            )
        if isinstance(value, str) and value == MISSING_VALUE:
            raise ConfigError(f"{where} must be given: pass {where}=...")
        if hints.get(name) is bool and not isinstance(value, bool):  # "maybe" would count as true
            raise ConfigError(f"{where}={value!r}: must be true or false")
        inner = _settings_class(hints.get(name))
        if inner is None or value is None or isinstance(value, inner):
            kwargs[name] = value
        elif hasattr(inner, "from_config"):  # a block with its own reader (``eval``: ``EvalSettings``)
            kwargs[name] = inner.from_config(value)
        else:
            kwargs[name] = settings_from(inner, value, where)
    for name, spec in fields.items():
        if (
            name not in kwargs
            and spec.default is dataclasses.MISSING
            and spec.default_factory is dataclasses.MISSING
        ):
            where = f"{key}.{name}" if key else name
            raise ConfigError(f"{where} must be given: pass {where}=...")
    return cls(**kwargs)
