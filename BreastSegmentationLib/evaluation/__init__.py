"""Evaluation: segmentation metrics, lesion tables and carbon footprint."""
