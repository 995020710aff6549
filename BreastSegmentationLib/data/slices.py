"""2-D slice datasets for the four data approaches of seed 000, and for breast region segmentation (BRS).

- WV without BRS: every slice of the whole volume, as acquired.
- WV with BRS: every slice, the breast mask multiplied into the input channels (air, heart and lungs removed).
- SLS with BRS: only the slices that contain lesion.
- OV with BRS: SLS cropped in-plane to the OV box (:mod:`.crops`), one height for the whole dataset.

The BRS mask is the case's ground truth or a given (predicted) one, as in the paper. A dataset holds no copy of the
cases' images: each slice is masked, cropped and padded when it is asked for, so that training on a few hundred
studies needs their prepared arrays once. Slices are padded at the far end (high rows and columns) to a common shape,
a multiple of 32, so the network's five poolings fit and slices of different cases batch together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from enum import Enum

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from ..errors import InputError
from .augmentation import augment, draw_seed
from .crops import (
    DEFAULT_MULTIPLE,
    DEFAULT_SAFE_DISTANCE_MM,
    CropBox,
    lesion_slice_indices,
    ov_crop_box,
    round_up,
    uniform_ov_boxes,
)
from .preprocessing import PreparedCase

TASKS = ("lesion", "breast")
#: How the input slices are held in memory (see :meth:`SliceDataset._input_slices`).
STORAGE_DTYPE = np.float16
#: The largest cross-entropy weight :func:`lesion_weights` gives (spicule tips cut off by resampling stay modest).
MAX_LESION_WEIGHT = 10.0


class Approach(str, Enum):
    """The data approaches of seed 000 (Fig. 3)."""

    WV_NO_BRS = "wv"
    WV_BRS = "wv_brs"
    SLS = "sls"
    OV = "ov"

    @property
    def title(self) -> str:
        return {"wv": "WV without BRS", "wv_brs": "WV with BRS", "sls": "SLS with BRS", "ov": "OV with BRS"}[self.value]

    @property
    def uses_brs(self) -> bool:
        return self is not Approach.WV_NO_BRS

    @property
    def lesion_slices_only(self) -> bool:
        return self in (Approach.SLS, Approach.OV)


def brs_masks_for(cases: Sequence[PreparedCase], breast_masks: Mapping[str, np.ndarray] | None) -> list[np.ndarray]:
    """Each case's BRS mask: the given (predicted) one when there is one, else its ground truth breast mask."""
    masks = []
    for case in cases:
        mask = (breast_masks or {}).get(case.case_id, case.breast)
        if mask is None:
            raise InputError(f"case {case.case_id} has no breast mask (ground truth or predicted) for BRS masking")
        if np.shape(mask) != case.shape:
            raise InputError(f"case {case.case_id}: the breast mask's shape {np.shape(mask)} differs from the "
                             f"prepared image's {case.shape}")
        masks.append(np.asarray(mask) > 0)
    return masks


def task_label(case: PreparedCase, task: str) -> np.ndarray:
    """The mask a task learns: lesions for lesion segmentation, the breast for BRS."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {TASKS}")
    label = case.lesions if task == "lesion" else case.breast
    if label is None:
        raise InputError(f"case {case.case_id} has no {'lesion' if task == 'lesion' else 'breast'} mask to learn")
    return label


def pad_to(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad the last ``len(shape)`` axes of ``array`` at their far end up to ``shape``."""
    widths = [(0, 0)] * (array.ndim - len(shape)) + [(0, target - size) for size, target in
                                                     zip(array.shape[-len(shape):], shape)]
    return np.pad(array, widths)


