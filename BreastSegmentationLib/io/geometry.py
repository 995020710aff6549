"""The Slicer boundary: KJI numpy arrays with 4x4 IJK-to-RAS matrices <-> SimpleITK images.

Slicer gives a volume as ``slicer.util.arrayFromVolume`` (a KJI array: slice, row, column) plus its IJK-to-RAS
matrix; ITK and SimpleITK describe the same grid in LPS coordinates (spacing, origin, direction). RAS and LPS
differ only in the sign of x and y, so converting is flipping the first two rows of the matrix. Both directions
are exact, oblique directions and anisotropic spacing included.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .images import index_to_physical_matrix, same_geometry

#: Multiplying by this (its own inverse) turns an LPS matrix into RAS and back.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

_ORTHOGONALITY_TOLERANCE = 1e-6


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 matrix taking a voxel index (i, j, k, 1) of a 3-D image to its RAS point in mm."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = index_to_physical_matrix(image)
    ijk_to_lps[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ ijk_to_lps


def image_from_kji(
    array: np.ndarray, ijk_to_ras: np.ndarray, reference: sitk.Image | None = None
) -> sitk.Image:
    """A SimpleITK image holding a copy of the KJI ``array`` on the grid that ``ijk_to_ras`` describes.

    With ``reference``, the grid must be the reference's (same size, geometry within 1e-4) and the result takes
    the reference's geometry exactly, so later :func:`same_geometry` tests are not upset by round-off.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"array is {array.ndim}-D, a 3-D (K, J, I) array is needed")
    spacing, direction, origin = _lps_grid(ijk_to_ras)
    image = sitk.GetImageFromArray(array.astype(np.uint8) if array.dtype == bool else array, isVector=False)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    image.SetOrigin(origin)
    if reference is not None:
        if not same_geometry(image, reference):
            raise InputError("the array and its IJK-to-RAS matrix do not lie on the reference volume's grid")
        image.CopyInformation(reference)
    return image


def kji_from_image(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """A KJI copy of the voxels and the 4x4 IJK-to-RAS matrix of a 3-D image (Slicer's layout)."""
    return sitk.GetArrayFromImage(image), ijk_to_ras_matrix(image)


def _lps_grid(ijk_to_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Spacing, row-major direction and origin (LPS) of an IJK-to-RAS matrix; refuses what ITK cannot hold."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) or not np.allclose(matrix[3], [0, 0, 0, 1]):
        raise InputError(f"IJK-to-RAS must be a finite 4x4 affine matrix with last row 0 0 0 1, got {matrix.tolist()}")
    ijk_to_lps = LPS_TO_RAS @ matrix
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing == 0.0):
        raise InputError(f"IJK-to-RAS matrix has a zero-length axis (spacing {spacing.tolist()})")
    direction = axes / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), rtol=0.0, atol=_ORTHOGONALITY_TOLERANCE):
        raise InputError(
            "IJK-to-RAS matrix is sheared (its axes are not orthogonal); ITK images need orthogonal axes: "
            "resample the volume onto an orthogonal grid first"
        )
    return tuple(spacing), tuple(direction.ravel()), tuple(ijk_to_lps[:3, 3])
