"""The Slicer boundary: KJI arrays and IJK-to-RAS matrices <-> SimpleITK images (BreastSegmentationLib.io.geometry)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.io.geometry import image_from_kji, ijk_to_ras_matrix, kji_from_image


def oblique_ijk_to_ras(rng: np.random.Generator, left_handed: bool = False) -> np.ndarray:
    """A random rotation (or rotation with reflection) scaled by anisotropic spacing, with an offset."""
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation)) * (-1.0 if left_handed else 1.0)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.array([0.65, 0.8, 2.5])
    matrix[:3, 3] = rng.uniform(-150.0, 150.0, size=3)
    return matrix


def test_matrix_maps_voxels_to_the_ras_of_their_itk_points(oblique_image: sitk.Image):
    matrix = ijk_to_ras_matrix(oblique_image)
    for index in [(0, 0, 0), (12, 0, 0), (3, 7, 5), (12, 10, 6)]:
        x, y, z = oblique_image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose(matrix @ np.array([*index, 1.0]), [-x, -y, z, 1.0], rtol=0.0, atol=1e-12)


def test_identity_direction_is_the_usual_slicer_axial_matrix():
    image = sitk.Image(4, 5, 6, sitk.sitkInt16)
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    expected = np.array([[-0.7, 0, 0, -10.0], [0, -0.8, 0, 20.0], [0, 0, 2.0, 30.0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(ijk_to_ras_matrix(image), expected)


def test_image_to_slicer_and_back_is_exact(oblique_image: sitk.Image):
    array, matrix = kji_from_image(oblique_image)
    assert array.shape == oblique_image.GetSize()[::-1]
    rebuilt = image_from_kji(array, matrix)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(rebuilt), sitk.GetArrayViewFromImage(oblique_image))
    assert rebuilt.GetPixelID() == oblique_image.GetPixelID()
    for getter in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(rebuilt, getter)(), getattr(oblique_image, getter)(), rtol=0.0, atol=1e-9)


@pytest.mark.parametrize("left_handed", [False, True])
def test_slicer_to_image_and_back_is_exact(rng: np.random.Generator, left_handed: bool):
    matrix = oblique_ijk_to_ras(rng, left_handed)
    array = rng.integers(-100, 1000, size=(5, 6, 7)).astype(np.int16)
    image = image_from_kji(array, matrix)
    assert image.GetSize() == (7, 6, 5)
    np.testing.assert_allclose(image.GetSpacing(), [0.65, 0.8, 2.5], rtol=0.0, atol=1e-12)
    array_back, matrix_back = kji_from_image(image)
    np.testing.assert_array_equal(array_back, array)
    np.testing.assert_allclose(matrix_back, matrix, rtol=0.0, atol=1e-9)
    i, j, k = 6, 2, 4
    x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))
    np.testing.assert_allclose(matrix @ [i, j, k, 1.0], [-x, -y, z, 1.0], rtol=0.0, atol=1e-9)
    assert image[i, j, k] == array[k, j, i]


def test_arrays_are_copies_both_ways(oblique_image: sitk.Image):
    array, matrix = kji_from_image(oblique_image)
    original = oblique_image[0, 0, 0]
    array[0, 0, 0] = -1.0
    assert oblique_image[0, 0, 0] == original
    image = image_from_kji(array, matrix)
    array[0, 0, 0] = 5.0
    assert image[0, 0, 0] == -1.0


def test_boolean_arrays_become_uint8_masks(oblique_image: sitk.Image):
    array, matrix = kji_from_image(oblique_image)
    mask = image_from_kji(array > 100.0, matrix)
    assert mask.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask), (array > 100.0).astype(np.uint8))


def test_reference_grid_is_taken_exactly_and_mismatches_are_refused(oblique_image: sitk.Image):
    array, matrix = kji_from_image(oblique_image)
    nudged = matrix.copy()
    nudged[:3, 3] += 1e-7
    image = image_from_kji(array, nudged, reference=oblique_image)
    assert image.GetOrigin() == oblique_image.GetOrigin()
    assert image.GetDirection() == oblique_image.GetDirection()
    with pytest.raises(InputError, match="do not lie on the reference volume's grid"):
        image_from_kji(array[:, :, :-1], matrix, reference=oblique_image)
    shifted = matrix.copy()
    shifted[:3, 3] += 1.0
    with pytest.raises(InputError, match="do not lie on the reference volume's grid"):
        image_from_kji(array, shifted, reference=oblique_image)


def test_array_must_be_3d():
    with pytest.raises(InputError, match="array is 2-D, a 3-D"):
        image_from_kji(np.zeros((4, 5)), np.eye(4))


def test_sheared_matrix_is_refused():
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    with pytest.raises(InputError, match="sheared .*not orthogonal"):
        image_from_kji(np.zeros((2, 3, 4)), sheared)


@pytest.mark.parametrize(
    "matrix, problem",
    [
        (np.eye(3), "4x4 affine"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.1, 0, 0, 1]]), "last row 0 0 0 1"),
        (np.diag([1.0, 0.0, 1.0, 1.0]), "zero-length axis"),
        (np.diag([1.0, np.nan, 1.0, 1.0]), "finite 4x4"),
    ],
)
def test_matrices_itk_cannot_hold_are_refused(matrix: np.ndarray, problem: str):
    with pytest.raises(InputError, match=problem):
        image_from_kji(np.zeros((2, 3, 4)), matrix)
