"""Whole jobs: train, explain, evaluate a predictions file, preflight checks, a run rebuilt from its checkpoint."""