def slice_repeats(lesions: np.ndarray, lesion_slice_repeats: int = 1, lesion_visits: int | None = None) -> np.ndarray:
    """How many times each slice of a stack (N, H, W) of lesion masks is listed in a training epoch.

    Slices without lesion are listed once, slices with lesion ``lesion_slice_repeats`` times. With ``lesion_visits``
    each lesion (a connected component across neighbouring slices of the stack) is also listed on at least that many
    slice visits in all, shared evenly by its slices. Listing slices alone favours large lesions: a 4 mm focus lies
    on two or three slices and a 30 mm mass on twenty, so the network sees the focus a tenth as often and learns to
    miss small lesions. nnU-Net and MONAI sample foreground by voxel, which favours them more.
    """
    has_lesion = lesions.any(axis=(1, 2))
    repeats = np.where(has_lesion, lesion_slice_repeats, 1)
    if lesion_visits is not None and has_lesion.any():
        components, _ = ndimage.label(lesions)
        for extent in ndimage.find_objects(components):
            rows = extent[0]
            span = rows.stop - rows.start
            repeats[rows] = np.maximum(repeats[rows], -(-lesion_visits // span))
    return repeats


def lesion_weights(lesions: np.ndarray, voxel_mm3: float, reference_mm3: float) -> np.ndarray:
    """Cross-entropy weight of every voxel of a stack (N, H, W) of lesion masks: sqrt(reference / volume) inside a
    lesion smaller than ``reference_mm3`` (at most :data:`MAX_LESION_WEIGHT`), 1 in larger ones, 0 outside.

    A lesion is a 26-connected component across the stack, as the evaluation counts lesions. Per voxel, a 30 mm3
    focus weighs 130 times less in the loss than a 4 ml mass, so a network can miss every focus at little cost;
    the square root narrows that gap without letting a few voxels dominate. MONAI and nnU-Net weigh voxels alike.
    """
    components, _ = ndimage.label(lesions, structure=np.ones((3, 3, 3), bool))
    volumes_mm3 = np.bincount(components.ravel()) * voxel_mm3
    weights = np.clip(np.sqrt(reference_mm3 / np.maximum(volumes_mm3, 1e-6)), 1.0, MAX_LESION_WEIGHT)
    weights[0] = 0.0
    return weights[components].astype(np.float32)


class SliceDataset(Dataset):
    """Slices {"image": (C, H, W) float32, "label": (1, H, W) float32, "case_id", "slice"} of prepared cases, and
    "lesion_weight" (1, H, W) float32 with ``lesion_weight_mm3`` (see :func:`lesion_weights`)."""

    def __init__(self, cases: Sequence[PreparedCase], approach: Approach | str = Approach.WV_NO_BRS,
                 task: str = "lesion", breast_masks: Mapping[str, np.ndarray] | None = None,
                 transform: Callable | None = None, multiple: int = DEFAULT_MULTIPLE, ov_height: int | None = None,
                 safe_distance_mm: float | None = DEFAULT_SAFE_DISTANCE_MM, safe_distance_px: int | None = None,
                 breast_slices: bool = False, lesion_slice_repeats: int = 1, lesion_visits: int | None = None,
                 lesion_weight_mm3: float | None = None):
        """``ov_height`` fixes the OV crop height (e.g. a model card's); by default it is the largest over ``cases``.

        ``breast_slices`` takes every slice with breast instead of the approach's own choice (BRS approaches only):
        a model that will run on every breast slice at inference then also learns from slices without lesion.
        ``lesion_slice_repeats`` lists each slice with lesion that many times per epoch (oversampling the rare class);
        ``lesion_visits`` lists every lesion's slices often enough that it is seen on that many slices per epoch
        (see :func:`slice_repeats`). ``lesion_weight_mm3`` adds each sample's cross-entropy weights of lesions
        smaller than that (see :func:`lesion_weights`).
        """
        self.approach = Approach(approach)
        if task == "breast" and self.approach is not Approach.WV_NO_BRS:
            raise InputError("breast region segmentation learns from whole unmasked volumes (approach 'wv')")
        if breast_slices and not self.approach.uses_brs:
            raise InputError("choosing the slices with breast needs a BRS approach (wv_brs, sls or ov)")
        self.task, self.transform, self.breast_slices = task, transform, breast_slices
        labels = [task_label(case, task) for case in cases]
        brs_masks = brs_masks_for(cases, breast_masks) if self.approach.uses_brs else [None] * len(cases)
        self.ov_height, self.boxes = None, {}
        if self.approach is Approach.OV:
            self.ov_height, boxes = self._ov_boxes(cases, brs_masks, ov_height, safe_distance_mm, safe_distance_px,
                                                   multiple)
            self.boxes = {case.case_id: box for case, box in zip(cases, boxes)}
        selected = [self._selected_slices(case, label, mask) for case, label, mask in zip(cases, labels, brs_masks)]
        in_plane = [self._crop(case.case_id, case.image[0, 0]).shape for case, chosen in zip(cases, selected)
                    if len(chosen)]
        self.spatial_shape = tuple(round_up(max(sizes), multiple) for sizes in zip(*in_plane)) if in_plane else (0, 0)
        self.case_ids = [case.case_id for case in cases]
        self._images, self._brs_masks = [case.image for case in cases], brs_masks
        self.labels = [pad_to(self._crop(case.case_id, label[chosen][:, None]).astype(np.uint8), self.spatial_shape)
                       for case, label, chosen in zip(cases, labels, selected)]
        self.slice_numbers = selected
        repeats = [slice_repeats(target[:, 0], lesion_slice_repeats, lesion_visits) if task == "lesion"
                   else np.ones(len(target), dtype=int) for target in self.labels]
        self.index = [(case_index, local) for case_index, counts in enumerate(repeats)
                      for local, count in enumerate(counts) for _ in range(count)]
        self.lesion_weights = None if lesion_weight_mm3 is None else [
            self._weights_of_lesion_slices(case, target[:, 0], lesion_weight_mm3)
            for case, target in zip(cases, self.labels)]

    @staticmethod
    def _ov_boxes(cases: Sequence[PreparedCase], brs_masks: Sequence[np.ndarray], ov_height: int | None,
                  safe_distance_mm: float | None, safe_distance_px: int | None,
                  multiple: int) -> tuple[int, list[CropBox]]:
        spacings = [case.spacing_yx for case in cases]
        if ov_height is None:
            return uniform_ov_boxes(brs_masks, spacings, safe_distance_mm, safe_distance_px, multiple)
        return ov_height, [ov_crop_box(mask, spacing, height=ov_height) for mask, spacing in zip(brs_masks, spacings)]

    @staticmethod
    def _weights_of_lesion_slices(case: PreparedCase, stack: np.ndarray, reference_mm3: float) -> dict[int, np.ndarray]:
        """The (1, H, W) weight map of every slice with lesion (float16), by its place in the stack; the other
        slices have no lesion voxel to weigh, and leaving them out keeps the memory small."""
        weights = lesion_weights(stack, float(np.prod(case.grid.spacing)), reference_mm3)
        return {int(local): weights[local, None].astype(STORAGE_DTYPE) for local in np.flatnonzero(stack.any((1, 2)))}

    def _selected_slices(self, case: PreparedCase, label: np.ndarray, brs_mask: np.ndarray | None) -> np.ndarray:
        if self.breast_slices:
            return np.flatnonzero(brs_mask.any(axis=(1, 2)))
        if self.approach.lesion_slices_only:
            return lesion_slice_indices(label)
        return np.arange(case.shape[0])

    def _input_slice(self, case_index: int, number: int) -> np.ndarray:
        """The (C, H, W) float32 input of slice ``number`` of a case: BRS-masked where the approach says so,
        OV-cropped, zero-padded to the dataset's shape. Made when asked for rather than held, so that the dataset
        needs no second copy of the cases' images (training keeps them as float16, :data:`STORAGE_DTYPE`)."""
        case_id = self.case_ids[case_index]
        cropped = self._crop(case_id, self._images[case_index][:, number])
        padded = np.zeros((cropped.shape[0], *self.spatial_shape), dtype=np.float32)
        inside = padded[:, :cropped.shape[-2], :cropped.shape[-1]]
        inside[...] = cropped
        brs_mask = self._brs_masks[case_index]
        if brs_mask is not None:
            inside *= self._crop(case_id, brs_mask[number])
        return padded

    def input_slices(self, case_index: int) -> np.ndarray:
        """(N, C, H, W) float32: the inputs of all the dataset's slices of one case, in slice order."""
        return np.stack([self._input_slice(case_index, number) for number in self.slice_numbers[case_index]])

    def _crop(self, case_id: str, slices: np.ndarray) -> np.ndarray:
        box: CropBox | None = self.boxes.get(case_id)
        return slices if box is None else slices[..., slice(*box.rows), slice(*box.cols)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict:
        case_index, local = self.index[item]
        sample = {
            "image": torch.from_numpy(self._input_slice(case_index, self.slice_numbers[case_index][local])),
            "label": torch.from_numpy(self.labels[case_index][local].astype(np.float32)),
        }
        if self.lesion_weights is not None:
            weight = self.lesion_weights[case_index].get(local)
            sample["lesion_weight"] = (torch.zeros_like(sample["label"]) if weight is None
                                       else torch.from_numpy(weight.astype(np.float32)))
        if self.transform is not None:
            sample = augment(sample, self.transform, draw_seed())
        return {**sample, "case_id": self.case_ids[case_index],
                "slice": int(self.slice_numbers[case_index][local])}
