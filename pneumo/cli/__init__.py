"""Command-line entry points: ``pneumo-train``, ``pneumo-explain``, ``pneumo-evaluate`` and ``python -m pneumo <command>``."""
