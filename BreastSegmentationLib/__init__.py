"""BreastSegmentationLib: breast region and lesion segmentation for breast DCE-MRI.

Pure Python (SimpleITK, numpy, torch, MONAI); never imports ``slicer``, ``qt`` or ``vtk`` so that the
same code runs in 3D Slicer, in scripts and under pytest.

The public API is importable from here; names are loaded on first use, so that ``import
BreastSegmentationLib`` stays light (the Slicer module imports it before torch and MONAI are installed)::

    from BreastSegmentationLib import load_models, segment_study, study_from_files
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_PUBLIC_API = {
    "load_models": "inference.pipeline",
    "segment_images": "inference.pipeline",
    "SegmentationOptions": "inference.pipeline",
    "segment_study": "inference.study",
    "study_from_files": "inference.study",
    "study_from_dicom": "inference.study",
    "discover_study": "io.dicom",
    "read_volume": "io.images",
    "evaluate_case": "evaluation.lesions",
    "segmentation_metrics": "evaluation.metrics",
    "lesion_table": "evaluation.lesions",
    "load_config": "training.config",
    "run_training": "training.run",
    "generate_case": "data.phantom",
    "Progress": "progress",
    "InputError": "errors",
}

__all__ = ["__version__", *_PUBLIC_API]


def __getattr__(name: str):
    if name not in _PUBLIC_API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC_API[name]}", __name__), name)
    globals()[name] = value
    return value
