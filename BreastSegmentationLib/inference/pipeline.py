"""The main job: pre + post-contrast volumes -> breast region -> lesions, on the original grid.

Steps (seed 000's pipeline, made fast): post aligned to pre (its grid, then rigid motion undone) -> canonical
orientation and spacing of the breast model -> BRS on every slice -> breast mask post-processing -> the lesion
model's grid -> crop around the breast (the OV idea) -> lesion model on the crop's slices only, inputs masked by the
breast as in training (and, where the card asks, on their mirror images too) -> threshold -> lesion post-processing
(minimum volume, minimum peak probability, nothing outside the breast) -> back to the full grid -> original grid ->
where the model folder has a foci classifier, small foci the lesion model missed are added (:mod:`.foci`).
The models are described by their model cards, so user-trained models run through the same code.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
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
    model_grid,
    prepare_case,
    select_channels,
    study_background,
    uses_excess,
)
from ..errors import InputError
from ..io.images import (
    align_post_to_pre,
    as_float32,
    block_grid,
    bounding_box,
    cut_to_mask,
    empty_like,
    paste_into_empty,
    reorient,
    reorient_to_ras,
    resample_like,
    resampled_block,
)
from ..io.registration import Motion, correct_motion
from ..models.cards import ModelCard, find_cards, load_networks
from ..models.registry import ARCHITECTURES
from ..progress import Progress, silent
from ..resources import bundled_models_dir
from .foci import (
    FocusSearch,
    added_foci_rows,
    check_cube_inputs,
    cube_volumes,
    find_foci,
    lps_arrays,
    lps_block_arrays,
    mask_like,
    scored_volume,
    search_region,
)
from .postprocess import LesionCleaning, breast_mask_on, clean_lesion_mask, label_by_size, without_labels
from .runtime import (
    describe_device,
    in_background,
    mixed_precision_dtype,
    precision_name,
    predict_slices,
    resolve_device,
)

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


def rounded_probability_on(probability: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``probability`` (Float32) resampled onto ``reference``'s grid and rounded to :data:`PROBABILITY_STEP`.

    Only the box of the voxels that may round to more than 0, grown by one voxel, is interpolated and rounded: a
    linear interpolation of values that all round to 0 rounds to 0. The network's probability is almost 0 nearly
    everywhere, and on the benchmark study this halves the job's slowest output.
    """
    may_show = sitk.GetArrayViewFromImage(probability) >= PROBABILITY_STEP / 2
    if not may_show.any():
        return empty_like(reference, sitk.sitkFloat32)
    block, start = resampled_block(cut_to_mask(probability, may_show, margin=1), reference)
    return paste_into_empty(rounded_probability(block), start, reference)


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
    """The breast (BRS) model and the lesion model used together, and optionally the foci classifier."""

    breast: LoadedModel
    lesion: LoadedModel
    device: torch.device
    foci: LoadedModel | None = None

    def cards(self) -> list[dict]:
        return [{"path": str(m.card_path), **m.card.to_dict()} for m in (self.breast, self.lesion, self.foci)
                if m is not None]


def load_models(folder: str | Path | None = None, device: str = "auto") -> ModelSet:
    """Load one breast and one lesion model, and at most one foci classifier, from ``folder`` (default: the bundled
    models) onto ``device``."""
    folder = Path(folder) if folder is not None else bundled_models_dir()
    torch_device = resolve_device(device)
    by_task: dict[str, list[Path]] = {"breast": [], "lesion": [], "foci": []}
    for card_path in find_cards(folder):
        by_task[ModelCard.from_json(card_path).task].append(card_path)
    loaded = {}
    for task, paths in by_task.items():
        if len(paths) > 1 or (not paths and task != "foci"):
            found = ", ".join(p.name for p in paths) or "none"
            needed = "at most one" if task == "foci" else "exactly one"
            raise InputError(f"{needed} {task} model card is needed in the model folder (found: {found})", folder)
        if paths:
            networks, card = load_networks(paths[0], torch_device)
            if task == "foci":
                check_cube_inputs(card.inputs, paths[0])
            if ARCHITECTURES[card.architecture].spatial_dims == 2:  # channels-last pays for 2-D convolutions
                networks = [n.to(memory_format=torch.channels_last) for n in networks]
            loaded[task] = LoadedModel(networks, card, paths[0])
    return ModelSet(loaded["breast"], loaded["lesion"], torch_device, loaded.get("foci"))


