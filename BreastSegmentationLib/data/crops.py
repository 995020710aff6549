"""Where the breast is: the OV crop of seed 000, lesion-slice selection, BAG geometry of seed 001, Table 2 shapes.

Arrays are (z, y, x) in the RAS layout that :mod:`.preprocessing` produces: rows (y) grow towards anterior, so in
a prone breast MRI the breasts lie at high row indices and the chest wall below them. "Top" in the papers (the
image as a radiologist sees it, anterior up) is therefore the high-row end here.

The OV crop (seed 000, section 2.1.2 and Fig. 4): on the BRS-masked slices find the first non-zero row from the
top and from the bottom, take the extremes over all slices of the patient, measure the breast depth at the body
midline (H_max|mid, from the most anterior breast point down to the deepest breast row at the midline), add a safe
distance (16 px, about 1.6 cm, in the paper) and round up to a multiple of 32. The paper keeps the full width
(352 x 352 -> 352 x 192) and applies the largest height of all patients to every patient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError

if TYPE_CHECKING:
    from .preprocessing import PreparedCase

#: Seed 000: "SD was chosen 16 pixels or approximately 1.6 cm"; kept in mm so it scales with the spacing.
DEFAULT_SAFE_DISTANCE_MM = 16.0
#: Seed 000: input sizes are multiples of 32 (five poolings of UNet++).
DEFAULT_MULTIPLE = 32


@dataclass(frozen=True)
class CropBox:
    """A box of a (z, y, x) volume as half-open index ranges ``[start, stop)`` per axis."""

    slices: tuple[int, int]
    rows: tuple[int, int]
    cols: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.slices[1] - self.slices[0], self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])

    @property
    def index(self) -> tuple[slice, slice, slice]:
        return slice(*self.slices), slice(*self.rows), slice(*self.cols)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The box of ``array``, whose last three axes are (z, y, x) (leading channel axes are kept)."""
        return array[(..., *self.index)]

    def paste(self, cropped: np.ndarray, full_shape: Sequence[int], fill: float = 0) -> np.ndarray:
        """Put ``cropped`` back at the box's place in a new array of ``full_shape`` filled with ``fill``."""
        full = np.full(tuple(full_shape), fill, dtype=cropped.dtype)
        full[(..., *self.index)] = cropped
        return full

    def to_dict(self) -> dict:
        return {key: list(value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> CropBox:
        return cls(*(tuple(int(v) for v in values[key]) for key in ("slices", "rows", "cols")))


@dataclass(frozen=True)
class BreastExtent:
    """Extremes of a breast mask over all slices (seed 000 Fig. 4d), in voxel indices."""

    slices: tuple[int, int]
    cols: tuple[int, int]
    anterior_row: int
    posterior_row: int
    midline_col: int
    midline_posterior_row: int

    @property
    def midline_depth(self) -> int:
        """H_max|mid in pixels: from the most anterior breast row to the deepest breast row at the midline."""
        return self.anterior_row - self.midline_posterior_row + 1


def breast_extent(breast_zyx: np.ndarray) -> BreastExtent:
    """Measure a breast mask as seed 000 does; an empty mask is refused (there is no breast to crop around).

    Per-slice first non-zero rows from either end, then the extremes over slices, equal the extremes of the mask's
    projection, which is what is computed. The body midline is the middle of the mask's left-right extent; if the
    mask does not reach the midline column in any slice, the deepest row of the whole mask is used instead.
    """
    mask = np.asarray(breast_zyx) > 0
    if not mask.any():
        raise InputError("the breast mask is empty: the OV crop needs a breast region")
    slices, rows, cols = (np.flatnonzero(mask.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    midline_col = int((cols[0] + cols[-1]) // 2)
    midline_rows = np.flatnonzero(mask[:, :, midline_col].any(axis=0))
    midline_posterior_row = int(midline_rows[0]) if midline_rows.size else int(rows[0])
    return BreastExtent(
        slices=(int(slices[0]), int(slices[-1]) + 1),
        cols=(int(cols[0]), int(cols[-1]) + 1),
        anterior_row=int(rows[-1]),
        posterior_row=int(rows[0]),
        midline_col=midline_col,
        midline_posterior_row=midline_posterior_row,
    )


def safe_distance_pixels(row_spacing_mm: float, safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM,
                         safe_distance_px: int | None = None) -> int:
    """The safe distance in rows: ``safe_distance_px`` when given, else ``safe_distance_mm`` over the row spacing."""
    if safe_distance_px is not None:
        return int(safe_distance_px)
    if safe_distance_mm is None:
        raise InputError("give the OV safe distance in mm or in pixels")
    return int(math.ceil(safe_distance_mm / row_spacing_mm - 1e-6))


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def ov_required_height(breast_zyx: np.ndarray, spacing_yx: Sequence[float],
                       safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM,
                       safe_distance_px: int | None = None) -> int:
    """H_max|mid plus the safe distance, in rows, before rounding (the paper's 176 + 16)."""
    extent = breast_extent(breast_zyx)
    return extent.midline_depth + safe_distance_pixels(spacing_yx[0], safe_distance_mm, safe_distance_px)


def ov_crop_box(breast_zyx: np.ndarray, spacing_yx: Sequence[float],
                safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM, safe_distance_px: int | None = None,
                multiple: int = DEFAULT_MULTIPLE, height: int | None = None) -> CropBox:
    """The OV box of one case: full width, the breast's slices, rows from the most anterior breast row down.

    The height is H_max|mid + safe distance rounded up to ``multiple`` unless ``height`` is given (a dataset-wide
    height, see :func:`uniform_ov_boxes`, or the one a model card records). The box is clamped to the image: when
    the height exceeds the rows available it is shifted (or shortened to the image height, which then needs padding).
    """
    extent = breast_extent(breast_zyx)
    _, n_rows, n_cols = np.shape(breast_zyx)
    if height is None:
        height = round_up(ov_required_height(breast_zyx, spacing_yx, safe_distance_mm, safe_distance_px), multiple)
    height = min(int(height), n_rows)
    stop = extent.anterior_row + 1
    start = max(stop - height, 0)
    return CropBox(slices=extent.slices, rows=(start, start + height), cols=(0, n_cols))


def uniform_ov_boxes(breast_masks: Sequence[np.ndarray], spacings_yx: Sequence[Sequence[float]],
                     safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM, safe_distance_px: int | None = None,
                     multiple: int = DEFAULT_MULTIPLE) -> tuple[int, list[CropBox]]:
    """Seed 000: "the maximum height of the selected area across all patients was chosen and applied uniformly".

    Returns that height (rounded up to ``multiple``) and each case's box with it.
    """
    needed = max(ov_required_height(mask, spacing, safe_distance_mm, safe_distance_px)
                 for mask, spacing in zip(breast_masks, spacings_yx, strict=True))
    height = round_up(needed, multiple)
    return height, [ov_crop_box(mask, spacing, height=height) for mask, spacing in zip(breast_masks, spacings_yx)]


def mask_box(*masks_zyx: np.ndarray | None) -> CropBox:
    """The slices and rows that hold any of ``masks_zyx``, at full width (the OV crop keeps the width too)."""
    union = np.logical_or.reduce([np.asarray(mask) > 0 for mask in masks_zyx if mask is not None])
    if not union.any():
        raise InputError("the masks are empty: there is no region to crop to")
    slices, rows = (np.flatnonzero(union.any(axis=axes)) for axes in ((1, 2), (0, 2)))
    return CropBox(slices=(int(slices[0]), int(slices[-1]) + 1), rows=(int(rows[0]), int(rows[-1]) + 1),
                   cols=(0, union.shape[2]))


def lesion_slice_indices(lesions_zyx: np.ndarray) -> np.ndarray:
    """Indices of the slices that contain lesion (the SLS approach of seed 000)."""
    return np.flatnonzero(np.asarray(lesions_zyx).any(axis=(1, 2)))


def overlay_map(mask_zyx: np.ndarray) -> np.ndarray:
    """A mask summed over its slices: the breast-region (or lesion) overlay map of seeds 000 and 001."""
    return (np.asarray(mask_zyx) > 0).sum(axis=0)


def bag_geometry(breast_zyx: np.ndarray, spacing_yx: Sequence[float]) -> dict[str, float]:
    """Breast Anatomy Geometry of seed 001 from the patient's breast-region overlay map.

    Nearest Point: distance (rows) from the anterior image edge, the top of the image as displayed and the origin
    of the paper's y coordinate, to the nearest breast boundary point (patient positioning). Breast Size: the
    breast region's extent along y, from that point to the deepest breast row (about 120 px in seed 001).
    """
    rows = np.flatnonzero(overlay_map(breast_zyx).any(axis=1))
    if rows.size == 0:
        raise InputError("the breast mask is empty: Nearest Point and Breast Size need a breast region")
    n_rows = np.shape(breast_zyx)[1]
    nearest_point = int(n_rows - 1 - rows[-1])
    breast_size = int(rows[-1] - rows[0] + 1)
    return {
        "nearest_point_px": nearest_point,
        "breast_size_px": breast_size,
        "nearest_point_mm": nearest_point * float(spacing_yx[0]),
        "breast_size_mm": breast_size * float(spacing_yx[0]),
    }


def table2_shapes(cases: Sequence[PreparedCase], breast_masks: dict[str, np.ndarray] | None = None,
                  safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM, safe_distance_px: int | None = None,
                  multiple: int = DEFAULT_MULTIPLE) -> list[dict]:
    """Per case, the input shape of each approach in seed 000's (x, y, z) order, as its Table 2, and voxel counts.

    BRS masks are the given (predicted) ones or the cases' ground truth; the OV height is uniform over ``cases``.
    WV inputs are padded to a multiple of 32 in-plane by the slice datasets; these are the data shapes before that.
    """
    masks = [(breast_masks or {}).get(case.case_id, case.breast) for case in cases]
    if any(mask is None for mask in masks):
        raise InputError("Table 2 needs a breast mask for every case (ground truth or predicted)")
    height, boxes = uniform_ov_boxes(masks, [case.spacing_yx for case in cases], safe_distance_mm, safe_distance_px,
                                     multiple)
    rows = []
    for case, box in zip(cases, boxes):
        n_slices, n_rows, n_cols = case.shape
        n_lesion_slices = int(lesion_slice_indices(case.lesions).size) if case.lesions is not None else 0
        shapes = {
            "WV without BRS": (n_cols, n_rows, n_slices),
            "WV with BRS": (n_cols, n_rows, n_slices),
            "SLS with BRS": (n_cols, n_rows, n_lesion_slices),
            "OV with BRS": (box.shape[2], box.shape[1], n_lesion_slices),
        }
        rows.append({"case_id": case.case_id, **shapes,
                     **{f"{name} voxels": math.prod(shape) for name, shape in shapes.items()}})
    return rows
