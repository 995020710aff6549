"""3-D patch dataset with foreground oversampling, as nnU-Net trains (seed 003) and the dynunet3d model needs.

A third of the patches (by default) are centred on a random foreground voxel; the others lie anywhere. MONAI's
``RandCropByPosNegLabeld`` samples the same way but keeps the index of every background voxel, 8 bytes per voxel
and case; like nnU-Net, only a sample of foreground locations is kept here. :func:`enhancing_classes` is the
sampling map of 2-D lesion training that also centres patches on strongly enhancing tissue (hard negatives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augmentation import augment, draw_seed
from .preprocessing import PreparedCase
from .slices import brs_masks_for, pad_to, task_label

#: nnU-Net's oversample_foreground_percent.
FOREGROUND_FRACTION = 1.0 / 3.0
#: nnU-Net keeps at most 10,000 foreground locations per class and case.
MAX_FOREGROUND_LOCATIONS = 10_000
#: Classes of a patch-sampling map (MONAI's ``RandCropByLabelClassesd`` centres each patch on a class drawn by ratio).
BACKGROUND, LESION, ENHANCING = 0, 1, 2
#: Tissue above this quantile of a slice's subtraction (lesions left out) counts as strongly enhancing.
ENHANCING_QUANTILE = 0.97


class PatchDataset(Dataset):
    """Random patches {"image": (C, z, y, x), "label": (1, z, y, x), "case_id", "start"} of prepared cases.

    ``samples_per_case`` patches per case make one epoch. With ``brs`` the breast mask (given or ground truth) is
    multiplied into the input, as for the 2-D approaches with BRS. Volumes smaller than a patch are zero-padded.
    """

    def __init__(self, cases: Sequence[PreparedCase], patch_size: Sequence[int] = (32, 128, 128),
                 task: str = "lesion", samples_per_case: int = 4,
                 foreground_fraction: float = FOREGROUND_FRACTION, brs: bool = False,
                 breast_masks: Mapping[str, np.ndarray] | None = None, transform: Callable | None = None):
        self.patch_size = tuple(int(size) for size in patch_size)
        self.samples_per_case, self.foreground_fraction = samples_per_case, foreground_fraction
        self.transform = transform
        brs_masks = brs_masks_for(cases, breast_masks) if brs else [None] * len(cases)
        self.case_ids = [case.case_id for case in cases]
        self.images, self.labels, self.foreground = [], [], []
        for case, brs_mask in zip(cases, brs_masks):
            shape = tuple(max(size, patch) for size, patch in zip(case.shape, self.patch_size))
            image = case.image if brs_mask is None else case.image * brs_mask[None]
            label = pad_to(task_label(case, task).astype(np.uint8), shape)
            self.images.append(pad_to(image.astype(np.float32, copy=False), shape))
            self.labels.append(label)
            self.foreground.append(_foreground_sample(label, np.random.default_rng(len(self.foreground))))

    def __len__(self) -> int:
        return len(self.images) * self.samples_per_case

    def patch_start(self, case_index: int, rng: np.random.Generator) -> tuple[int, ...]:
        """Corner of a patch: centred on a foreground voxel with probability ``foreground_fraction``, else uniform."""
        shape = np.array(self.labels[case_index].shape)
        patch = np.array(self.patch_size)
        foreground = self.foreground[case_index]
        if foreground.size and rng.random() < self.foreground_fraction:
            centre = np.array(np.unravel_index(foreground[rng.integers(foreground.size)], tuple(shape)))
            start = np.clip(centre - patch // 2, 0, shape - patch)
        else:
            start = rng.integers(0, shape - patch + 1)
        return tuple(int(value) for value in start)

    def __getitem__(self, item: int) -> dict:
        case_index = item % len(self.images)
        seed = draw_seed()
        start = self.patch_start(case_index, np.random.default_rng(seed))
        box = tuple(slice(begin, begin + size) for begin, size in zip(start, self.patch_size))
        sample = {
            "image": torch.from_numpy(np.ascontiguousarray(self.images[case_index][(..., *box)])),
            "label": torch.from_numpy(self.labels[case_index][box][None].astype(np.float32)),
        }
        if self.transform is not None:
            sample = augment(sample, self.transform, seed)
        return {**sample, "case_id": self.case_ids[case_index], "start": start}


def _foreground_sample(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of at most MAX_FOREGROUND_LOCATIONS foreground voxels, chosen at random."""
    locations = np.flatnonzero(label)
    if locations.size > MAX_FOREGROUND_LOCATIONS:
        locations = rng.choice(locations, MAX_FOREGROUND_LOCATIONS, replace=False)
    return locations


def enhancing_classes(subtraction: np.ndarray, label: np.ndarray, quantile: float = ENHANCING_QUANTILE) -> np.ndarray:
    """Patch-sampling classes of one breast-masked slice: lesion, the most enhancing other tissue, the rest.

    Strongly enhancing tissue that is no lesion (parenchymal enhancement, vessels, lymph nodes) is what a lesion
    model mistakes for lesions; random patches seldom centre on it, so training shows it on purpose (model-free
    hard negatives). Tissue is where the masked subtraction is non-zero.
    """
    classes = np.where(label > 0, LESION, BACKGROUND).astype(np.uint8)
    tissue = (subtraction != 0) & (label == 0)
    if tissue.any():
        classes[tissue & (subtraction > np.quantile(subtraction[tissue], quantile))] = ENHANCING
    return classes
