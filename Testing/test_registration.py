"""Rigid motion correction of the post-contrast phase: found, undone, left alone when small, reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from BreastSegmentationLib.cli import main
from BreastSegmentationLib.data.phantom import PhantomConfig, generate_case
from BreastSegmentationLib.io.registration import correct_motion, estimate_motion, minimum_shift_mm


def shifted(image: sitk.Image, translation_mm: tuple[float, float, float]) -> sitk.Image:
    """``image``'s content moved by ``translation_mm`` (LPS), on the same grid."""
    move = sitk.TranslationTransform(3, tuple(-value for value in translation_mm))
    return sitk.Resample(image, image, move, sitk.sitkLinear, 0.0, image.GetPixelID())


@pytest.fixture(scope="module")
def phantom():
    """A small phantom study without motion of its own, at 2 mm in-plane and 3 mm slices."""
    return generate_case(21, PhantomConfig(motion_probability=0.0), shape=(152, 127, 65))


def test_a_shift_of_the_post_contrast_phase_is_found_and_undone(phantom):
    post = phantom.posts[0]
    moved = shifted(post, (0.0, 3.0, -2.0))
    motion = estimate_motion(phantom.pre, moved)
    assert motion.applied
    assert motion.translation_mm == pytest.approx((0.0, 3.0, -2.0), abs=0.75)  # a quarter of the 3 mm slices
    corrected, same = correct_motion(phantom.pre, moved)
    assert same.translation_mm == pytest.approx(motion.translation_mm, abs=0.05)
    pre = sitk.GetArrayViewFromImage(phantom.pre)
    inside = pre > np.percentile(pre, 60)  # the body

    def error(image: sitk.Image) -> float:
        difference = sitk.GetArrayViewFromImage(image).astype(np.float32) - sitk.GetArrayViewFromImage(post)
        return float(np.abs(difference)[inside].mean())

    moved_back_exactly = shifted(moved, (0.0, -3.0, 2.0))  # what two interpolations alone cost
    assert error(corrected) < 0.5 * error(moved)
    assert error(corrected) < 1.25 * error(moved_back_exactly)


def test_no_motion_leaves_the_post_contrast_phase_untouched(phantom):
    post = phantom.posts[0]
    corrected, motion = correct_motion(phantom.pre, post)
    assert motion.shift_mm < minimum_shift_mm(phantom.pre) and not motion.applied
    assert corrected is post
    assert motion.to_dict()["corrected"] is False


def test_segment_reports_the_motion_and_can_leave_it(tmp_path, phantom):
    pre, post = tmp_path / "pre.nii.gz", tmp_path / "post.nii.gz"
    sitk.WriteImage(phantom.pre, str(pre))
    sitk.WriteImage(shifted(phantom.posts[0], (0.0, 2.5, 0.0)), str(post))
    assert main(["--progress", "none", "segment", "--pre", str(pre), "--post", str(post), "--out",
                 str(tmp_path / "on")]) == 0
    motion = json.loads((tmp_path / "on" / "summary.json").read_text())["motion"]
    assert motion["corrected"] and motion["translation_mm"][1] == pytest.approx(2.5, abs=0.6)
    assert main(["--progress", "none", "segment", "--pre", str(pre), "--post", str(post), "--out",
                 str(tmp_path / "off"), "--no-motion-correction"]) == 0
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["motion"] is None
