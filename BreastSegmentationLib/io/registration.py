"""Rigid motion correction: the post-contrast phase moved back onto the pre-contrast one.

Patients breathe and settle between the phases. A shift of 1-2 mm leaves bright rims along every fat-gland edge
of the subtraction, and the lesion model reads them as enhancement: on the 12 held-out phantom studies, moving the
post-contrast image by 2 mm raised its false positives from 1.9 to 23 per study. SimpleITK's registration
framework finds the motion: Mattes mutual information, which the contrast uptake barely disturbs, and a rigid
transform, on copies of the volumes binned to about 2 mm, in about a tenth of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from .images import as_float32, otsu_threshold

#: Shifts below this, or below a quarter of the image's coarsest voxel side (the registration's precision follows
#: the voxel size), are left alone: far below a voxel, they would trade a real error for the estimate's own.
MINIMUM_SHIFT_MM = 0.5
#: Estimates beyond these are taken for a failed registration (patients do not move this much and stay in the
#: coil), and are not applied.
MAXIMUM_SHIFT_MM = 20.0
MAXIMUM_ROTATION_DEG = 10.0
#: Voxel size of the binned copies the motion is estimated on.
REGISTRATION_SPACING_MM = 2.0


@dataclass(frozen=True)
class Motion:
    """The rigid motion of the post-contrast phase relative to the pre-contrast one, and whether it was undone."""

    transform: sitk.Transform  #: maps points of the pre-contrast image to where they are in the post-contrast one
    translation_mm: tuple[float, float, float]  #: along the image's physical axes (LPS)
    rotation_deg: tuple[float, float, float]
    applied: bool

    @property
    def shift_mm(self) -> float:
        return float(np.linalg.norm(self.translation_mm))

    def to_dict(self) -> dict:
        return {"translation_mm": [round(v, 2) for v in self.translation_mm],
                "rotation_deg": [round(v, 2) for v in self.rotation_deg],
                "shift_mm": round(self.shift_mm, 2), "corrected": self.applied}


def minimum_shift_mm(image: sitk.Image) -> float:
    """The smallest motion worth undoing in ``image``: :data:`MINIMUM_SHIFT_MM` or a quarter of its coarsest
    voxel side, whichever is larger."""
    return max(MINIMUM_SHIFT_MM, max(image.GetSpacing()) / 4.0)


def _binned(image: sitk.Image) -> sitk.Image:
    """``image`` as Float32, voxels averaged in bins of about :data:`REGISTRATION_SPACING_MM`."""
    factors = [max(1, int(round(REGISTRATION_SPACING_MM / spacing))) for spacing in image.GetSpacing()]
    return sitk.BinShrink(as_float32(image), factors)


def estimate_motion(pre: sitk.Image, post: sitk.Image) -> Motion:
    """The rigid motion from ``pre`` to ``post`` (both on one grid), measured inside the body of ``pre``.

    Repeatable (a fixed sampling seed; threads change only the last digits). ``applied`` says whether it is large
    enough to undo and small enough to trust (:func:`minimum_shift_mm`, :data:`MAXIMUM_SHIFT_MM`,
    :data:`MAXIMUM_ROTATION_DEG`).
    """
    fixed, moving = _binned(pre), _binned(post)
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    registration.SetMetricSamplingPercentage(0.05, 1)
    registration.SetMetricFixedMask(fixed > otsu_threshold(sitk.GetArrayViewFromImage(fixed)))
    # Image gradients by central differences at the sampled points only: ITK's default gradient filters smooth the
    # whole of both volumes first, three quarters of the time. On 10 phantom studies shifted by up to 2.5 mm the
    # error was 0.13 mm on average without them and 0.15 mm with them.
    registration.SetMetricUseFixedImageGradientFilter(False)
    registration.SetMetricUseMovingImageGradientFilter(False)
    registration.SetInterpolator(sitk.sitkLinear)
    registration.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=0.02, numberOfIterations=60,
                                                          relaxationFactor=0.5)
    registration.SetOptimizerScalesFromPhysicalShift()
    # One level: patient motion is a few millimetres, within reach of the 2 mm copies without a coarser start
    # (a second level cost twice the time for the same estimates on phantom studies).
    registration.SetShrinkFactorsPerLevel([1])
    registration.SetSmoothingSigmasPerLevel([0.0])
    transform = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                  sitk.CenteredTransformInitializerFilter.GEOMETRY)
    registration.SetInitialTransform(transform, inPlace=True)  # optimised in place
    registration.Execute(fixed, moving)
    rotation = tuple(float(np.degrees(angle)) for angle in transform.GetParameters()[:3])
    translation = tuple(float(value) for value in transform.GetTranslation())
    found = Motion(transform, translation, rotation, applied=False)
    trusted = found.shift_mm <= MAXIMUM_SHIFT_MM and max(map(abs, rotation)) <= MAXIMUM_ROTATION_DEG
    return replace(found, applied=trusted and found.shift_mm >= minimum_shift_mm(pre))


def correct_motion(pre: sitk.Image, post: sitk.Image) -> tuple[sitk.Image, Motion]:
    """``post`` (on ``pre``'s grid) with its rigid motion undone when :func:`estimate_motion` applies it, else
    ``post`` itself; and the motion found."""
    motion = estimate_motion(pre, post)
    if not motion.applied:
        return post, motion
    corrected = sitk.Resample(post, pre, motion.transform, sitk.sitkLinear, 0.0, post.GetPixelID())
    return corrected, motion
