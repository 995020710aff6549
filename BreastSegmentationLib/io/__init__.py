"""Volumes and I/O: reading and writing images, geometry conversions, DICOM study discovery, atomic outputs."""
