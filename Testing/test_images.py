"""Reading, checking, writing, resampling and reorienting volumes (BreastSegmentationLib.io.images)."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.io.images import (
    align_post_to_pre,
    binary_mask,
    bounding_box,
    check_mask,
    check_volume,
    otsu_threshold,
    paste_into_empty,
    physical_overlap,
    read_image,
    read_volume,
    reorient_to_ras,
    resample_like,
    same_geometry,
    write_image,
)


def rotation_about_z(degrees: float) -> np.ndarray:
    angle = np.deg2rad(degrees)
    return np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])


def cube(size: int = 10, origin=(0.0, 0.0, 0.0), direction: np.ndarray | None = None) -> sitk.Image:
    image = sitk.Image(size, size, size, sitk.sitkFloat32)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(tuple(direction.ravel()))
    return image


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, first_file: int = 0) -> None:
    """Write a 3-D Int16 image as one DICOM file per slice, with the position and orientation tags readers use."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = image.GetDirection()
    orientation = (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        slice_image = image[:, :, k]
        tags = {
            "0008|0060": "MR",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0037": "\\".join(f"{value:.10f}" for value in orientation),
            "0020|0032": "\\".join(f"{value:.10f}" for value in image.TransformIndexToPhysicalPoint((0, 0, k))),
        }
        for tag, value in tags.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{first_file + k:03d}.dcm"))
        writer.Execute(slice_image)


@pytest.fixture
def int_volume(oblique_image: sitk.Image) -> sitk.Image:
    return sitk.Cast(oblique_image, sitk.sitkInt16)


def value_at_point(image: sitk.Image, point) -> float:
    return image[image.TransformPhysicalPointToIndex(point)]


# --- reading and writing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_write_then_read_keeps_voxels_and_geometry(tmp_path: Path, oblique_image: sitk.Image, suffix: str):
    name = f"volume{suffix}"
    path = write_image(oblique_image, tmp_path / "new" / "folder" / name)
    loaded = read_volume(path)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(oblique_image))
    assert same_geometry(loaded, oblique_image, tolerance=1e-5)
    written = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert name in written and not any(n.startswith(".") for n in written)


def test_detached_header_names_its_data_file_under_the_final_name(tmp_path: Path, oblique_image: sitk.Image):
    write_image(oblique_image, tmp_path / "volume.mhd", compress=True)
    assert (tmp_path / "volume.zraw").is_file()
    assert "ElementDataFile = volume.zraw" in (tmp_path / "volume.mhd").read_text()


def test_write_unknown_format_is_refused_and_writes_nothing(tmp_path: Path, oblique_image: sitk.Image):
    with pytest.raises(InputError, match="cannot write this format"):
        write_image(oblique_image, tmp_path / "volume.png")
    assert list(tmp_path.iterdir()) == []


def test_reading_leaves_the_file_unchanged(tmp_path: Path, oblique_image: sitk.Image):
    path = write_image(oblique_image, tmp_path / "volume.nii.gz")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    read_volume(path)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_dicom_folder_with_one_series_reads_as_a_volume(tmp_path: Path, int_volume: sitk.Image):
    write_dicom_series(int_volume, tmp_path / "series", "1.2.826.0.1.3680043.2.1125.1.1")
    loaded = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(loaded), sitk.GetArrayViewFromImage(int_volume))
    assert same_geometry(loaded, int_volume, tolerance=1e-6)


def test_dicom_folder_with_two_series_is_refused(tmp_path: Path, int_volume: sitk.Image):
    write_dicom_series(int_volume, tmp_path, "1.2.826.0.1.3680043.2.1125.1.1")
    write_dicom_series(int_volume, tmp_path, "1.2.826.0.1.3680043.2.1125.1.2", first_file=100)
    with pytest.raises(InputError, match=r"2 DICOM series.*breastseg inspect --dicom") as raised:
        read_image(tmp_path)
    assert str(tmp_path) in str(raised.value)


