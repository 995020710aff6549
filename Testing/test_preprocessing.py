"""Canonical preprocessing: RAS, in-plane spacing, normalisation that keeps enhancement, restoring predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from BreastSegmentationLib.data.crops import CropBox
from BreastSegmentationLib.data.datasets import CaseRecord
from BreastSegmentationLib.data.preprocessing import (
    ENHANCEMENT_FLOOR_FRACTION,
    ENHANCEMENT_RANGE,
    Grid,
    PreprocessConfig,
    background_enhancement,
    body_mask,
    check_post_enhances,
    fill_holes_per_slice,
    image_on_grid,
    inplane_grid,
    neighbour_step,
    prepare_case,
    prepare_checked,
    restore_to_original,
    channel_stack,
    select_channels,
    study_background,
    uses_excess,
)
from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.io.images import resample_like

SHAPE_ZYX = (12, 48, 48)
SPACING_XYZ = (0.8, 0.8, 2.0)


def as_image(array: np.ndarray, spacing=SPACING_XYZ) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 15.0, 3.0))
    return image


def synthetic_case(rng: np.random.Generator) -> dict[str, sitk.Image]:
    """An LPS (identity direction) case: low rows are anterior. Breast in rows 4-19, a lesion that enhances."""
    z, y, x = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    pre = np.abs(rng.normal(0.0, 5.0, SHAPE_ZYX))  # air noise
    pre[:, 4:44, 4:44] = rng.normal(200.0, 20.0, (SHAPE_ZYX[0], 40, 40))
    breast = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    breast[2:10, 4:20, 6:42] = 1
    lesion = (((z - 6) * 2.0) ** 2 + ((y - 12) * 0.8) ** 2 + ((x - 20) * 0.8) ** 2 < 16.0).astype(np.uint8)
    post = pre * 1.05 + 180.0 * lesion
    return {"pre": as_image(pre.astype(np.float32)), "post": as_image(post.astype(np.float32)),
            "breast": as_image(breast), "lesions": as_image(lesion)}


@pytest.fixture
def case(rng) -> dict[str, sitk.Image]:
    return synthetic_case(rng)


def test_prepared_case_is_in_ras_with_anterior_at_high_rows(case):
    prepared = prepare_case(**case, case_id="c1")
    assert prepared.grid.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
    assert prepared.image.shape == (2, 12, 48, 48) and prepared.image.dtype == np.float32
    assert prepared.channels == ("pre", "post")
    breast_rows = np.flatnonzero(prepared.breast.any(axis=(0, 2)))
    assert (breast_rows[0], breast_rows[-1]) == (47 - 19, 47 - 4)
    original = sitk.GetArrayFromImage(case["lesions"])
    assert np.array_equal(prepared.lesions, original[:, ::-1, ::-1])
    assert prepared.patient_id == "c1"


def test_inplane_resampling_keeps_slices_and_field_of_view(case):
    prepared = prepare_case(**case, config=PreprocessConfig(spacing_mm=(0.7, 0.7)))
    assert prepared.grid.spacing == pytest.approx((0.7, 0.7, 2.0))
    assert prepared.grid.size == (55, 55, 12)
    assert prepared.spacing_yx == pytest.approx((0.7, 0.7))
    ras = sitk.DICOMOrient(case["pre"], "RAS")
    direction = np.reshape(ras.GetDirection(), (3, 3))
    old_edge = np.array(ras.GetOrigin()) - direction @ (np.array(ras.GetSpacing()) / 2)
    new_edge = np.array(prepared.grid.origin) - direction @ (np.array(prepared.grid.spacing) / 2)
    assert new_edge == pytest.approx(old_edge)
    assert set(np.unique(prepared.lesions)) == {0, 1}


@pytest.mark.parametrize("config", [PreprocessConfig(), PreprocessConfig(normalisation="percentile"),
                                    PreprocessConfig(clahe=True), PreprocessConfig(normalisation="none")])
def test_normalisation_keeps_enhancement(case, config):
    prepared = prepare_case(**case, config=config)
    lesion = prepared.lesions > 0
    pre, post = prepared.image[0][lesion], prepared.image[1][lesion]
    assert (post > pre).mean() > 0.95
    assert post.mean() > pre.mean()


def test_zscore_uses_the_pre_contrast_body_statistics(case):
    prepared = prepare_case(**case, config=PreprocessConfig(clip_percentiles=None))
    body = body_mask(sitk.GetArrayFromImage(sitk.DICOMOrient(case["pre"], "RAS")))
    # the statistics come from every other row and column: close to, not exactly, the full body's
    assert prepared.image[0][body].mean() == pytest.approx(0.0, abs=0.03)
    assert prepared.image[0][body].std() == pytest.approx(1.0, abs=0.03)
    post = sitk.GetArrayFromImage(sitk.DICOMOrient(case["post"], "RAS"))
    scale, offset = prepared.statistics.scale, prepared.statistics.offset
    assert prepared.image[1] == pytest.approx((post - offset) / scale, abs=1e-4)


def test_statistics_do_not_depend_on_the_grid_and_can_be_shared(case):
    coarse = prepare_case(**case, config=PreprocessConfig(spacing_mm=(1.6, 1.6)))
    fine = prepare_case(**case, config=PreprocessConfig(spacing_mm=(0.8, 0.8), subtraction=True))
    assert coarse.statistics == fine.statistics
    shared = prepare_case(**case, config=PreprocessConfig(spacing_mm=(0.8, 0.8), subtraction=True),
                          statistics=coarse.statistics)
    assert np.array_equal(shared.image, fine.image)
    assert PreprocessConfig(spacing_mm=(1.6, 1.6)).intensity_settings == PreprocessConfig(subtraction=True).intensity_settings
    assert PreprocessConfig().intensity_settings != PreprocessConfig(normalisation="percentile").intensity_settings


def test_subtraction_channel(case):
    prepared = prepare_case(**case, config=PreprocessConfig(subtraction=True))
    assert prepared.channels == ("pre", "post", "subtraction")
    assert np.allclose(prepared.image[2], prepared.image[1] - prepared.image[0])


def test_enhancement_channel_is_the_relative_enhancement_with_a_floor(case):
    prepared = prepare_case(**case, config=PreprocessConfig(subtraction=True, enhancement=True))
    assert prepared.channels == ("pre", "post", "subtraction", "enhancement")
    enhancement, lesion = prepared.image[3], prepared.lesions > 0
    pre = sitk.GetArrayFromImage(sitk.DICOMOrient(case["pre"], "RAS"))
    post = sitk.GetArrayFromImage(sitk.DICOMOrient(case["post"], "RAS"))
    tissue = (pre > 150) & ~lesion
    assert enhancement[tissue] == pytest.approx(0.05, abs=1e-4)  # post = 1.05 pre outside the lesion
    assert enhancement[lesion] == pytest.approx(np.clip((post[lesion] - pre[lesion]) / pre[lesion], -1, 4), abs=1e-4)
    floor = ENHANCEMENT_FLOOR_FRACTION * prepared.statistics.pre_range[1]
    air = pre < 20  # dark voxels divide by the floor, not by their own noise
    assert np.abs(enhancement[air]).max() <= np.abs(post[air] - pre[air]).max() / floor + 1e-6
    assert enhancement.min() >= ENHANCEMENT_RANGE[0] and enhancement.max() <= ENHANCEMENT_RANGE[1]


def test_enhancement_channel_ignores_scanner_units_and_a_bias_field(case):
    config = PreprocessConfig(enhancement=True)
    plain = prepare_case(**case, config=config)
    z, y, x = np.mgrid[: SHAPE_ZYX[0], : SHAPE_ZYX[1], : SHAPE_ZYX[2]]
    bias = as_image((3.0 * (1.0 + 0.5 * np.sin(y / 9.0) * np.cos(x / 13.0) + 0.02 * z)).astype(np.float32))
    biased = prepare_case(case["pre"] * bias, case["post"] * bias, case["breast"], case["lesions"], config=config)
    lesion = plain.lesions > 0
    assert biased.image[2][lesion] == pytest.approx(plain.image[2][lesion], abs=1e-4)
    biased_subtraction = biased.image[1][lesion] - biased.image[0][lesion]
    assert not np.allclose(biased_subtraction, plain.image[1][lesion] - plain.image[0][lesion], atol=0.05)


def test_select_channels_orders_inputs_and_reads_neighbouring_slices(case):
    prepared = prepare_case(**case, config=PreprocessConfig(subtraction=True))
    selected = select_channels(prepared, ["subtraction@-1", "subtraction", "subtraction@+1", "pre"])
    subtraction = prepared.image[2]
    assert selected.channels == ("subtraction@-1", "subtraction", "subtraction@+1", "pre")
    assert np.array_equal(selected.image[1], subtraction)
    assert np.array_equal(selected.image[0][1:], subtraction[:-1]) and np.array_equal(selected.image[0][0], subtraction[0])
    assert np.array_equal(selected.image[2][:-1], subtraction[1:]) and np.array_equal(selected.image[2][-1], subtraction[-1])
    assert np.array_equal(selected.image[3], prepared.image[0])


@pytest.mark.parametrize(("slice_mm", "step"), [(2.0, 1), (1.0, 1), (0.8, 2), (0.5, 2), (0.3, 4)])
def test_neighbouring_slices_lie_at_least_a_millimetre_away_on_thin_slices(case, slice_mm, step):
    """On slices thinner than 1 mm "@-1" and "@+1" step over enough slices to span it (the 2.5-D context of the
    1-3 mm slices the bundled models learnt from); from 1 mm up they read the next slice."""
    thin = {name: as_image(sitk.GetArrayFromImage(image), spacing=(0.8, 0.8, slice_mm)) for name, image in case.items()}
    prepared = prepare_case(**thin, config=PreprocessConfig(subtraction=True))
    assert neighbour_step(slice_mm) == step
    selected = select_channels(prepared, ["subtraction@-1", "subtraction@+1"])
    subtraction = prepared.image[2]
    assert np.array_equal(selected.image[0][step:], subtraction[:-step])
    assert np.array_equal(selected.image[1][:-step], subtraction[step:])
    assert all(np.array_equal(selected.image[0][k], subtraction[0]) for k in range(step))


def test_channel_stack_in_a_box_equals_the_whole_stack_cropped_and_masked(case):
    """Boxes at either end (the edge slice stands in beyond it) and inside (the neighbours are the real slices beyond
    the box), with and without a mask, with the derived "excess"."""
    prepared = prepare_case(**case, config=PreprocessConfig(subtraction=True, enhancement=True))
    inputs = ["enhancement@-1", "excess", "subtraction@+1", "pre"]
    whole = select_channels(prepared, inputs, background=0.25).image
    for slices in ((0, 5), (4, 9), (7, 12)):
        box = CropBox(slices=slices, rows=(10, 30), cols=(4, 40))
        mask = np.random.default_rng(1).integers(0, 2, box.shape, dtype=np.uint8)
        assert np.array_equal(channel_stack(prepared, inputs, box, background=0.25), box.apply(whole))
        assert np.array_equal(channel_stack(prepared, inputs, box, mask, background=0.25), box.apply(whole) * mask)


@pytest.mark.parametrize("fat_saturated", [False, True])
def test_background_enhancement_is_the_median_enhancement_of_the_gland(rng, fat_saturated):
    """Fat is bright without fat saturation and dark with it; either way the gland's enhancement is the BPE, and a
    strongly enhancing lesion inside the gland hardly moves it."""
    shape = (6, 40, 40)
    gland = np.zeros(shape, dtype=bool)
    gland[:, 10:30, 5:25] = True
    lesion = np.zeros(shape, dtype=bool)
    lesion[2:4, 14:20, 8:14] = True
    fat_signal, gland_signal = (40.0, 120.0) if fat_saturated else (300.0, 120.0)
    pre = np.where(gland, gland_signal, fat_signal) + rng.normal(0.0, 8.0, shape)
    enhancement = np.where(gland, 0.3, 0.02) + rng.normal(0.0, 0.03, shape)
    enhancement[lesion] = 1.5
    breast = np.ones(shape, dtype=np.uint8)
    assert background_enhancement(pre, enhancement, breast) == pytest.approx(0.3, abs=0.02)
    with pytest.raises(InputError, match="no breast voxels"):
        background_enhancement(pre, enhancement, np.zeros(shape, dtype=np.uint8))


def test_excess_input_is_the_enhancement_above_the_studys_background(case):
    prepared = prepare_case(**case, config=PreprocessConfig(enhancement=True))
    selected = select_channels(prepared, ["excess", "enhancement", "excess@+1"])
    enhancement = prepared.image[2]
    bpe = background_enhancement(prepared.image[0], enhancement, prepared.breast)
    assert bpe == pytest.approx(0.05, abs=1e-3)  # post = 1.05 pre in the breast's tissue
    assert np.allclose(selected.image[0], enhancement - bpe)
    assert np.allclose(selected.image[2][:-1], enhancement[1:] - bpe)
    assert study_background(prepared) == bpe
    given = np.zeros_like(prepared.breast)
    given[:, :4] = 1  # a mask on air only: another background level
    assert study_background(prepared, given) != pytest.approx(bpe, abs=1e-3)
    cropped = prepared.cropped(CropBox(slices=(0, 12), rows=(10, 30), cols=(0, 48)))
    with_background = select_channels(cropped, ["excess"], background=bpe)
    assert np.allclose(with_background.image[0], enhancement[:, 10:30] - bpe)
    unmasked = prepare_case(case["pre"], case["post"], config=PreprocessConfig(enhancement=True))
    with pytest.raises(InputError, match="needs a breast mask"):
        select_channels(unmasked, ["excess"])
    assert uses_excess(["pre", "excess@+1"]) and not uses_excess(["pre", "enhancement"])
    with pytest.raises(InputError, match="not made by the preprocessing"):
        select_channels(prepare_case(**case), ["excess"])


@pytest.mark.parametrize(("inputs", "message"), [(["subtraction"], "not made by the preprocessing"),
                                                 (["post@+12"], "unknown input"), (["t1"], "unknown input")])
def test_select_channels_refuses_inputs_the_preprocessing_does_not_make(case, inputs, message):
    with pytest.raises(InputError, match=message):
        select_channels(prepare_case(**case), inputs)


def test_fill_holes_per_slice_fills_enclosed_holes_only():
    mask = np.zeros((3, 20, 20), dtype=np.uint8)
    mask[0, 4:12, 4:12] = 1
    mask[0, 6:10, 6:10] = 0  # enclosed in slice 0 (the first slice: a 3-D fill would miss it)
    mask[1, 4:12, 4:12] = 1
    mask[1, 6:10, 6:12] = 0  # open on the right edge of the mask's bounding box: not a hole
    filled = fill_holes_per_slice(mask)
    assert filled.dtype == bool and filled[0, 4:12, 4:12].all()
    assert not filled[1, 6:10, 6:12].any() and filled[1].sum() == mask[1].sum()
    assert not filled[2].any() and mask[0, 7, 7] == 0  # the input is left as it was


def test_fill_holes_per_slice_equals_scipys_fill_of_each_slice(rng):
    mask = ndimage.binary_opening(rng.random((6, 48, 40)) > 0.45, structure=np.ones((1, 2, 2)))
    expected = np.stack([ndimage.binary_fill_holes(piece) for piece in mask])
    assert expected.sum() > mask.sum()  # there are holes to fill
    np.testing.assert_array_equal(fill_holes_per_slice(mask), expected)


def test_body_mask_keeps_enclosed_dark_fat_and_drops_air(rng):
    pre = np.abs(rng.normal(0.0, 5.0, (4, 40, 40)))
    pre[:, 8:32, 8:32] = 300.0
    pre[:, 12:28, 12:28] = 25.0  # fat-saturated fat: dark, but far above the air noise
    body = body_mask(pre)
    assert body[:, 8:32, 8:32].all()
    assert not body[:, :6].any() and not body[:, :, 34:].any()


def test_post_in_another_orientation_is_aligned_to_pre(case):
    reoriented = dict(case, post=sitk.DICOMOrient(case["post"], "RAS"))
    assert np.allclose(prepare_case(**reoriented).image, prepare_case(**case).image)


def test_restore_to_original_round_trip_on_an_oblique_grid(oblique_image):
    k, j, i = np.mgrid[:7, :11, :13]
    mask_array = (((i - 6) / 4.0) ** 2 + ((j - 5) / 3.5) ** 2 + ((k - 3) / 2.5) ** 2 < 1.0).astype(np.uint8)
    mask = sitk.GetImageFromArray(mask_array)
    mask.CopyInformation(oblique_image)
    same_spacing = prepare_case(oblique_image, oblique_image, lesions=mask)
    restored = sitk.GetArrayFromImage(restore_to_original(same_spacing.lesions, same_spacing, mask))
    assert np.array_equal(restored, mask_array)
    resampled = prepare_case(oblique_image, oblique_image, lesions=mask, config=PreprocessConfig(spacing_mm=(0.5, 0.5)))
    assert resampled.grid.spacing[:2] == pytest.approx((0.5, 0.5))
    restored_image = restore_to_original(resampled.lesions, resampled, mask)
    assert restored_image.GetSize() == mask.GetSize() and restored_image.GetDirection() == mask.GetDirection()
    restored = sitk.GetArrayFromImage(restored_image).astype(bool)
    original = mask_array.astype(bool)
    boundary = ndimage.binary_dilation(original) & ~ndimage.binary_erosion(original)
    assert not (restored ^ original)[~boundary].any(), "differences only within one voxel of the boundary"
    assert (restored ^ original).sum() <= 0.2 * original.sum()


def test_restore_probabilities_is_linear_and_float(case):
    prepared = prepare_case(**case, config=PreprocessConfig(spacing_mm=(0.7, 0.7)))
    probabilities = np.full(prepared.shape, 0.25, dtype=np.float32)
    restored = restore_to_original(probabilities, prepared, case["pre"])
    assert restored.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(restored)
    assert np.allclose(values[:, 2:-2, 2:-2], 0.25)


def test_config_validation_and_round_trip():
    config = PreprocessConfig(spacing_mm=(0.7, 0.7), clahe=True, subtraction=True, enhancement=True)
    assert PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InputError, match="normalisation"):
        PreprocessConfig(normalisation="minmax")
    with pytest.raises(InputError, match="spacing"):
        PreprocessConfig(spacing_mm=(0.0, 0.7))
    with pytest.raises(InputError, match="percentiles"):
        PreprocessConfig(clip_percentiles=(99.0, 1.0))
    for missing in ({"clip_percentiles": None}, {"normalisation": "none"}):
        with pytest.raises(InputError, match="enhancement channel needs"):
            PreprocessConfig(enhancement=True, **missing)


def test_blank_pre_contrast_image_is_refused(case):
    blank = sitk.Image(case["pre"].GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(case["pre"])
    with pytest.raises(InputError, match="body"):
        prepare_case(blank, case["post"])


def test_prepare_checked_reads_the_files_and_prepares_only_the_masks_asked_for(case, tmp_path):
    paths = {}
    for role, image in case.items():
        paths[role] = tmp_path / f"{role}.nii.gz"
        sitk.WriteImage(image, str(paths[role]))
    [prepared] = prepare_checked([CaseRecord("c7", "patient-3", **paths)], "lesion", masks=("lesions",))
    expected = prepare_case(**case)
    assert prepared.breast is None
    assert (prepared.case_id, prepared.patient_id) == ("c7", "patient-3")
    assert np.allclose(prepared.image, expected.image)
    assert np.array_equal(prepared.lesions, expected.lesions)


def test_prepare_checked_lists_every_problem_and_prepares_nothing(case, tmp_path):
    paths = {}
    for role, image in case.items():
        paths[role] = tmp_path / f"{role}.nii.gz"
        sitk.WriteImage(image, str(paths[role]))
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(case["lesions"] * 0, str(empty))
    records = [CaseRecord("c1", "p1", **{**paths, "lesions": empty}), CaseRecord("c2", "p2", **paths)]
    views = []
    with pytest.raises(InputError, match="2 problems") as caught:
        prepare_checked(records, "lesion", min_patients=3, view=views.append)
    assert "empty" in str(caught.value) and "at least 3" in str(caught.value)
    assert views == []


@pytest.mark.parametrize("size, spacing, target", [
    ((90, 84, 4), (0.889, 0.889, 1.2), (1.0, 1.0)),  # the lesion model's grid from a typical scan
    ((101, 84, 4), (0.889, 0.889, 1.2), (2.0, 2.0)),  # the breast model's: the last column comes from rounding up
    ((64, 40, 3), (1.3, 1.1, 3.0), (0.8, 0.5)),  # finer, and different along rows and columns
])
def test_image_on_grid_gives_simpleitks_linear_resampling_of_each_slice(rng, size, spacing, target):
    image = sitk.GetImageFromArray(rng.normal(50.0, 20.0, size=size[::-1]).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # RAS, as prepared
    grid = inplane_grid(image, target)
    expected = sitk.GetArrayFromImage(resample_like(image, grid.reference()))
    resized = image_on_grid(image, grid)
    assert resized.shape == expected.shape == tuple(reversed(grid.size))
    np.testing.assert_allclose(resized, expected, atol=1e-3 * 20.0)


def test_image_on_grid_resamples_other_grids_and_views_its_own(oblique_image):
    own = image_on_grid(oblique_image, Grid.of(oblique_image))
    assert np.shares_memory(own, sitk.GetArrayViewFromImage(oblique_image))
    shifted = Grid.of(oblique_image)
    shifted = Grid(shifted.size, shifted.spacing, tuple(v + 0.3 for v in shifted.origin), shifted.direction)
    expected = sitk.GetArrayFromImage(resample_like(oblique_image, shifted.reference()))
    np.testing.assert_array_equal(image_on_grid(oblique_image, shifted), expected)


def test_phases_given_the_wrong_way_round_are_refused():
    rng = np.random.default_rng(7)
    pre = rng.uniform(200.0, 600.0, 20000).astype(np.float32)  # body voxels: fat, gland, muscle
    post = pre + rng.normal(0.0, 15.0, pre.size).astype(np.float32)  # noise, and motion edges both ways
    post[:600] += rng.uniform(200.0, 900.0, 600).astype(np.float32)  # 3 %: heart, vessels, enhancing gland
    check_post_enhances(pre, post)
    check_post_enhances(pre, pre)  # no uptake at all: nothing to tell, nothing refused
    check_post_enhances(pre, pre + rng.normal(0.0, 15.0, pre.size).astype(np.float32))  # noise alone
    with pytest.raises(InputError, match="^case study 7: .*are pre and post swapped"):
        check_post_enhances(post, pre, "study 7")
    subtraction = rng.normal(0.0, 15.0, pre.size).astype(np.float32)
    subtraction[:600] += 300.0  # uptake as bright as the tissue: about 0 everywhere else
    with pytest.raises(InputError, match="or is the post-contrast image a subtraction"):
        check_post_enhances(pre, subtraction)

