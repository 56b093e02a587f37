"""Data: image sources and inputs, the uint8 cache, datasets, distributed sampling and the Lightning data module."""