def test_dicom_series_with_two_phases_at_the_same_positions_is_refused(tmp_path: Path, int_volume: sitk.Image):
    write_dicom_series(int_volume, tmp_path, "1.2.826.0.1.3680043.2.1125.1.3")
    write_dicom_series(int_volume, tmp_path, "1.2.826.0.1.3680043.2.1125.1.3", first_file=100)
    with pytest.raises(InputError, match=r"14 slices at only 7 positions: it holds several volumes"):
        read_image(tmp_path)


def test_folder_without_dicom_is_refused(tmp_path: Path, oblique_image: sitk.Image):
    write_image(oblique_image, tmp_path / "volume.nii.gz")
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path)


def test_single_dicom_file_asks_for_its_folder(tmp_path: Path, int_volume: sitk.Image):
    write_dicom_series(int_volume, tmp_path, "1.2.826.0.1.3680043.2.1125.1.4")
    with pytest.raises(InputError, match="single DICOM file; pass the folder"):
        read_image(tmp_path / "slice000.dcm")


# --- bad files ---------------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path):
    missing = tmp_path / "nowhere.nii.gz"
    with pytest.raises(InputError, match="file not found") as raised:
        read_image(missing)
    assert str(missing) in str(raised.value)


@pytest.mark.parametrize("name, compress", [("cut.nii.gz", False), ("cut.nii.gz", True), ("cut.nii", False),
                                            ("cut.nrrd", False), ("cut.mha", False)])
def test_truncated_file_is_refused(tmp_path: Path, oblique_image: sitk.Image, name: str, compress: bool):
    path = write_image(oblique_image, tmp_path / name, compress=compress)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated") as raised:
        read_image(path)
    assert str(path) in str(raised.value)


def test_nifti_of_several_gzip_members_reads_whole(tmp_path: Path, oblique_image: sitk.Image):
    """Block-compressed files (bgzip's, for one) are several gzip members one after the other."""
    plain = write_image(oblique_image, tmp_path / "plain.nii", compress=False).read_bytes()
    half = len(plain) // 2
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(plain[:half]) + gzip.compress(plain[half:]))
    image = read_image(path)
    assert sitk.GetArrayFromImage(image).tolist() == sitk.GetArrayFromImage(oblique_image).tolist()
    assert image.GetDirection() == pytest.approx(oblique_image.GetDirection())


def test_text_file_named_nii_is_refused(tmp_path: Path):
    path = tmp_path / "notes.nii"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError, match="cannot be read as an image") as raised:
        read_image(path)
    assert str(path) in str(raised.value)


def test_unsupported_extension_lists_the_formats(tmp_path: Path):
    path = tmp_path / "picture.png"
    path.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(InputError, match=r"unsupported file type.*\.nii\.gz"):
        read_image(path)


