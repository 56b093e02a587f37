"""Tools for trying pneumo offline: ``python -m pneumo.testing.gcs_emulator``, a GCS emulator serving a demo set
in NIH's layout (needs only the ``emulator`` extra: ``pip install "pneumo[emulator]"``; the ``dev`` extra
includes it)."""
