"""The synthetic breast DCE-MRI phantom: determinism, masks, lesions, kinetics, acquisition ranges and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.data.phantom import (PhantomConfig, case_seed, generate_case, read_case,
                                                sample_acquisition, write_cases)
from BreastSegmentationLib.data.phantom_anatomy import Tissue
from BreastSegmentationLib.data.phantom_lesions import Kinetics, classify_curve
from BreastSegmentationLib.errors import InputError

SMALL = (64, 64, 24)
LESION_RICH = PhantomConfig(lesion_count_range=(2, 3), lesion_diameter_range_mm=(12.0, 30.0))


def array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image)


@pytest.fixture(scope="module")
def lesion_case():
    return generate_case(11, LESION_RICH, shape=(96, 96, 40))


def test_same_seed_gives_identical_cases_and_other_seeds_differ():
    first, again, other = generate_case(3, shape=SMALL), generate_case(3, shape=SMALL), generate_case(4, shape=SMALL)
    for name in ("pre", "breast", "lesions"):
        assert np.array_equal(array(getattr(first, name)), array(getattr(again, name)))
    assert all(np.array_equal(array(a), array(b)) for a, b in zip(first.posts, again.posts))
    assert first.info == again.info
    assert not np.array_equal(array(first.pre), array(other.pre))


def test_case_images_share_one_grid_and_masks_are_binary(lesion_case):
    case = lesion_case
    assert len(case.posts) == 3
    for image in (*case.posts, case.breast, case.lesions):
        assert image.GetSize() == case.pre.GetSize()
        assert np.allclose(image.GetSpacing(), case.pre.GetSpacing())
        assert np.allclose(image.GetOrigin(), case.pre.GetOrigin())
    for mask in (case.breast, case.lesions):
        assert mask.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(array(mask))) <= {0, 1}
    assert case.info["shape"] == [96, 96, 40]
    json.dumps(case.info)


def test_lesions_lie_inside_the_breast_and_match_info(lesion_case):
    breast, lesions = array(lesion_case.breast), array(lesion_case.lesions)
    assert lesions.any() and not (lesions & ~breast.astype(bool)).any()
    labels, count = ndimage.label(lesions, structure=np.ones((3, 3, 3)))
    assert count == len(lesion_case.info["lesions"]) >= 2
    voxel_volume = float(np.prod(lesion_case.lesions.GetSpacing()))
    measured = sorted(np.bincount(labels.ravel())[1:] * voxel_volume)
    described = sorted(lesion["volume_mm3"] for lesion in lesion_case.info["lesions"])
    assert np.allclose(measured, described, rtol=1e-6, atol=1e-2)
    for lesion in lesion_case.info["lesions"]:
        i, j, k = lesion["centre_index"]
        assert lesions[k, j, i] == 1
        assert lesion["type"] in ("round", "lobulated", "irregular", "non_mass")


def test_lesions_and_heart_enhance_and_the_breast_stays_clear_of_heart_and_lungs(lesion_case):
    pre = array(lesion_case.pre).astype(float)
    post = array(lesion_case.posts[0]).astype(float)
    tissue, breast = array(lesion_case.tissue), array(lesion_case.breast).astype(bool)
    lesions = array(lesion_case.lesions).astype(bool)
    vascular, _ = ndimage.label(np.isin(tissue, (Tissue.BLOOD, Tissue.MYOCARDIUM)))
    heart = vascular == np.argmax(np.bincount(vascular.ravel())[1:]) + 1  # the heart and the great vessels
    chest = heart | (tissue == Tissue.LUNG)
    assert heart.any() and not (ndimage.binary_dilation(chest) & breast).any()
    breast_fat = breast & (tissue == Tissue.FAT)
    fat_enhancement = post[breast_fat].mean() - pre[breast_fat].mean()
    heart_enhancement = post[heart].mean() - pre[heart].mean()
    assert heart_enhancement > 5 * max(fat_enhancement, 0.0) and heart_enhancement > pre[heart].mean()
    assert post[lesions].mean() > 1.1 * pre[lesions].mean()


def test_fat_saturation_inverts_fat_to_gland_contrast():
    contrasts = {}
    for fat_sat in (False, True):
        config = PhantomConfig(fat_sat_probability=float(fat_sat))
        case = generate_case(8, config, shape=(96, 96, 32))
        assert case.info["fat_sat"] is fat_sat
        pre, tissue = array(case.pre).astype(float), array(case.tissue)
        breast = array(case.breast).astype(bool)
        contrasts[fat_sat] = pre[breast & (tissue == Tissue.FAT)].mean() / pre[breast & (tissue == Tissue.GLAND)].mean()
    assert contrasts[False] > 1.2 and contrasts[True] < 0.8


def test_acquisitions_stay_within_the_configured_ranges():
    config = PhantomConfig()
    vendors, fat_sat = set(), set()
    for seed in range(200):
        scan = sample_acquisition(np.random.default_rng(seed), config)
        columns, rows, slices = scan.size
        assert config.matrix_range[0] <= rows <= columns <= config.matrix_range[1]
        assert config.inplane_spacing_range_mm[0] <= scan.spacing[0] == scan.spacing[1] \
            <= config.inplane_spacing_range_mm[1]
        assert config.slice_thickness_range_mm[0] <= scan.spacing[2] <= config.slice_thickness_range_mm[1]
        assert config.slices_range[0] <= slices <= config.slices_range[1]
        assert len(scan.times_min) == config.post_phases and np.all(np.diff(scan.times_min) > 0)
        vendors.add(scan.vendor)
        fat_sat.add(scan.fat_sat)
    assert vendors == {"GE", "Siemens", "Philips"} and fat_sat == {True, False}


def test_shape_and_spacing_overrides_are_honoured():
    case = generate_case(5, shape=(40, 36, 12), spacing=(6.0, 6.0, 8.0))
    assert case.pre.GetSize() == (40, 36, 12)
    assert np.allclose(case.pre.GetSpacing(), (6.0, 6.0, 8.0))


def test_kinetic_curves_are_classified_like_bi_rads():
    times = [1.5, 3.0, 4.5]
    washout = classify_curve(Kinetics(1.5, 4.0, 0.25).curve(times))
    persistent = classify_curve(Kinetics(0.3, 0.4, -0.1).curve(times))
    assert washout == {"initial_phase": "fast", "delayed_phase": "washout"}
    assert persistent == {"initial_phase": "slow", "delayed_phase": "persistent"}
    assert classify_curve(Kinetics(0.8, 3.0, 0.0).curve(times))["delayed_phase"] == "plateau"


def test_bad_arguments_raise_input_errors(tmp_path):
    with pytest.raises(InputError):
        generate_case(-1, shape=SMALL)
    with pytest.raises(InputError):
        generate_case(1, PhantomConfig(lesion_count_range=(3, 1)), shape=SMALL)
    with pytest.raises(InputError):
        write_cases(tmp_path / "out", 0, 1)
    assert not (tmp_path / "out").exists()


def test_cli_writes_case_folders_dicom_and_gallery(tmp_path):
    out, gallery = tmp_path / "phantom", tmp_path / "gallery.png"
    code = main(["--progress", "none", "phantom", "--out", str(out), "--cases", "2", "--seed", "7", "--dicom",
                 "--shape", "48", "48", "16", "--gallery", str(gallery)])
    assert code == 0
    assert sorted(path.name for path in out.iterdir()) == ["case_000", "case_001"]
    for folder in out.iterdir():
        names = {path.name for path in folder.iterdir()}
        assert {"pre.nii.gz", "post.nii.gz", "post2.nii.gz", "post3.nii.gz", "breast.nii.gz", "lesions.nii.gz",
                "case.json", "dicom"} <= names
        assert any(path.is_file() for path in (folder / "dicom").rglob("*"))
        info = json.loads((folder / "case.json").read_text())
        assert info["shape"] == [48, 48, 16] and info["base_seed"] == 7
        assert info["patient_id"] == f"PHANTOM-7-{info['case_index']:03d}"
    again = generate_case(case_seed(7, 1), shape=(48, 48, 16))
    assert np.array_equal(array(read_case(out / "case_001").pre), array(again.pre))
    assert gallery.read_bytes().startswith(b"\x89PNG")
    assert not [path for path in tmp_path.rglob("*partial*")]


def test_adding_cases_keeps_the_earlier_ones(tmp_path):
    one = write_cases(tmp_path / "one", 1, 3, shape=(40, 40, 12))
    two = write_cases(tmp_path / "two", 2, 3, shape=(40, 40, 12))
    first, same = read_case(one[0]), read_case(two[0])
    assert np.array_equal(array(first.pre), array(same.pre))
    assert np.array_equal(array(first.posts[-1]), array(same.posts[-1]))


def test_cli_lesion_count_range(tmp_path):
    def lesion_counts(*extra: str) -> list[int]:
        out = tmp_path / f"phantom{len(extra)}"
        assert main(["--progress", "none", "phantom", "--out", str(out), "--cases", "3", "--seed", "3",
                     "--shape", "96", "96", "24", *extra]) == 0
        return [len(json.loads((folder / "case.json").read_text())["lesions"]) for folder in sorted(out.iterdir())]

    assert sum(lesion_counts()) > 0  # the default range draws lesions for these cases...
    assert lesion_counts("--lesions", "0", "0") == [0, 0, 0]  # ...which the range can rule out


@pytest.mark.parametrize("arguments", [["--cases", "0"], ["--seed", "-1"], ["--shape", "8", "8", "8"],
                                       ["--lesions", "3", "1"]])
def test_cli_bad_arguments_exit_2_and_write_nothing(tmp_path, arguments):
    out = tmp_path / "phantom"
    assert main(["--progress", "none", "phantom", "--out", str(out), *arguments]) == 2
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
