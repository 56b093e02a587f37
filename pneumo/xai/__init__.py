"""Explainability: Grad-CAM heatmaps, overlays, and localization scores against ground-truth boxes."""
