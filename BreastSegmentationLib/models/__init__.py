"""Models: architectures by name, model cards and weights."""
