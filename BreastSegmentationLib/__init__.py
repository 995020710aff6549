"""BreastSegmentationLib: breast region and lesion segmentation for breast DCE-MRI.

Pure Python (SimpleITK, numpy, torch, MONAI); never imports ``slicer``, ``qt`` or ``vtk`` so that the
same code runs in 3D Slicer, in scripts and under pytest.
"""

__version__ = "0.1.0"
