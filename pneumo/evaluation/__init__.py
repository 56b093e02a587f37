"""``python -m pneumo.evaluation``: the evaluation report of any predictions file (kept name of ``pneumo-evaluate``).

The statistics live in ``pneumo.stats``, the report writers in ``pneumo.reporting`` and the job in
``pneumo.pipelines.evaluate``; this package is only the command.
"""
