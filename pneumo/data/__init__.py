"""Data: label index, patient-disjoint splits, image store, cache, datasets and the Lightning data module."""
