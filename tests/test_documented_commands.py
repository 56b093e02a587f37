"""Every command the docs show still works: README.md and docs/*.md against conf/ and the command-line entry points.

Commands are taken from fenced shell blocks (```bash, ```sh, ```shell, ```console, and ``$ ``-prompted lines of
unlabelled blocks). Each Hydra command (``python train.py``, ``python explain.py``, ``pneumo-train``,
``pneumo-explain``, ``pneumo-evaluate``, ``python -m pneumo.evaluation``, ``python -m pneumo
train|explain|evaluate|export|sanity``, ``torchrun ... train.py``, ``srun python train.py``) is composed with
``--cfg job`` appended (nothing trains: Hydra prints the config and exits), ``-m`` dropped and each swept list cut to its
first value; shell variables and placeholders (``$CKPT``, ``$(ls ...)``, ``...``) become harmless values and
``$RUN`` a run folder holding a saved config (for ``-cp $RUN/.hydra -cn config``). Each argparse command
(``python -m pneumo index|synthetic|dicom``, ``python -m pneumo.testing.gcs_emulator``) runs with ``--help``.
Every command must exit 0. Commands are deduplicated and run two at a time: the file takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest

from tests.helpers import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "shell-session"}
#: Stand-ins for what a reader fills in.
CKPT = "logs/train/runs/2026-12-01_18-37-53_838712/checkpoints/epoch_005.ckpt"
PLACEHOLDER = "placeholder"
HYDRA_SCRIPTS = {"train.py": "train", "explain.py": "explain"}
HYDRA_COMMANDS = {"train", "explain", "evaluate", "export", "sanity"}
ARGPARSE_COMMANDS = {"index", "synthetic", "dicom"}
CONSOLE_SCRIPTS = {"pneumo-train", "pneumo-explain", "pneumo-evaluate", "pneumo-export"}
WRAPPERS = {"srun", "time", "/usr/bin/time", "nohup", "exec", "env"}
TIMEOUT_S = 120


@dataclass
class Command:
    """One documented command and how it is checked."""

    kind: str  # "hydra" or "help"
    argv: tuple[str, ...]  # what runs after the interpreter: a script, -m module, or -c for a console script
    shown: str  # the command as the document shows it
    where: list[str] = field(default_factory=list)  # file:line of every occurrence

    @property
    def id(self) -> str:
        return f"{self.where[0]}: {self.shown[:80]}"


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) of every shell command in the fenced blocks of ``text``."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    language = ""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        match = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
        if fence is None:
            if match:
                fence, language = match.group(1), match.group(2).lower()
            continue
        if stripped.startswith(fence) and not stripped[len(fence) :].strip():
            fence, pending = None, ""
            continue
        prompted = stripped.startswith("$ ")
        if pending:
            line = stripped
        elif language in ("console", "shell-session", ""):
            if not prompted:
                continue  # output lines of a console session, trees, printouts
            line, start = stripped[2:], number
        elif language in SHELL_LANGUAGES:
            line, start = stripped, number
        else:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append((start, pending + line))
        pending = ""
    return out


def _substitute(line: str, run_dir: str) -> str:
    """Shell expansions replaced by values a compose accepts."""
    line = re.sub(r"\$\([^()]*\)", CKPT, line)  # $(ls $RUN/checkpoints/epoch_*.ckpt) and the like
    values = {"CKPT": CKPT, "RUN": run_dir, "PWD": str(ROOT), "HOME": str(Path.home())}
    return re.sub(
        r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
        lambda m: values.get(m.group(1), "0" if m.group(1).isupper() else PLACEHOLDER),
        line,
    )


def _simple_commands(tokens: list[str]) -> list[list[str]]:
    """Split a token list at ``&&``, ``||``, ``;``, ``|`` and ``&``; drop redirections."""
    commands, current, skip = [], [], False
    for token in tokens:
        if skip:
            skip = False
            continue
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        elif token in (">", ">>", "<", "2>", "2>&1"):
            skip = token != "2>&1"
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def _first_of_sweep(value: str) -> str:
    """The first element of a Hydra sweep list ``a,b,c`` (commas inside brackets or quotes do not count)."""
    depth, quote = 0, ""
    for i, ch in enumerate(value):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            return value[:i]
    return value


def _hydra_args(args: list[str]) -> list[str]:
    """Overrides as composable: no -m, the first value of each sweep, placeholders filled, ``--cfg job``."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    out: list[str] = []
    for arg in args:
        if arg in ("-m", "--multirun"):
            continue
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            if value in ("...", "…") or re.fullmatch(r"<[^>]*>", value):
                value = CKPT if key == "ckpt_path" else PLACEHOLDER
            if multirun and not key.startswith("hydra.sweeper.params"):
                value = _first_of_sweep(value)
            out.append(f"{key}={value}")
        else:
            out.append(arg)
    if "--cfg" not in out and "-c" not in out:
        out += ["--cfg", "job"]
    return out


