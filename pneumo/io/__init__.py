"""Storage: locations and URL reading with retries, storage settings and credentials, the image store, atomic file writes, checkpoints."""

from pneumo.io.environment import prepare_gcsfs as _prepare_gcsfs

# Before anything imports gcsfs: an emulator named by $STORAGE_EMULATOR_HOST needs gcsfs's gRPC probe off.
_prepare_gcsfs()
