"""The main job: pre + post-contrast volumes -> breast region -> lesions, on the original grid.

Steps (seed 000's pipeline, made fast): post aligned to pre (its grid, then rigid motion undone) -> canonical
orientation and spacing of the breast model -> BRS on every slice -> breast mask post-processing -> the lesion
model's grid -> crop around the breast (the OV idea) -> lesion model on the crop's slices only, inputs masked by the
breast as in training (and, where the card asks, on their mirror images too) -> threshold -> lesion post-processing
(minimum volume, minimum peak probability, nothing outside the breast) -> back to the full grid -> original grid.
Both models are described by their model cards, so user-trained models run through the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..data.crops import CropBox, ov_crop_box
from ..data.preprocessing import (
    Grid,
    PreparedCase,
    PreprocessConfig,
    channel_stack,
    check_inputs,
    prepare_case,
    select_channels,
    study_background,
    uses_excess,
)
from ..errors import InputError
from ..io.images import align_post_to_pre, as_float32, cut_to_mask, reorient_to_ras, resample_like
from ..io.registration import Motion, correct_motion
from ..models.cards import ModelCard, find_cards, load_networks
from ..progress import Progress, silent
from ..resources import bundled_models_dir
from .postprocess import LesionCleaning, breast_mask_on, clean_lesion_mask
from .runtime import describe_device, predict_slices, resolve_device

log = logging.getLogger(__name__)

#: Probabilities are kept to this step: finer steps mean nothing to a threshold or a display, and the noise of the
#: tiny values made lesion_probability.nii.gz some 30 MB and the slowest output to compress.
PROBABILITY_STEP = 1e-3


def rounded_probability(probability: sitk.Image) -> sitk.Image:
    """``probability`` rounded to :data:`PROBABILITY_STEP` (Float32, same grid), on one copy of the volume."""
    array = sitk.GetArrayFromImage(probability).astype(np.float32, copy=False)
    array /= PROBABILITY_STEP
    np.rint(array, out=array)
    array *= PROBABILITY_STEP
    rounded = sitk.GetImageFromArray(array)
    rounded.CopyInformation(probability)
    return rounded


@dataclass
class LoadedModel:
    """The networks of a card (one, or an ensemble's members) in eval mode with the card that describes them."""

    networks: list[torch.nn.Module]
    card: ModelCard
    card_path: Path

    @property
    def preprocessing(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict({k: v for k, v in self.card.preprocessing.items() if k != "crop"})

    @property
    def crop(self) -> dict:
        return dict(self.card.preprocessing.get("crop", {}))


@dataclass
class ModelSet:
    """The breast (BRS) model and the lesion model used together."""

    breast: LoadedModel
    lesion: LoadedModel
    device: torch.device

    def cards(self) -> list[dict]:
        return [{"path": str(m.card_path), **m.card.to_dict()} for m in (self.breast, self.lesion)]


def load_models(folder: str | Path | None = None, device: str = "auto") -> ModelSet:
    """Load one breast and one lesion model from ``folder`` (default: the bundled models) onto ``device``."""
    folder = Path(folder) if folder is not None else bundled_models_dir()
    torch_device = resolve_device(device)
    by_task: dict[str, list[Path]] = {"breast": [], "lesion": []}
    for card_path in find_cards(folder):
        by_task.setdefault(ModelCard.from_json(card_path).task, []).append(card_path)
    loaded = {}
    for task, paths in by_task.items():
        if len(paths) != 1:
            found = ", ".join(p.name for p in paths) or "none"
            raise InputError(f"exactly one {task} model card is needed in the model folder (found: {found})", folder)
        networks, card = load_networks(paths[0], torch_device)
        loaded[task] = LoadedModel([n.to(memory_format=torch.channels_last) for n in networks], card, paths[0])
    return ModelSet(loaded["breast"], loaded["lesion"], torch_device)


@dataclass
class SegmentationOptions:
    """Choices of one run; ``threshold``, ``min_lesion_mm3`` and ``min_lesion_peak`` None mean the lesion model
    card's (a peak at or below the threshold has no effect: :class:`LesionCleaning`); ``motion_correction`` undoes
    rigid motion of the post-contrast phase (:mod:`..io.registration`)."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    min_lesion_peak: float | None = None
    batch_size: int = 8
    motion_correction: bool = True


@dataclass
class Segmentation:
    """Results on the pre-contrast image's grid (that of ``post_aligned``), and how long each stage took.

    The lesion probability is kept on the lesion model's crop (``probability_in_box``) and put onto that grid when
    :attr:`probability` is first asked for: :func:`..study.segment_study` has it done while it draws the figure.
    """

    breast: sitk.Image
    lesions: sitk.Image
    probability_in_box: sitk.Image
    post_aligned: sitk.Image
    seconds: dict[str, float]
    device: str
    threshold: float
    min_lesion_mm3: float
    min_lesion_peak: float | None
    network_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    motion: Motion | None = None

    @cached_property
    def probability(self) -> sitk.Image:
        """The lesion probability on the pre-contrast grid, rounded to :data:`PROBABILITY_STEP`."""
        return rounded_probability(resample_like(self.probability_in_box, self.post_aligned))


def _predict_breast(models: ModelSet, prepared: PreparedCase, options: SegmentationOptions,
                    progress: Progress) -> tuple[sitk.Image, tuple[int, ...]]:
    """Breast probability on the breast model's grid (every slice: the breast may be anywhere), and the
    (C, z, y, x) shape the network ran on."""
    model = models.breast
    channels = select_channels(prepared, model.card.inputs).image
    probability = predict_slices(model.networks, channels, range(channels.shape[1]), models.device,
                                 options.batch_size, progress=progress, stage="breast region",
                                 mirror=model.card.test_time_mirroring)
    return prepared.grid.image(probability), channels.shape


def lesion_input(prepared: PreparedCase, breast: np.ndarray, inputs: list[str],
                 crop: dict) -> tuple[CropBox, np.ndarray]:
    """The OV box around ``breast`` and the lesion network's input in it: (C, z, y, x), masked by the breast.

    As in training, neighbouring-slice inputs see the real slices beyond the breast, and the study's BPE, for the
    "excess" input, is measured on the whole breast. The prepared case is never changed.
    """
    box = ov_crop_box(breast, prepared.spacing_yx, safe_distance_mm=crop.get("safe_distance_mm", 16.0),
                      multiple=crop.get("multiple", 32))
    check_inputs(prepared, inputs)
    background = study_background(prepared, breast) if uses_excess(inputs) else None
    return box, channel_stack(prepared, inputs, box, mask=box.apply(breast), background=background)


def _predict_lesions(models: ModelSet, prepared: PreparedCase, breast: np.ndarray, options: SegmentationOptions,
                     progress: Progress) -> tuple[CropBox, np.ndarray, tuple[int, ...]]:
    """The crop around the breast, the lesion probability inside it (the model's grid) and the (C, z, y, x) shape
    the network ran on."""
    model = models.lesion
    box, cropped = lesion_input(prepared, breast, model.card.inputs, model.crop)
    probability = predict_slices(model.networks, cropped, range(cropped.shape[1]), models.device,
                                 options.batch_size, progress=progress, stage="lesions",
                                 mirror=model.card.test_time_mirroring)
    return box, probability, cropped.shape


def _lesion_labels(in_box: Grid, box: CropBox, probability: np.ndarray, breast: np.ndarray, threshold: float,
                   cleaning: LesionCleaning) -> sitk.Image:
    """Lesions labelled 1..N on the grid of ``box`` (``in_box``): thresholded and cleaned there only, since no lesion
    lies outside it and the box is a fraction of the lesion model's grid."""
    candidates = in_box.image((probability > threshold).astype(np.uint8))
    return clean_lesion_mask(candidates, in_box.image(np.ascontiguousarray(box.apply(breast))), cleaning,
                             probability=in_box.image(probability))


def segment_images(pre: sitk.Image, post: sitk.Image, models: ModelSet, options: SegmentationOptions | None = None,
                   progress: Progress | None = None) -> Segmentation:
    """Segment breast and lesions of one study given as SimpleITK volumes; results lie on ``pre``'s grid.

    Raises :class:`InputError` when the volumes do not overlap or no breast tissue is found.
    """
    options = options or SegmentationOptions()
    progress = progress or silent()
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    progress.update("preparing", 0.0)
    # Cast once here, so that the motion correction and both preparations below find them ready.
    pre_float = as_float32(pre)
    post = align_post_to_pre(pre_float, as_float32(post), "the pre-contrast image", "the post-contrast image")
    post, motion = correct_motion(pre_float, post) if options.motion_correction else (post, None)
    pre_ras, post_ras = reorient_to_ras(pre_float), reorient_to_ras(post)
    seconds["align"] = time.perf_counter() - started

    started = time.perf_counter()
    for_breast = prepare_case(pre_ras, post_ras, config=models.breast.preprocessing, case_id="study")
    breast_probability, breast_input = _predict_breast(models, for_breast, options, progress)
    seconds["breast"] = time.perf_counter() - started

    started = time.perf_counter()
    shared = models.breast.preprocessing.intensity_settings == models.lesion.preprocessing.intensity_settings
    prepared = prepare_case(pre_ras, post_ras, config=models.lesion.preprocessing, case_id="study",
                            statistics=for_breast.statistics if shared else None)
    breast = breast_mask_on(breast_probability, models.breast.card.threshold, prepared.grid.reference())
    breast_array = sitk.GetArrayFromImage(breast)
    if not breast_array.any():
        raise InputError("no breast tissue found: the breast model found no breast in this study "
                         "(is it a breast DCE-MRI, and are pre and post the right series?)")
    box, lesion_probability, lesion_input = _predict_lesions(models, prepared, breast_array, options, progress)
    seconds["lesions"] = time.perf_counter() - started

    started = time.perf_counter()
    card = models.lesion.card
    threshold = card.threshold if options.threshold is None else options.threshold
    min_volume = card.min_lesion_mm3 if options.min_lesion_mm3 is None else options.min_lesion_mm3
    min_peak = card.min_lesion_peak if options.min_lesion_peak is None else options.min_lesion_peak
    # Each result is put back onto the pre-contrast grid from the block that holds it (resample_like fills the rest
    # with 0 without interpolating it).
    in_box = prepared.grid.sub_grid(box)
    lesions = _lesion_labels(in_box, box, lesion_probability, breast_array, threshold,
                             LesionCleaning(min_volume, min_peak_probability=min_peak))
    result = Segmentation(
        breast=resample_like(cut_to_mask(breast, breast_array), pre, is_mask=True),
        lesions=resample_like(lesions, pre, is_mask=True),
        probability_in_box=in_box.image(lesion_probability),
        post_aligned=post,
        seconds=seconds,
        device=describe_device(models.device),
        threshold=threshold,
        min_lesion_mm3=min_volume,
        min_lesion_peak=min_peak,
        network_inputs={"breast": breast_input, "lesion": lesion_input},
        motion=motion,
    )
    seconds["restore"] = time.perf_counter() - started
    progress.update("done", 1.0)
    return result