def test_2d_image_is_refused(tmp_path: Path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(8, 9, sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match="image is 2-D, a 3-D volume is needed") as raised:
        read_volume(path)
    assert str(path) in str(raised.value)


def test_single_slice_volume_is_refused():
    with pytest.raises(InputError, match="pre-contrast is 2-D .*single slice"):
        check_volume(sitk.Image(8, 9, 1, sitk.sitkFloat32), "pre-contrast")


def test_4d_image_is_refused(tmp_path: Path):
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(sitk.Image([6, 7, 8, 3], sitk.sitkFloat32), str(path))
    with pytest.raises(InputError, match=r"post-contrast is 4-D \(3 volumes of 6x7x8\).*pass one phase"):
        read_volume(path, name="post-contrast")


def test_vector_image_is_refused(tmp_path: Path):
    path = tmp_path / "vector.nii.gz"
    sitk.WriteImage(sitk.Image([6, 7, 8], sitk.sitkVectorFloat32, 3), str(path))
    with pytest.raises(InputError, match="3 values per voxel .*scalar 3-D volume is needed"):
        read_volume(path)


def test_empty_image_is_refused():
    with pytest.raises(InputError, match="image is empty"):
        check_volume(sitk.Image(0, 0, 0, sitk.sitkFloat32), "image")


def test_nan_and_infinite_voxels_are_counted(tmp_path: Path, oblique_image: sitk.Image):
    values = sitk.GetArrayFromImage(oblique_image)
    values.flat[[0, 5, 9]] = np.nan
    values.flat[[3, 4]] = [np.inf, -np.inf]
    broken = sitk.GetImageFromArray(values)
    broken.CopyInformation(oblique_image)
    path = write_image(broken, tmp_path / "broken.nrrd")
    with pytest.raises(InputError, match="contains 3 NaN and 2 infinite voxels"):
        read_volume(path)


def test_check_volume_returns_the_image_itself(oblique_image: sitk.Image):
    assert check_volume(oblique_image, "image") is oblique_image


# --- masks -------------------------------------------------------------------------------------------------------


def test_masks_accept_labels_binary_floats_and_probabilities(oblique_image: sitk.Image):
    values = sitk.GetArrayFromImage(oblique_image)
    for mask_values in ((values > 100).astype(np.uint8) * 3, (values > 100).astype(np.float32), values / values.max()):
        mask = sitk.GetImageFromArray(mask_values)
        assert check_mask(mask, "mask") is mask


def test_an_image_given_as_mask_is_refused(oblique_image: sitk.Image):
    with pytest.raises(InputError, match="lesion mask is not a mask: .*neither integers nor between 0 and 1"):
        check_mask(oblique_image, "lesion mask")


def test_2d_mask_is_refused():
    with pytest.raises(InputError, match="mask is 2-D"):
        check_mask(sitk.Image(5, 5, sitk.sitkUInt8), "mask")


def test_binary_mask_rounds_and_keeps_geometry(oblique_image: sitk.Image):
    values = np.zeros(oblique_image.GetSize()[::-1], dtype=np.float32)
    values[0, 0, :4] = [0.4, 0.6, 2.0, -1.0]
    labels = sitk.GetImageFromArray(values)
    labels.CopyInformation(oblique_image)
    mask = binary_mask(labels)
    assert mask.GetPixelID() == sitk.sitkUInt8
    assert same_geometry(mask, oblique_image, tolerance=0.0)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(mask)[0, 0, :5], [0, 1, 1, 1, 0])
    assert sitk.GetArrayViewFromImage(mask).sum() == 3


# --- geometry: resampling, overlap, alignment, orientation -------------------------------------------------------


def physical_ramp(reference: sitk.Image) -> sitk.Image:
    """An image whose value is a linear function of the physical point: 2x - y + 0.5z + 7."""
    image = sitk.Image(reference.GetSize(), sitk.sitkFloat32)
    image.CopyInformation(reference)
    k, j, i = np.indices(reference.GetSize()[::-1])
    index = np.stack([i.ravel(), j.ravel(), k.ravel()])
    matrix = np.asarray(reference.GetDirection()).reshape(3, 3) * np.asarray(reference.GetSpacing())
    x, y, z = matrix @ index + np.asarray(reference.GetOrigin())[:, None]
    ramp = sitk.GetImageFromArray((2 * x - y + 0.5 * z + 7).reshape(k.shape).astype(np.float32))
    ramp.CopyInformation(reference)
    return ramp


def test_linear_resampling_follows_physical_points(oblique_image: sitk.Image):
    ramp = physical_ramp(oblique_image)
    grid = sitk.Image(6, 6, 5, sitk.sitkInt16)
    grid.SetSpacing((0.9, 1.1, 1.5))
    grid.SetOrigin(oblique_image.TransformContinuousIndexToPhysicalPoint((2.0, 2.5, 1.0)))
    resampled = resample_like(ramp, grid)
    assert resampled.GetPixelID() == sitk.sitkFloat32 and same_geometry(resampled, grid, tolerance=0.0)
    for index in [(0, 0, 0), (3, 2, 1), (5, 5, 3)]:
        x, y, z = resampled.TransformIndexToPhysicalPoint(index)
        assert resampled[index] == pytest.approx(2 * x - y + 0.5 * z + 7, abs=1e-3)
    outside = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    outside.SetOrigin((500.0, 500.0, 500.0))
    assert sitk.GetArrayFromImage(resample_like(ramp, outside)).max() == 0.0


