"""``PneumoError``: the one base class of errors that are the user's to fix.

Every command-line entry point (``train.py``, ``explain.py``, ``python -m pneumo...``) prints a
``PneumoError`` as one line naming the key, file or object and the fix, and exits with status 2; anything
else is a bug and keeps its traceback. Subclass it (with the built-in class that fits, e.g. ``ValueError``
or ``FileNotFoundError``, second) for every error a user can cause.

Example:
    >>> class WidgetError(PneumoError, ValueError):
    ...     '''A widget setting that cannot be used.'''
    >>> try:
    ...     raise WidgetError("data.widget=7: must be 'a' or 'b'")
    ... except PneumoError as err:
    ...     print(f"error: {err}")
    error: data.widget=7: must be 'a' or 'b'
"""

from __future__ import annotations

#: Exit status of a command that stopped on a user error.
USER_ERROR_EXIT = 2


class PneumoError(Exception):
    """An error the user can fix (bad input, bad setting, missing file); the message says how."""


class ConfigError(PneumoError, ValueError):
    """A configuration value that cannot be used; the message names the key, the value and the fix."""
