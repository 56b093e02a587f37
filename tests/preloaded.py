"""Project commands in forked children of one interpreter that has already imported the heavy libraries.

Every CLI test used to start a fresh ``python``: about 6 s of CPU each on the CI's 2 cores importing torch,
Lightning, MONAI, pandas and Hydra before the command did anything; dozens of CLI runs made most of the
suite's time. ``PreloadedInterpreter`` starts one ``python`` that imports those third-party libraries (never
pneumo: its modules run per command, with the command's ``sys.argv`` and environment, so import-time work
such as ``protect_output`` sees them) and then forks one child per command. The child is a real process: its
own pid and process group, ``cwd``, environment, ``sys.argv``, stdin from ``/dev/null``, stdout and stderr
in files, the script run as ``__main__`` (``runpy``), an uncaught exception printed and exit code 1, the
exit code of ``SystemExit`` otherwise; a timeout kills its process group as ``subprocess.run`` would.

The preloading process never runs a torch operation, so no thread pool exists when it forks. Commands that
must prove something about a fresh interpreter (imports, an installed wheel, a bundle that MONAI alone
reads) keep ``run_cli(..., fresh=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from pathlib import Path

#: Imported once by the preloading interpreter (third-party only).
PRELOAD = (
    "numpy", "pandas", "torch", "torchvision", "lightning", "lightning.pytorch", "torchmetrics", "monai",
    "monai.networks.nets", "monai.transforms", "monai.data", "hydra", "omegaconf", "matplotlib", "PIL.Image",
    "fsspec", "gcsfs", "captum.attr", "sklearn.metrics", "tensorboard", "pydicom", "tqdm",
)  # fmt: skip

_SERVER = r"""
import importlib, json, os, runpy, signal, sys, traceback
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
requests, replies = sys.stdin.buffer, sys.stdout.buffer
replies.write(b"ready\n"); replies.flush()
base_path = list(sys.path[1:])
for line in requests:
    job = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1); os.dup2(err, 2)
            sys.stdin = open(0, closefd=False)
            sys.stdout = open(1, "w", closefd=False, buffering=1)
            sys.stderr = open(2, "w", closefd=False, buffering=1)
            os.chdir(job["cwd"])
            os.environ.clear(); os.environ.update(job["env"])
            if os.environ.get("PYTHONWARNINGS"):
                import warnings
                warnings.resetwarnings()
                warnings.simplefilter(os.environ["PYTHONWARNINGS"])
            argv = job["argv"]
            try:
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    sys.path[:] = [job["cwd"], *base_path]
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    script = os.path.abspath(argv[0])
                    sys.argv = list(argv)
                    sys.path[:] = [os.path.dirname(script), *base_path]
                    runpy.run_path(script, run_name="__main__")
                code = 0
            except SystemExit as exit_:
                value = exit_.code
                if value is None:
                    code = 0
                elif isinstance(value, int):
                    code = value
                else:
                    print(value, file=sys.stderr)
                    code = 1
            except BaseException:
                traceback.print_exc()
                code = 1
            import atexit, logging, threading
            try:
                threading._shutdown()  # as the interpreter does at exit: join non-daemon threads
            except Exception:
                pass
            atexit._run_exitfuncs()
            logging.shutdown()
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os._exit(code)
    replies.write(f"pid {pid}\n".encode()); replies.flush()
    _, status = os.waitpid(pid, 0)
    replies.write(f"rc {os.waitstatus_to_exitcode(status)}\n".encode()); replies.flush()
"""


class PreloadedInterpreter:
    """One preloading ``python`` (started on first use) that forks a child per command."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER, json.dumps(PRELOAD)],
                cwd=self.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            assert line == b"ready\n", line
        return self.proc

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """Run ``python *args`` as a forked child; ``subprocess.run``'s result (text output). Past
        ``timeout`` its process group is killed and ``TimeoutExpired`` raised, as ``subprocess.run`` does."""
        proc = self.start(args, cwd, env)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise subprocess.TimeoutExpired([sys.executable, *args], timeout, *proc.output()) from None
        return subprocess.CompletedProcess([sys.executable, *args], code, *proc.output())

    def start(self, args: list[str], cwd: Path, env: dict) -> PreloadedProcess:
        """Start ``python *args`` as a forked child and return at once (``subprocess.Popen``'s ``poll``,
        ``wait``, ``send_signal``, ``kill``); other commands wait until it has ended."""
        self.lock.acquire()
        try:
            tmp = tempfile.mkdtemp(prefix="pneumo-cli-")
            server = self._start()
            assert server.stdin is not None and server.stdout is not None
            job = {"argv": [str(a) for a in args], "cwd": str(cwd), "env": env,
                   "stdout": f"{tmp}/out", "stderr": f"{tmp}/err"}  # fmt: skip
            server.stdin.write((json.dumps(job) + "\n").encode())
            server.stdin.flush()
            pid = int(server.stdout.readline().split()[1])
        except BaseException:
            self.lock.release()
            raise
        return PreloadedProcess(self, pid, Path(tmp))

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


class PreloadedProcess:
    """A running child of ``PreloadedInterpreter.start``: ``returncode`` (``-N`` when signal ``N`` ended it)
    once the server has reaped it; its output in files, read by ``output()`` after it ended."""

    def __init__(self, owner: PreloadedInterpreter, pid: int, tmp: Path) -> None:
        self.owner, self.pid, self.tmp = owner, pid, tmp
        self.returncode: int | None = None
        self._done = threading.Event()
        weakref.finalize(self, shutil.rmtree, tmp, True)
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        try:
            assert self.owner.proc is not None and self.owner.proc.stdout is not None
            self.returncode = int(self.owner.proc.stdout.readline().split()[1])
        finally:
            self._done.set()
            self.owner.lock.release()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """``sig`` to the child's process group (it leads one: its data-loader workers go with it)."""
        if self.returncode is None:  # not reaped yet: the pid is still this child's
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def output(self) -> tuple[str, str]:
        """Its stdout and stderr (after it ended)."""
        return tuple(  # type: ignore[return-value]
            (self.tmp / name).read_text(errors="replace") if (self.tmp / name).exists() else ""
            for name in ("out", "err")
        )