def test_nearest_neighbour_resampling_keeps_masks_binary(oblique_image: sitk.Image):
    mask = sitk.Cast(oblique_image > 100.0, sitk.sitkUInt8)
    grid = cube(8, origin=oblique_image.TransformContinuousIndexToPhysicalPoint((1.0, 1.0, 0.5)))
    grid.SetSpacing((0.5, 0.5, 0.7))
    resampled = resample_like(mask, grid, is_mask=True)
    assert resampled.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(resampled))) <= {0, 1}
    for index in [(0, 0, 0), (4, 5, 2), (7, 7, 7)]:
        point = resampled.TransformIndexToPhysicalPoint(index)
        assert resampled[index] == value_at_point(mask, point)


def test_same_geometry_tolerance():
    a, b = cube(), cube()
    assert same_geometry(a, b)
    b.SetOrigin((1e-6, 0.0, 0.0))
    assert same_geometry(a, b)
    b.SetOrigin((1e-3, 0.0, 0.0))
    assert not same_geometry(a, b)
    assert not same_geometry(a, cube(11))


def test_physical_overlap_of_shifted_contained_and_distant_boxes():
    a = cube(10)
    assert physical_overlap(a, cube(10)) == pytest.approx(1.0)
    assert physical_overlap(a, cube(10, origin=(5.0, 0.0, 0.0))) == pytest.approx(0.5)
    assert physical_overlap(a, cube(20, origin=(-5.0, -5.0, -5.0))) == pytest.approx(1.0)
    assert physical_overlap(cube(20, origin=(-5.0, -5.0, -5.0)), a) == pytest.approx(1 / 8)
    assert physical_overlap(a, cube(10, origin=(10.0, 0.0, 0.0))) == 0.0
    assert physical_overlap(a, cube(10, origin=(100.0, 0.0, 0.0))) == 0.0


def test_physical_overlap_is_exact_for_rotated_boxes():
    """A cube and the same cube turned 45 degrees about its centre share a regular octagonal prism."""
    rotation = rotation_about_z(45.0)
    centre = np.full(3, 4.5)
    turned = cube(10, origin=tuple(centre - rotation @ centre), direction=rotation)
    octagon_fraction = 2 * (np.sqrt(2) - 1)
    assert physical_overlap(cube(10), turned) == pytest.approx(octagon_fraction, rel=1e-9)


def whole_grid_resample(image: sitk.Image, reference: sitk.Image, interpolator: int, pixel_type: int) -> sitk.Image:
    """SimpleITK's resampling of every voxel of ``reference``: what resample_like must equal."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, pixel_type)


def a_crop_of(image: sitk.Image, start: tuple[int, int, int], size: tuple[int, int, int]) -> sitk.Image:
    """A block of ``image`` turned by 15 degrees about its first voxel: a crop that is not on the reference's grid."""
    crop = sitk.RegionOfInterest(image, size, start)
    crop.SetDirection(tuple((rotation_about_z(15.0) @ np.asarray(image.GetDirection()).reshape(3, 3)).ravel()))
    return crop