@dataclass
class SegmentationOptions:
    """Choices of one run; ``threshold``, ``min_lesion_mm3`` and ``min_lesion_peak`` None mean the lesion model
    card's (a peak at or below the threshold has no effect: :class:`LesionCleaning`); ``motion_correction`` undoes
    rigid motion of the post-contrast phase (:mod:`..io.registration`); ``foci`` runs the model folder's foci
    classifier where it has one (:mod:`.foci`); ``mixed_precision`` runs the breast and lesion networks under
    autocast where it pays (:func:`.runtime.mixed_precision_dtype`: float16 on a GPU, bfloat16 on a CPU with native
    bf16, else float32 as without it)."""

    threshold: float | None = None
    min_lesion_mm3: float | None = None
    min_lesion_peak: float | None = None
    batch_size: int = 8
    motion_correction: bool = True
    foci: bool = True
    mixed_precision: bool = False


@dataclass
class Segmentation:
    """Results on the pre-contrast image's grid (that of ``post_aligned``), and how long each stage took.

    The lesion probability is kept on the lesion model's crop (``probability_in_box``), and put onto that grid on a
    thread of its own (``probability_job``) while the foci are searched: :attr:`probability` waits for it.
    ``foci`` lists the foci the classifier added (:func:`.foci.added_foci_rows`); ``network_precision`` is the type
    the breast and lesion networks ran in ('float32', 'bfloat16' or 'float16').
    """

    breast: sitk.Image
    lesions: sitk.Image
    probability_in_box: sitk.Image
    probability_job: Future
    post_aligned: sitk.Image
    seconds: dict[str, float]
    device: str
    network_precision: str
    threshold: float
    min_lesion_mm3: float
    min_lesion_peak: float | None
    network_inputs: dict[str, tuple[int, ...]] = field(default_factory=dict)
    motion: Motion | None = None
    foci: list[dict] = field(default_factory=list)

    @property
    def probability(self) -> sitk.Image:
        """The lesion probability on the pre-contrast grid, rounded to :data:`PROBABILITY_STEP`."""
        return self.probability_job.result()


def autocast_type(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """The breast and lesion networks' autocast type (None: float32). The foci classifier always runs in float32: it
    is a small share of the work (about 0.2 s of a study here), and its probabilities stay those its threshold of
    0.99 was chosen on. Asking for mixed precision where it does not pay (a CPU without native bfloat16) runs
    float32 and says so."""
    precision = mixed_precision_dtype(device, mixed_precision)
    if mixed_precision and precision is None:
        log.warning("mixed precision needs a CUDA GPU or a CPU with native bfloat16 instructions; running in float32")
    return precision


def _predict_breast(models: ModelSet, prepared: PreparedCase, options: SegmentationOptions,
                    precision: torch.dtype | None, progress: Progress) -> tuple[sitk.Image, tuple[int, ...]]:
    """Breast probability on the breast model's grid (every slice: the breast may be anywhere), and the
    (C, z, y, x) shape the network ran on."""
    model = models.breast
    channels = select_channels(prepared, model.card.inputs).image
    probability = predict_slices(model.networks, channels, range(channels.shape[1]), models.device,
                                 options.batch_size, progress=progress, stage="breast region",
                                 mirror=model.card.test_time_mirroring, precision=precision)
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
                     precision: torch.dtype | None, progress: Progress) -> tuple[CropBox, np.ndarray, tuple[int, ...]]:
    """The crop around the breast, the lesion probability inside it (the model's grid) and the (C, z, y, x) shape
    the network ran on."""
    model = models.lesion
    box, cropped = lesion_input(prepared, breast, model.card.inputs, model.crop)
    probability = predict_slices(model.networks, cropped, range(cropped.shape[1]), models.device,
                                 options.batch_size, progress=progress, stage="lesions",
                                 mirror=model.card.test_time_mirroring, precision=precision)
    return box, probability, cropped.shape


