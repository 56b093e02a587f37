"""Small helpers shared by pneumo's command-line entry points.

``user_errors`` is how every entry point (``train.py``, ``explain.py``, ``python -m pneumo...``) turns a
``PneumoError`` into one line on stderr and exit status 2, with the traceback kept in the run's log file
only; any other exception is a bug and keeps its traceback.

Example:
    >>> from pneumo.errors import ConfigError
    >>> with user_errors():  # doctest: +SKIP
    ...     raise ConfigError("data.batch_size=0: must be a whole number >= 1")
    error: data.batch_size=0: must be a whole number >= 1
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from pneumo.errors import USER_ERROR_EXIT, PneumoError

log = logging.getLogger("pneumo")


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout; a closed pipe (``... | head``) ends output quietly.

    Example:
        >>> print_json({"images": 600})
        {
          "images": 600
        }
    """
    try:
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader has gone: point stdout at devnull so that the interpreter's final flush is silent too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def user_error_in(err: BaseException) -> PneumoError | None:
    """The ``PneumoError`` behind ``err``: itself, or the nearest one among its causes (Hydra's
    ``instantiate`` wraps what a constructor raised in an ``InstantiationException``).

    Example:
        >>> from pneumo.errors import ConfigError
        >>> try:
        ...     try:
        ...         raise ConfigError("data.batch_size=0: must be >= 1")
        ...     except ConfigError as inner:
        ...         raise RuntimeError("Error in call to target 'NIHDataModule'") from inner
        ... except RuntimeError as outer:
        ...     str(user_error_in(outer))
        'data.batch_size=0: must be >= 1'
        >>> user_error_in(KeyError("a bug")) is None
        True
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, PneumoError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (inner newlines and runs of spaces collapsed).

    Example:
        >>> one_line(ValueError("bad value" + chr(10) + "  of data.image_size"))
        'bad value of data.image_size'
    """
    return " ".join(str(err).split()) or type(err).__name__


def log_to_files(logger: logging.Logger, level: int, message: str, exc_info: bool = True) -> None:
    """Send one record (with the current traceback) to the log *files* only (``train.log``...), not to the
    console: the terminal gets the one-line form, the file keeps the detail."""
    record = logger.makeRecord(
        logger.name, level, __file__, 0, message, (), sys.exc_info() if exc_info else None
    )
    for handler in logging.getLogger().handlers + logger.handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def _in_multirun() -> bool:
    with contextlib.suppress(Exception):  # Hydra absent or not running
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    return False


@contextlib.contextmanager
def user_errors(logger: logging.Logger = log) -> Iterator[None]:
    """Run an entry point's body: a ``PneumoError`` (or an exception caused by one) becomes ``error: <one
    line>`` on stderr and exit status 2 (``USER_ERROR_EXIT``), its traceback going to the run's log file
    only. Other exceptions are bugs: their traceback goes to the log file and they propagate (Hydra or
    Python prints it once). In a Hydra multirun a user error propagates too, so that the sweep records the
    failed job and goes on (``SweepSummary``)."""
    try:
        yield
    except Exception as err:
        user = user_error_in(err)
        if user is None:
            log_to_files(logger, logging.ERROR, f"failed with a bug ({type(err).__name__}): {one_line(err)}")
            raise
        log_to_files(logger, logging.ERROR, f"error: {one_line(user)}")
        if _in_multirun():
            raise
        sys.stdout.flush()
        sys.stderr.write(f"error: {one_line(user)}\n")
        sys.stderr.flush()
        raise SystemExit(USER_ERROR_EXIT) from None
