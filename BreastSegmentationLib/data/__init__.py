"""Data: the synthetic DCE-MRI phantom, datasets and importers, preprocessing and crops."""