def lesion_labels(grid: Grid, box: CropBox, probability: np.ndarray, breast: np.ndarray, threshold: float,
                  cleaning: LesionCleaning) -> sitk.Image | None:
    """Lesions labelled 1..N on the grid of the block of ``grid`` that holds every voxel of ``probability`` (the
    lesion model's, in ``box``) above ``threshold``; None when none is. Thresholded and cleaned there only: no lesion
    lies outside it, and on the benchmark study it holds a third of the box's voxels."""
    above = probability > threshold
    if not above.any():
        return None
    inside = bounding_box(above)
    lesion_box = CropBox(*((start + part.start, start + part.stop)
                           for start, part in zip((box.slices[0], box.rows[0], box.cols[0]), inside)))
    in_box = grid.sub_grid(lesion_box)
    return clean_lesion_mask(in_box.image(above[inside].astype(np.uint8)),
                             in_box.image(np.ascontiguousarray(lesion_box.apply(breast))), cleaning,
                             probability=in_box.image(np.ascontiguousarray(probability[inside])))


def segment_images(pre: sitk.Image, post: sitk.Image, models: ModelSet, options: SegmentationOptions | None = None,
                   progress: Progress | None = None) -> Segmentation:
    """Segment breast and lesions of one study given as SimpleITK volumes; results lie on ``pre``'s grid.

    Raises :class:`InputError` when the volumes do not overlap or no breast tissue is found.
    """
    options = options or SegmentationOptions()
    progress = progress or silent()
    precision = autocast_type(models.device, options.mixed_precision)
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
    for_breast = prepare_case(pre_ras, post_ras, config=models.breast.preprocessing, case_id="")
    breast_probability, breast_input = _predict_breast(models, for_breast, options, precision, progress)
    seconds["breast"] = time.perf_counter() - started

    started = time.perf_counter()
    # The breast mask goes onto the lesion model's grid on a thread while that model's inputs are prepared (both
    # mostly leave Python's GIL).
    lesion_grid = model_grid(pre_ras, models.lesion.preprocessing)
    breast_job = in_background(breast_mask_on, breast_probability, models.breast.card.threshold,
                               lesion_grid.reference())
    shared = models.breast.preprocessing.intensity_settings == models.lesion.preprocessing.intensity_settings
    prepared = prepare_case(pre_ras, post_ras, config=models.lesion.preprocessing, case_id="",
                            statistics=for_breast.statistics if shared else None)
    breast = breast_job.result()
    breast_array = sitk.GetArrayFromImage(breast)
    if not breast_array.any():
        raise InputError("no breast tissue found: the breast model found no breast in this study "
                         "(is it a breast DCE-MRI, and are pre and post the right series?)")
    box, lesion_probability, lesion_input = _predict_lesions(models, prepared, breast_array, options, precision,
                                                              progress)
    seconds["lesions"] = time.perf_counter() - started

    started = time.perf_counter()
    card = models.lesion.card
    threshold = card.threshold if options.threshold is None else options.threshold
    min_volume = card.min_lesion_mm3 if options.min_lesion_mm3 is None else options.min_lesion_mm3
    min_peak = card.min_lesion_peak if options.min_lesion_peak is None else options.min_lesion_peak
    # Each result is put back onto the pre-contrast grid from the block that holds it (resample_like fills the rest
    # with 0 without interpolating it).
    lesions = lesion_labels(prepared.grid, box, lesion_probability, breast_array, threshold,
                            LesionCleaning(min_volume, min_peak_probability=min_peak))
    breast_on_pre = resample_like(cut_to_mask(breast, breast_array), pre, is_mask=True)
    lesions = empty_like(pre, sitk.sitkUInt16) if lesions is None else resample_like(lesions, pre, is_mask=True)
    seconds["restore"] = time.perf_counter() - started
    network_inputs = {"breast": breast_input, "lesion": lesion_input}
    probability_in_box = prepared.grid.sub_grid(box).image(lesion_probability)
    probability_job = in_background(rounded_probability_on, probability_in_box, post)
    foci: list[dict] = []
    if models.foci is not None and options.foci:
        started = time.perf_counter()
        progress.update("foci", 0.0)
        lesions, foci, network_inputs["foci"] = add_foci(pre_float, post, breast_on_pre, lesions, models.foci,
                                                         models.device, min_volume, probability_in_box)
        seconds["foci"] = time.perf_counter() - started
    result = Segmentation(
        breast=breast_on_pre,
        lesions=lesions,
        probability_in_box=probability_in_box,
        probability_job=probability_job,
        post_aligned=post,
        seconds=seconds,
        device=describe_device(models.device),
        network_precision=precision_name(precision),
        threshold=threshold,
        min_lesion_mm3=min_volume,
        min_lesion_peak=min_peak,
        network_inputs=network_inputs,
        motion=motion,
        foci=foci,
    )
    progress.update("done", 1.0)
    return result


