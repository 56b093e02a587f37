"""``python -m pneumo.export``: the same command as ``pneumo-export`` (``pneumo.cli.export``); the work is
``pneumo.pipelines.export`` and ``pneumo.pipelines.bundle``."""
