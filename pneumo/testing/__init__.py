"""Tools for trying pneumo offline: ``python -m pneumo.testing.gcs_emulator`` (needs the ``dev`` extra)."""
