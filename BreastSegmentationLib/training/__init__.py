"""Training: losses, the trainer with cross-validation, active learning and experiments."""