@lru_cache(maxsize=1)
def console_scripts() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: console script -> ``module:function``."""
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh).get("project", {}).get("scripts", {}))


def classify(tokens: list[str], shown: str) -> Command | None:
    """The check of one simple command, or None when it is not a pneumo command."""
    while tokens and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", tokens[0]) or tokens[0] in WRAPPERS):
        tokens = tokens[1:]  # VAR=value prefixes, srun, /usr/bin/time ...
    if not tokens:
        return None
    program, args = tokens[0], tokens[1:]
    if program == "torchrun":
        scripts = [i for i, a in enumerate(args) if a.endswith(".py")]
        if not scripts:
            return None
        program, args = "python", args[scripts[0] :]
    if program == "pneumo":  # the console script of python -m pneumo
        program, args = "python", ["-m", "pneumo", *args]
    if program in CONSOLE_SCRIPTS:
        target = console_scripts().get(program)
        if target is None:
            code = f"raise SystemExit({program + ' is not a console script of pyproject.toml [project.scripts]'!r})"
        else:
            module, _, function = target.partition(":")
            code = f"import sys; from {module} import {function} as main; sys.argv[0] = {program!r}; sys.exit(main())"
        return Command("hydra", ("-c", code, *_hydra_args(args)), shown)
    if program not in ("python", "python3") or not args:
        return None
    if Path(args[0]).name in HYDRA_SCRIPTS and not args[0].startswith("benchmarks"):
        return Command("hydra", (Path(args[0]).name, *_hydra_args(args[1:])), shown)
    if args[0] != "-m" or len(args) < 2 or not (args[1] == "pneumo" or args[1].startswith("pneumo.")):
        return None
    module, rest = args[1], args[2:]
    if module == "pneumo":
        if rest and rest[0] in HYDRA_COMMANDS:
            return Command("hydra", ("-m", "pneumo", rest[0], *_hydra_args(rest[1:])), shown)
        if rest and rest[0] in ARGPARSE_COMMANDS:
            return Command("help", ("-m", "pneumo", rest[0], "--help"), shown)
        return Command("help", ("-m", "pneumo", "--help"), shown)
    leaf = module.rsplit(".", 1)[-1]
    if module in ("pneumo.evaluation", "pneumo.export") or (
        module.startswith("pneumo.cli.") and leaf in HYDRA_COMMANDS
    ):
        return Command("hydra", ("-m", module, *_hydra_args(rest)), shown)
    return Command("help", ("-m", module, "--help"), shown)  # argparse commands, stale module names included


def documented_commands(paths: list[Path], run_dir: str = "RUN_DIR") -> list[Command]:
    """Every pneumo command of the documents at ``paths``, deduplicated (first occurrence first)."""
    found: dict[tuple[str, ...], Command] = {}
    for path in paths:
        label = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
        for number, line in logical_lines(path.read_text(encoding="utf-8")):
            try:
                tokens = shlex.split(_substitute(line, run_dir), comments=True, posix=True)
            except ValueError as err:
                raise AssertionError(f"{label}:{number}: cannot parse {line!r}: {err}") from err
            for simple in _simple_commands(tokens):
                command = classify(simple, line)
                if command is None:
                    continue
                command = found.setdefault(command.argv, command)
                command.where.append(f"{label}:{number}")
    return list(found.values())


def run(command: Command, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run one checked command in its own subprocess from the repository root, with this interpreter."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *command.argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


#: Runs a batch of Hydra commands of one entry point in one process (its imports, torch included, are paid
#: once): each as ``python ARGV`` would, with ``sys.argv`` set, its output captured, Hydra's global state
#: cleared before it, and its exit status taken from ``SystemExit``. Results go to the JSON file argv[1].
_BATCH_DRIVER = r"""
import contextlib, io, json, runpy, sys, traceback
from hydra.core.global_hydra import GlobalHydra

