"""Small helpers shared by pneumo's command-line entry points."""

from __future__ import annotations

import json
import os
import sys
from typing import Any


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
