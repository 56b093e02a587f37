"""``--help`` of the evaluate and explain commands lists their own settings, not training's config groups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from tests.helpers import CONF

#: Training-only config groups (and Hydra's group listing) that another command's help must not show.
TRAINING_ONLY = ("== Configuration groups ==", "\ncallbacks:", "\ntrainer:", "\nmodel:", "\nexperiment:",
                 "\nhparams_search:", "\nlogger:", "\ndata:", "\ndebug:")  # fmt: skip


def _own_keys(entry: str) -> list[str]:
    """Top-level keys of an entry config: its own and those of the groups in its defaults list."""
    cfg = OmegaConf.load(CONF / entry)
    keys = [k for k in cfg if k not in ("defaults", "hydra")]
    groups = [next(iter(d)) for d in cfg.defaults if isinstance(d, dict) or OmegaConf.is_dict(d)]
    return [*keys, *(g for g in groups if g != "hydra")]


def test_evaluate_and_explain_help_list_only_their_own_settings(tmp_path: Path) -> None:
    commands = {
        "evaluate.yaml": ["-m", "pneumo.evaluation", "--help"],
        "explain.yaml": ["-m", "pneumo", "explain", "--help"],
    }
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    running = {}
    for entry, args in commands.items():
        running[entry] = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    for entry, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        name = f"pneumo-{entry.removesuffix('.yaml')}"
        assert out.startswith(f"{name} (also "), out[:300]
        assert f"usage: {name} " in out
        for key in _own_keys(entry):
            assert f"\n{key}:" in out, f"{entry}: {key} missing from --help"
        shown = [group for group in TRAINING_ONLY if group in out]
        assert shown == [], f"{entry}: --help shows training's {shown}"