def probability_at_lesions(probability: sitk.Image, reference: sitk.Image, lesions: sitk.Image) -> sitk.Image:
    """``probability`` on ``reference``'s grid inside the bounding box of the non-empty label map ``lesions`` (same
    grid), 0 elsewhere: the veto reads it at lesion voxels only, and interpolating the whole search block took about
    half a second."""
    box = bounding_box(sitk.GetArrayViewFromImage(lesions))[::-1]  # (x, y, z), the image's index order
    block = block_grid(reference, [b.stop - b.start for b in box], [b.start for b in box])
    return resample_like(resample_like(probability, block), reference)


def add_foci(pre: sitk.Image, post: sitk.Image, breast: sitk.Image, lesions: sitk.Image, model: LoadedModel,
             device: torch.device, min_volume_mm3: float,
             probability: sitk.Image | None = None) -> tuple[sitk.Image, list[dict], tuple[int, ...]]:
    """``lesions`` (labels on ``pre``'s grid) with the foci of at least ``min_volume_mm3`` that the classifier finds
    added and, given the lesion ``probability`` (any grid) and a card that vetoes, the lesions it rejects removed,
    relabelled 1..N by decreasing volume; one row per focus added (:func:`added_foci_rows`); the shape of the
    classifier's input. The search reads the block of the volumes it needs only (views of their voxels where
    :func:`lps_block_arrays` can)."""
    search = FocusSearch.from_dict(model.card.preprocessing)
    region = search_region(breast, search, lesions)
    if region is None:
        return lesions, [], (0, len(model.card.inputs)) + (search.patch_voxels,) * 3
    grid, lesion_crop = block_grid(pre, *region), sitk.RegionOfInterest(lesions, *region)
    pre_a, post_a, breast_a = lps_block_arrays((pre, post, breast), *region)
    (lesion_a,) = lps_arrays(lesion_crop)
    lps_grid = reorient(grid, "LPS")  # its spacing is the arrays' (a sagittal study's axes are permuted)
    probability_a = None
    if probability is not None and search.veto_below is not None and lesion_a.any():
        (probability_a,) = lps_arrays(probability_at_lesions(probability, grid, lesion_crop))
    subtraction = post_a - pre_a
    channels = cube_volumes(pre_a, post_a, subtraction, model.card.inputs)
    scored = scored_volume(search, subtraction, pre_a, dict(zip(model.card.inputs, channels)))
    foci = find_foci(scored, breast_a > 0, lesion_a, lps_grid.GetSpacing(), model.networks, device, search,
                     model.card.threshold, min_volume_mm3 / float(np.prod(pre.GetSpacing())), probability_a, channels,
                     model.card.test_time_mirroring)
    if not foci.mask.any() and not foci.vetoed:
        return lesions, [], foci.network_input
    # Every lesion lies in the block (search_region), so the map is rebuilt there and put back on the whole grid:
    # with foci added, labelled again by size; with lesions vetoed only, the others keep their order.
    if foci.mask.any():
        kept = sitk.ChangeLabel(lesion_crop, changeMap={label: 0 for label in foci.vetoed}) if foci.vetoed \
            else lesion_crop
        relabelled = label_by_size(sitk.Or(sitk.Cast(kept > 0, sitk.sitkUInt8), mask_like(foci.mask, grid)))
    else:
        relabelled = without_labels(lesion_crop, foci.vetoed, int(lesion_a.max()))
    return paste_into_empty(relabelled, region[1], lesions), added_foci_rows(foci, lps_grid), foci.network_input