commands, results, out_path = json.loads(sys.stdin.read()), [], sys.argv[1]
for argv in commands:
    out, err, code = io.StringIO(), io.StringIO(), 0
    GlobalHydra.instance().clear()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            elif argv[0] == "-c":
                sys.argv = ["-c", *argv[2:]]
                exec(compile(argv[1], "<console script>", "exec"), {"__name__": "__main__"})
            else:
                sys.argv = list(argv)
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            err.write(str(exc.code))
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    results.append({"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-3000:]})
with open(out_path, "w", encoding="utf-8") as fh:
    json.dump(results, fh)
"""


def entry_point(command: Command) -> tuple[str, ...]:
    """What a command runs before its overrides: the script, ``-m module [command]`` or the console script."""
    argv = command.argv
    if argv[0] == "-m":
        return argv[:3] if argv[1] == "pneumo" else argv[:2]
    return argv[:2] if argv[0] == "-c" else argv[:1]


def run_batch(commands: list[Command], out: Path) -> list[subprocess.CompletedProcess]:
    """Hydra commands of one entry point, composed one after another in one subprocess."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argvs = json.dumps([list(c.argv) for c in commands])
    done = subprocess.run(
        [sys.executable, "-c", _BATCH_DRIVER, str(out)],
        cwd=ROOT, input=argvs, capture_output=True, text=True, timeout=TIMEOUT_S + 10 * len(commands), env=env,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():  # the driver itself failed: every command of the batch did
        return [done] * len(commands)
    results = json.loads(out.read_text(encoding="utf-8"))
    return [subprocess.CompletedProcess(c.argv, **r) for c, r in zip(commands, results)]


def run_all(commands: list[Command], scratch: Path) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every command once, two workers: Hydra commands batched per entry point, ``--help`` ones alone."""
    batches: dict[tuple[str, ...], list[Command]] = {}
    for command in commands:
        if command.kind == "hydra":
            batches.setdefault(entry_point(command), []).append(command)
    jobs = [(run_batch, (batch, scratch / f"batch_{i}.json")) for i, batch in enumerate(batches.values())]
    jobs += [(lambda c: [run(c)], (c,)) for c in commands if c.kind == "help"]
    order = [c for batch in batches.values() for c in batch] + [c for c in commands if c.kind == "help"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(fn, *args) for fn, args in jobs]
        results = [r for future in futures for r in future.result()]
    return {c.argv: r for c, r in zip(order, results)}


# --- the documented commands ------------------------------------------------------------------------------

RUN_DIR = ROOT / "logs" / "_documented_commands_run"  # replaced per session below; a stable name for ids
COMMANDS = documented_commands(DOCUMENTS, run_dir=str(RUN_DIR))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], subprocess.CompletedProcess]:
    """Every documented command run once; ``$RUN`` is a run folder holding a saved config."""
    scratch = tmp_path_factory.mktemp("documented_commands")
    run_dir = scratch / "run"
    saved = run(Command("hydra", ("train.py", "--cfg", "job"), "python train.py --cfg job"))
    assert saved.returncode == 0, saved.stderr[-2000:]
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(saved.stdout, encoding="utf-8")
    actual = {
        c.argv: Command(c.kind, tuple(a.replace(str(RUN_DIR), str(run_dir)) for a in c.argv), c.shown)
        for c in COMMANDS
    }
    ran = run_all(list(actual.values()), scratch)
    return {documented: ran[command.argv] for documented, command in actual.items()}


#: The Hydra plugins of the ``sweeps`` extra (Optuna sweeper, SLURM and joblib launchers).
SWEEPS_INSTALLED = importlib.util.find_spec("hydra_plugins") is not None and all(
    importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    for name in ("hydra_optuna_sweeper", "hydra_submitit_launcher", "hydra_joblib_launcher")
)


def needs_sweeps_extra(command: Command) -> bool:
    """A command that names an Optuna search or a launcher/sweeper plugin (the ``sweeps`` extra)."""
    return any(a.startswith(("hparams_search=", "hydra/launcher=", "hydra/sweeper=")) for a in command.argv)


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_documented_command_composes(command: Command, results) -> None:
    if needs_sweeps_extra(command) and not SWEEPS_INSTALLED:
        pytest.skip('needs the sweeps extra: pip install "pneumo[sweeps]"')
    result = results[command.argv]
    what = "composes with --cfg job" if command.kind == "hydra" else "prints --help"
    assert result.returncode == 0, (
        f"{', '.join(command.where)}: `{command.shown}` no longer {what} "
        f"(ran: python {' '.join(command.argv)}):\n{(result.stderr or result.stdout)[-1500:]}"
    )


def test_docs_show_the_main_commands() -> None:
    """The extraction finds what the docs are about (a broken extractor would pass every doc)."""
    shown = {" ".join(entry_point(c)) for c in COMMANDS}
    assert {"train.py", "explain.py", "-m pneumo.evaluation"} <= shown, shown
    assert {"-m pneumo index", "-m pneumo synthetic", "-m pneumo dicom"} <= shown, shown
    assert len(COMMANDS) >= 40, len(COMMANDS)


def test_a_renamed_key_fails_to_compose(tmp_path: Path) -> None:
    """A doc that names a key conf/ does not have (data.images.size -> data.images.sizee) fails its compose."""
    source = next(
        p for p in DOCUMENTS if re.search(r"^python train\.py .*data\.images\.size=", p.read_text(), re.M)
    )
    renamed = tmp_path / source.name
    renamed.write_text(source.read_text(encoding="utf-8").replace("data.images.size=", "data.images.sizee="))
    broken = [c for c in documented_commands([renamed]) if any("data.images.sizee=" in a for a in c.argv)]
    assert broken, f"no command of {source.name} sets data.images.size"
    result = run_batch(broken[:1], tmp_path / "batch.json")[0]
    assert result.returncode != 0, result.stdout[-500:]
    assert "sizee" in result.stderr, result.stderr[-1500:]


def test_extraction() -> None:
    """Blocks, continuations, comments, prompts, sweeps and placeholders, as the checks above rely on."""
    text = "\n".join(
        [
            "```bash",
            "python train.py -m model.optimizer.lr=1e-4,3e-4 'callbacks=[default,performance]'  # a sweep",
            "python explain.py ckpt_path=$CKPT \\",
            "    split=test",
            "pip install -e . && python -m pneumo index --views PA",
            "```",
            "```",
            "$ python -m pneumo.evaluation predictions=p.csv",
            "error: shown output, not a command",
            "```",
            "```python",
            "python train.py  # not shell",
            "```",
        ]
    )
    lines = logical_lines(text)
    assert [n for n, _ in lines] == [2, 3, 5, 8]
    commands = [
        classify(c, line)
        for _, line in lines
        for c in _simple_commands(shlex.split(_substitute(line, "RUN"), comments=True))
    ]
    argvs = [c.argv for c in commands if c is not None]
    assert argvs == [
        ("train.py", "model.optimizer.lr=1e-4", "callbacks=[default,performance]", "--cfg", "job"),
        ("explain.py", f"ckpt_path={CKPT}", "split=test", "--cfg", "job"),
        ("-m", "pneumo", "index", "--help"),
        ("-m", "pneumo.evaluation", "predictions=p.csv", "--cfg", "job"),
    ]


_PYTHON_IMPORT = re.compile(
    r"^\s*from (pneumo(?:\.[\w.]+)?) import ([\w, ]+)$|^\s*import (pneumo[\w.]*)$", re.M
)


def test_documented_python_imports() -> None:
    """The ``from pneumo... import ...`` lines of the docs' Python blocks import (one subprocess)."""
    lines = set()
    for path in DOCUMENTS:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S):
            lines |= {m.group(0).strip() for m in _PYTHON_IMPORT.finditer(block)}
    assert lines, "no Python import in the docs"
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(sorted(lines))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, f"{sorted(lines)}:\n{result.stderr[-1500:]}"
