"""Reports of a model's outputs: the evaluation report, figures, predictions files, the model card."""