@pytest.mark.parametrize("start, size", [((3, 4, 1), (6, 5, 4)), ((0, 0, 0), (13, 11, 7)), ((9, 8, 5), (4, 3, 2))])
def test_resample_like_interpolates_only_the_covered_block_and_matches_the_whole_grid(
        oblique_image: sitk.Image, start, size):
    crop = a_crop_of(oblique_image, start, size)
    labels = sitk.Cast(crop > 100.0, sitk.sitkUInt16) * 7
    resampled = resample_like(crop, oblique_image)
    relabelled = resample_like(labels, oblique_image, is_mask=True)
    expected = whole_grid_resample(crop, oblique_image, sitk.sitkLinear, sitk.sitkFloat32)
    expected_labels = whole_grid_resample(labels, oblique_image, sitk.sitkNearestNeighbor, sitk.sitkUInt16)
    assert same_geometry(resampled, oblique_image, tolerance=0.0) and resampled.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(expected), atol=1e-3)
    assert relabelled.GetPixelID() == sitk.sitkUInt16
    assert np.array_equal(sitk.GetArrayFromImage(relabelled), sitk.GetArrayFromImage(expected_labels))
    assert sitk.GetArrayViewFromImage(resampled).any()


def test_resample_like_gives_zeros_where_the_image_is_far_away(oblique_image: sitk.Image):
    far = sitk.Image(oblique_image)
    far.SetOrigin((500.0, 500.0, 500.0))
    resampled = resample_like(far, oblique_image)
    assert same_geometry(resampled, oblique_image, tolerance=0.0)
    assert not sitk.GetArrayViewFromImage(resampled).any()


def test_align_post_to_pre_returns_post_itself_on_the_same_grid(oblique_image: sitk.Image):
    post = sitk.Image(oblique_image)
    assert align_post_to_pre(oblique_image, post, "pre.nii.gz", "post.nii.gz") is post


def test_align_post_to_pre_resamples_onto_the_pre_grid(oblique_image: sitk.Image):
    post = physical_ramp(cube(20, origin=(-20.0, 20.0, 0.0)))
    aligned = align_post_to_pre(oblique_image, post, "pre.nii.gz", "post.nii.gz")
    assert same_geometry(aligned, oblique_image, tolerance=0.0)
    x, y, z = aligned.TransformIndexToPhysicalPoint((3, 4, 2))
    assert aligned[3, 4, 2] == pytest.approx(2 * x - y + 0.5 * z + 7, abs=1e-3)


def test_align_post_to_pre_refuses_volumes_that_do_not_overlap():
    with pytest.raises(InputError, match=r"pre- and post-contrast volumes do not overlap \(pre.nii and post.nii\)"):
        align_post_to_pre(cube(10), cube(10, origin=(0.0, 0.0, 50.0)), "pre.nii", "post.nii")


def test_align_post_to_pre_refuses_a_small_overlap_and_says_how_small():
    with pytest.raises(InputError, match=r"overlap by only 20%: post.nii covers 20% of pre.nii"):
        align_post_to_pre(cube(10), cube(10, origin=(8.0, 0.0, 0.0)), "pre.nii", "post.nii")


def test_reorient_to_ras_points_the_axes_right_anterior_superior():
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    image.SetSpacing((0.5, 0.6, 2.0))
    reoriented = reorient_to_ras(image)
    # In LPS coordinates Right is -x, Anterior is -y, Superior is +z.
    np.testing.assert_allclose(np.asarray(reoriented.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]))
    assert reoriented.GetSpacing() == (0.5, 0.6, 2.0)
    assert_values_follow_physical_points(image, reoriented)


def test_reorient_to_ras_keeps_values_at_their_points_for_oblique_volumes(oblique_image: sitk.Image):
    tilted = sitk.Image(oblique_image)
    tilted.SetDirection(tuple((np.diag([1.0, -1.0, -1.0]) @ rotation_about_z(20.0)).ravel()))
    reoriented = reorient_to_ras(tilted)
    axes = np.asarray(reoriented.GetDirection()).reshape(3, 3)
    assert axes[0, 0] < 0 and axes[1, 1] < 0 and axes[2, 2] > 0
    assert_values_follow_physical_points(tilted, reoriented)


