"""The one entry point of every Hydra command (train, explain, evaluate, and any command added later).

``hydra_command(config_name)`` replaces ``@hydra.main``: the same command line (overrides, ``--help``,
``--cfg job``, ``-m``), and every error of the config itself becomes one line on stderr and exit status 2
(``USER_ERROR_EXIT``) before any work starts:

- Hydra's composition errors (``model=densenet12``, ``experiment=nonexistent``, ``trainer.x=0`` without
  ``+``, an override that does not parse): Hydra's useful part (the valid options) on one line, with the
  closest option (``did you mean``) and, for a sweeper or launcher of the ``sweeps`` extra, the install line;
- a run or sweep folder that cannot be written (``hydra.run.dir=/proc/x``, ``paths.log_dir=/ro``): checked
  by ``OutputFolderCheck``, a Hydra callback (``conf/hydra/default.yaml``), before Hydra creates the folder;
- a ``PneumoError`` raised anywhere below (the pipelines' settings checks), as ``user_errors`` does.

Bugs keep their traceback. ``HYDRA_FULL_ERROR=1`` in the environment keeps Hydra's own report of its errors.

Example:
    >>> hydra_error_line(MissingConfigException("", "model/densenet12", ["densenet121", "densenet121_multilabel"]))
    "model=densenet12: no such model config; choose one of densenet121, densenet121_multilabel (did you mean 'densenet121'?)"
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import hydra
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pneumo.config import suggestion
from pneumo.console import one_line, user_error_in
from pneumo.errors import USER_ERROR_EXIT, ConfigError
from pneumo.io.files import check_writable

log = logging.getLogger("pneumo")

#: Config groups whose options come from the Hydra plugins of the ``sweeps`` extra, and those options.
PLUGIN_OPTIONS = {
    "hydra/launcher": ("joblib", "submitit_local", "submitit_slurm"),
    "hydra/sweeper": ("optuna",),
    "hydra/sweeper/sampler": ("tpe", "random", "cmaes", "nsgaii", "motpe", "grid"),
}
#: What to run when a plugin of the ``sweeps`` extra is missing.
SWEEPS_INSTALL = 'pip install "pneumo[sweeps]" (in a checkout: pip install -e ".[sweeps]")'

#: Hydra's composition errors: the config the user asked for cannot be built (never a bug of pneumo's).
_CONFIG_ERRORS = (ConfigCompositionException, OverrideParseException)


def _group_options(group: str) -> list[str]:
    """The configs of ``group`` that pneumo ships (``pneumo/conf/<group>/*.yaml``). Hydra leaves them out of
    its error for a name inside a list (``explainer=[gradcam,typo]``), and has forgotten its search path by
    the time the error arrives here."""
    from importlib.resources import files

    folder = files("pneumo.conf").joinpath(group)
    with contextlib.suppress(OSError):
        return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return []


def _missing_config_line(err: MissingConfigException) -> str:
    """``group=name: no such group config; choose one of ...`` (or the sweeps extra's install line)."""
    group, _, name = str(err.missing_cfg_file or "").rpartition("/")
    options = [str(o) for o in (err.options or [])] or _group_options(group)
    if not group:  # the primary config itself (``--config-name``) is missing
        return f"no config {name!r} ({one_line(err)})"
    if name in PLUGIN_OPTIONS.get(group, ()) and name not in options:
        return f"{group}={name} comes with a Hydra plugin that is not installed: {SWEEPS_INSTALL}"
    choose = f"choose one of {', '.join(options)}" if options else f"there are no {group} configs"
    return f"{group}={name}: no such {group} config; {choose}{suggestion(name, options)}"


def _override_line(err: ConfigCompositionException) -> str:
    """An override of a key the config does not have: the key, the closest keys there, and the ``+`` form."""
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    parent = getattr(cause, "parent_node", None)
    message = one_line(err)
    if not key or not message.startswith("Could not override"):
        return message + (f" ({one_line(cause)})" if cause is not None else "")
    prefix = str(key).rpartition(".")[0]
    names = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    known = [f"{prefix}.{name}" if prefix else name for name in names]
    plus = message.partition("To append to your config use ")[2].strip()
    add = f"; to add a new key write {plus}" if plus else ""
    return f"{key} is not a key of the config{suggestion(key, known)}{add}"


def hydra_error_line(err: BaseException) -> str:
    """One line for one of Hydra's config errors: what is wrong, what is valid, the closest valid value.

    Example:
        >>> hydra_error_line(OverrideParseException("seed=[1", "no viable alternative at input '[1'"))
        "cannot read the override 'seed=[1': no viable alternative at input '[1' (quote values with spaces or brackets: key='a b')"
    """
    if isinstance(err, MissingConfigException):
        return _missing_config_line(err)
    if isinstance(err, OverrideParseException):
        why = one_line(Exception(err.message.split("See https://")[0]))
        return f"cannot read the override {err.override!r}: {why} (quote values with spaces or brackets: key='a b')"
    if isinstance(err, ConfigCompositionException):
        return _override_line(err)
    return one_line(err)


def fail(message: str) -> None:
    """``error: <message>`` on stderr, exit status 2."""
    sys.stdout.flush()
    sys.stderr.write(f"error: {one_line(Exception(message))}\n")
    sys.stderr.flush()
    raise SystemExit(USER_ERROR_EXIT)


@contextlib.contextmanager
def config_errors(logger: logging.Logger = log) -> Iterator[None]:
    """Run a Hydra app: its config errors and user errors (``PneumoError``) become ``fail``; bugs propagate.

    Hydra prints its own errors (several lines) and exits with status 1 unless ``HYDRA_FULL_ERROR=1``, in
    which case it raises them: set here for the call, so that they reach this handler."""
    user_asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    except Exception as err:
        user = user_error_in(err)
        if user is not None:
            fail(str(user))
        if isinstance(err, _CONFIG_ERRORS) and user_asked != "1":
            fail(hydra_error_line(err))
        raise
    finally:
        if user_asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = user_asked


def hydra_command(
    config_name: str,
    logger: logging.Logger = log,
    check_args: Callable[[Sequence[str]], None] | None = None,
) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``@hydra_command("train.yaml")``: ``@hydra.main`` over ``pkg://pneumo.conf`` with ``config_errors``;
    ``check_args`` sees the command line first (e.g. keys that moved). Called with a config, the decorated
    function runs the task directly (as ``hydra.main``'s does).

    Example:
        >>> @hydra_command("evaluate.yaml")  # doctest: +SKIP
        ... def main(cfg): ...
    """

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        app = hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name=config_name)(task)

        @functools.wraps(task)
        def main(cfg: DictConfig | None = None) -> Any:
            if cfg is not None:
                return task(cfg)
            with config_errors(logger):
                if check_args is not None:
                    check_args(sys.argv[1:])
                return app()

        return main

    return decorate


class OutputFolderCheck(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): the run's (or sweep's) folder must be writable, checked
    by ``check_writable`` after composition and before Hydra creates it (Hydra's own attempt fails with a
    traceback). Hydra turns a callback's exceptions into warnings: the error is ``fail``'s exit."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_folder(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_folder(config.hydra.sweep.dir, "hydra.sweep.dir")


def _check_folder(path: str, key: str) -> None:
    try:
        check_writable(path, key, f"set paths.log_dir (or {key}) to a folder you may write to")
    except ConfigError as err:
        fail(str(err))
