"""Inference: the BRS -> lesion pipeline, post-processing and runtime."""