def assert_values_follow_physical_points(original: sitk.Image, reoriented: sitk.Image) -> None:
    for index in np.ndindex(*reoriented.GetSize()):
        point = reoriented.TransformIndexToPhysicalPoint(index)
        assert reoriented[index] == value_at_point(original, point)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_voxels_in_nifti_are_refused_although_itk_reads_them_as_zero(tmp_path, suffix):
    values = np.ones((4, 5, 6), np.float32)
    values[1, 2, 3] = np.nan
    values[2, 2, 2] = np.inf
    path = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    with pytest.raises(InputError, match="2 NaN or infinite voxels"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64])
def test_nifti_read_from_its_checked_bytes_equals_itks_own_read(tmp_path, oblique_image, suffix, dtype):
    values = (sitk.GetArrayFromImage(oblique_image) * 3).astype(dtype)
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(oblique_image)
    path = tmp_path / f"volume{suffix}"
    sitk.WriteImage(image, str(path))
    ours, itks = read_image(path), sitk.ReadImage(str(path))
    assert ours.GetPixelID() == itks.GetPixelID() == image.GetPixelID()
    assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(itks))
    assert np.array_equal(sitk.GetArrayFromImage(ours), values)
    for attribute in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(ours, attribute)() == getattr(itks, attribute)()


def test_vector_nifti_is_left_to_itk(tmp_path, oblique_image):
    vector = sitk.Compose(oblique_image, oblique_image * 2)
    path = tmp_path / "vector.nii.gz"
    sitk.WriteImage(vector, str(path))
    read = read_image(path)
    assert read.GetNumberOfComponentsPerPixel() == 2
    assert np.array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


@pytest.mark.parametrize("shape", [(7, 9, 11), (1, 5, 6), (4, 12), (13,)])
def test_bounding_box_is_find_objects_box(rng, shape):
    from scipy import ndimage
    for fill in (0.002, 0.05, 0.9):
        mask = rng.random(shape) < fill
        mask.flat[rng.integers(mask.size)] = True
        assert bounding_box(mask) == ndimage.find_objects(mask.view(np.uint8))[0]



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_threshold_separates_two_classes_as_itks_filter_does(seed):
    rng = np.random.default_rng(seed)
    air = rng.normal(10.0, 3.0, size=40_000)
    tissue = rng.normal(rng.uniform(60.0, 200.0), rng.uniform(5.0, 30.0), size=100 * int(rng.integers(50, 600)))
    values = np.concatenate([air, tissue]).astype(np.float32).reshape(-1, 10, 10)
    itk = sitk.OtsuThresholdImageFilter()
    itk.Execute(sitk.GetImageFromArray(values))
    bin_width = float(values.max() - values.min()) / 128
    threshold = otsu_threshold(values)
    assert threshold == pytest.approx(itk.GetThreshold(), abs=0.05 * bin_width)
    assert air.mean() < threshold < tissue.mean()


def test_otsu_threshold_of_equal_values_is_that_value():
    assert otsu_threshold(np.full((3, 4), 7.5, dtype=np.float32)) == 7.5


@pytest.mark.parametrize("block_shape", [(2, 3, 4), (1, 3, 4)])  # (z, y, x); one slice thick too
def test_a_block_pasted_into_an_empty_image_lands_at_its_index_on_the_reference_grid(rng, oblique_image, block_shape):
    block = sitk.GetImageFromArray(rng.uniform(1.0, 2.0, size=block_shape).astype(np.float32))
    start = [5, 4, 3]  # (x, y, z)
    pasted = paste_into_empty(block, start, oblique_image)
    assert same_geometry(pasted, oblique_image) and pasted.GetPixelID() == sitk.sitkFloat32
    expected = np.zeros(oblique_image.GetSize()[::-1], dtype=np.float32)
    z, y, x = block_shape
    expected[3:3 + z, 4:4 + y, 5:5 + x] = sitk.GetArrayFromImage(block)
    assert np.array_equal(sitk.GetArrayFromImage(pasted), expected)
