"""Storage: locations and URL reading with retries, storage settings and credentials, the image store, atomic file writes, checkpoints."""
