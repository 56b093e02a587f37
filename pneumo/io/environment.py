"""The process environment gcsfs needs, set before gcsfs is imported: the one place pneumo sets it.

gcsfs >= 2026 probes every bucket's layout over gRPC when ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` is on (its
default), which stalls every call against a storage emulator for seconds. gcsfs reads the variable once, when
it is imported, so it must be decided first: ``import pneumo`` (through ``pneumo.io``) calls
``prepare_gcsfs()``, which turns the probe off when ``$STORAGE_EMULATOR_HOST`` points gcsfs at an emulator;
the emulator helper, the test suite and the benchmarks call ``prepare_gcsfs(emulator=True)`` because they
point clients at an emulator by ``endpoint_url`` instead. A value the user exported is kept. Against the
real service nothing changes.

Example:
    >>> import os
    >>> prepare_gcsfs(emulator=True)
    >>> os.environ[HNS_SWITCH]
    'false'
"""

from __future__ import annotations

import os

#: gcsfs's switch of its experimental zonal / hierarchical-namespace support (read when gcsfs is imported).
HNS_SWITCH = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
#: Set by users (and Google's own emulators) to point Google Cloud clients at an emulator.
EMULATOR_HOST = "STORAGE_EMULATOR_HOST"


def prepare_gcsfs(emulator: bool = False) -> None:
    """Turn gcsfs's bucket-layout probe off when gcsfs talks to an emulator (``emulator`` or
    ``$STORAGE_EMULATOR_HOST``). Call it before gcsfs is imported; later it only reaches child processes,
    which inherit the environment."""
    if emulator or os.environ.get(EMULATOR_HOST):
        os.environ.setdefault(HNS_SWITCH, "false")
