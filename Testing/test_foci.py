"""The 3-D foci search (inference/foci.py), its training examples (training/foci.py) and its place in the pipeline.

The volumes are small and drawn here: a noisy breast slab with one bright ball (a focus) and one bright straight
tube (a vessel), on a grid of anisotropic spacing, so what each step finds is known.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from BreastSegmentationLib.errors import InputError
from BreastSegmentationLib.inference.foci import (
    FocusSearch,
    blob_score,
    breast_scale,
    candidate_peaks,
    classify,
    find_foci,
    focus_region,
    lps_arrays,
    lps_block_arrays,
    mask_like,
    patches,
    veto_centres,
    without_small_regions,
)
from BreastSegmentationLib.inference.pipeline import add_foci, load_models
from BreastSegmentationLib.io.images import block_grid, reorient
from BreastSegmentationLib.models.cards import ModelCard, save_model
from BreastSegmentationLib.training.foci import (
    FOCI_CARD,
    MAX_PEAKS_PER_LESION,
    Examples,
    capped_positives,
    collect_component_examples,
    component_examples,
    labelled_peaks,
    study_examples,
    train_classifier,
)

SPACING = (0.8, 0.8, 2.0)  # x, y, z in mm
SHAPE = (24, 64, 64)  # z, y, x
BALL_CENTRE = (12, 32, 20)
SEARCH = FocusSearch()


def distance_mm(points: np.ndarray, centre: tuple[int, int, int]) -> np.ndarray:
    scale = np.array(SPACING[::-1])
    return np.linalg.norm((points - np.array(centre)) * scale, axis=-1)


@pytest.fixture
def study(rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(subtraction, breast, lesions): noise, a 4 mm ball (the lesion) and a tube along y at x = 48."""
    subtraction = rng.normal(0.0, 1.0, size=SHAPE).astype(np.float32)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    ball = distance_mm(grid, BALL_CENTRE) <= 2.5
    tube = np.hypot((grid[..., 2] - 48) * SPACING[0], (grid[..., 0] - 12) * SPACING[2]) <= 1.0
    subtraction[ball] += 20.0
    subtraction[tube] += 20.0
    breast = np.zeros(SHAPE, bool)
    breast[2:-2, 4:-4, 4:-4] = True
    return subtraction, breast, ball.astype(np.uint8)


def spaced_images(*arrays: np.ndarray) -> list[sitk.Image]:
    """The (z, y, x) arrays as images of the test grid's spacing."""
    images = []
    for array in arrays:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(SPACING)
        images.append(image)
    return images


def tiny_classifier(logit: float) -> torch.nn.Module:
    """The foci card's network answering ``logit`` for every cube (weights zero, last bias set)."""
    network = FOCI_CARD.build()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1].bias.fill_(logit)
    return network.eval()


def test_the_ball_is_a_candidate_peak_and_every_peak_lies_in_the_breast(study):
    subtraction, breast, _ = study
    score = blob_score(subtraction, breast, SPACING, SEARCH)
    peaks = candidate_peaks(score, breast, SPACING, SEARCH)
    assert len(peaks) and breast[tuple(peaks.T)].all()
    assert distance_mm(peaks, BALL_CENTRE).min() <= 2.0
    assert (score[tuple(peaks.T)] > SEARCH.min_score).all()


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.0), (0.7, 0.7, 1.1)])
def test_peaks_are_the_maximum_filters_maxima_above_the_floor(rng, spacing):
    from scipy import ndimage
    score = ndimage.gaussian_filter(rng.normal(size=(20, 40, 50)), 1.0) * 40.0
    breast = np.zeros(score.shape, bool)
    breast[:, 5:, :-3] = True  # the breast reaches three sides of the volume: peaks on its edges count
    size = [max(3, int(round(SEARCH.peak_window_mm / s)) | 1) for s in spacing[::-1]]
    expected = np.argwhere((score == ndimage.maximum_filter(score, size=size, mode="nearest"))
                           & (score > SEARCH.min_score) & breast)
    peaks = candidate_peaks(score, breast, spacing, SEARCH)
    assert len(expected) > 5
    np.testing.assert_array_equal(peaks, expected)
    assert len(candidate_peaks(score, breast, spacing, SEARCH, min_score=score.max())) == 0


def test_the_blob_score_is_close_to_the_exact_difference_of_gaussians(study):
    """The wide Gaussian comes from a coarser grid (here in-plane only: the slices are 2 mm apart); the score moves
    less than it would with that Gaussian one voxel off (0.7 here)."""
    from scipy import ndimage
    subtraction, breast, _ = study
    sigmas = [np.array([sigma] * 3) / np.array(SPACING[::-1]) for sigma in (SEARCH.small_sigma_mm,
                                                                           SEARCH.large_sigma_mm)]
    dog = ndimage.gaussian_filter(subtraction, sigmas[0], truncate=3.0) - ndimage.gaussian_filter(
        subtraction, sigmas[1], truncate=3.0)
    values = dog[breast]
    exact = (dog - np.median(values)) / (np.median(np.abs(values - np.median(values))) * 1.4826)
    score = blob_score(subtraction, breast, SPACING, SEARCH)
    assert score.dtype == np.float32 and score.shape == subtraction.shape
    assert np.abs(score - exact)[breast].max() < 0.3
    assert score[BALL_CENTRE] > 20.0


def test_a_cube_is_sampled_at_1_mm_around_its_peak(study):
    subtraction, breast, _ = study
    cube = patches(subtraction, np.array([BALL_CENTRE]), SPACING, SEARCH, *breast_scale(subtraction, breast))
    assert cube.shape == (1, 1, 32, 32, 32) and cube.dtype == np.float32
    bright = np.argwhere(cube[0, 0] > 0.5 * cube[0, 0].max())
    # A round ball stays round at 1 mm although the slices are 2 mm apart: about 5 mm across on every axis.
    extent = bright.max(axis=0) - bright.min(axis=0) + 1
    assert np.all((extent >= 3) & (extent <= 8)), extent
    assert np.allclose(bright.mean(axis=0), 15.5, atol=1.0)


@pytest.mark.parametrize("spacing", [(0.8, 0.8, 2.0), (0.7, 0.7, 1.1), (1.0, 1.0, 1.5)])
def test_cubes_are_scipys_trilinear_samples_even_at_the_volume_edge(rng, spacing, monkeypatch):
    from scipy import ndimage

    from BreastSegmentationLib.inference import foci
    monkeypatch.setattr(foci, "PATCH_CHUNK", 3)  # the four cubes come in two chunks
    volume = rng.normal(size=(30, 50, 60)).astype(np.float32)
    peaks = np.array([[15, 25, 30], [0, 0, 0], [29, 49, 59], [1, 48, 3]])
    cubes = patches(volume, peaks, spacing, SEARCH, 0.3, 2.0)
    steps = np.arange(32) - 15.5
    for cube, peak in zip(cubes, peaks):
        points = np.meshgrid(*[c + steps / s for c, s in zip(peak, spacing[::-1])], indexing="ij")
        expected = (ndimage.map_coordinates(volume, points, order=1, mode="constant", cval=0.3) - 0.3) / 2.0
        assert np.allclose(cube[0], expected, atol=1e-5)


def test_a_focus_region_holds_the_peak_and_stays_within_its_radius(study):
    subtraction, breast, _ = study
    score = blob_score(subtraction, breast, SPACING, SEARCH)
    box, region = focus_region(score, np.array(BALL_CENTRE), SPACING, SEARCH)
    voxels = np.argwhere(region) + np.array([b.start for b in box])
    assert region[tuple(c - b.start for c, b in zip(BALL_CENTRE, box))]
    assert distance_mm(voxels, BALL_CENTRE).max() <= SEARCH.region_radius_mm


def test_small_regions_are_dropped():
    mask = np.zeros((5, 10, 10), bool)
    mask[1, 1, 1] = True
    mask[2:4, 4:8, 4:8] = True
    kept = without_small_regions(mask, 5)
    assert kept.sum() == 32 and not kept[1, 1, 1]


def test_classify_averages_the_networks_probabilities():
    cubes = np.zeros((3, 1, 32, 32, 32), np.float32)
    probability = classify([tiny_classifier(2.0), tiny_classifier(-2.0)], cubes, torch.device("cpu"))
    assert probability.shape == (3,) and np.allclose(probability, 0.5)
    assert classify([tiny_classifier(2.0)], cubes[:0], torch.device("cpu")).shape == (0,)


class RightOfCentre(torch.nn.Module):
    """Answers from one voxel 4 to the right of the cube's centre: its mirror image reads 4 to the left; with
    ``antisymmetric``, the difference of the two, so a cube and its mirror image get opposite logits."""

    def __init__(self, antisymmetric: bool = False):
        super().__init__()
        self.antisymmetric = antisymmetric

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        logit = cubes[:, :1, 16, 16, 20] - (cubes[:, :1, 16, 16, 11] if self.antisymmetric else 0.0)
        return 5.0 * logit


def test_mirroring_averages_each_cube_with_its_left_right_mirror_image(rng):
    cubes = rng.normal(size=(5, 1, 32, 32, 32)).astype(np.float32)
    plain = classify([RightOfCentre()], cubes, torch.device("cpu"), batch_size=2)
    mirrored = classify([RightOfCentre()], cubes, torch.device("cpu"), mirror=True, batch_size=2)
    sigmoid = 1.0 / (1.0 + np.exp(-5.0 * cubes[:, 0, 16, 16, [20, 11]]))
    np.testing.assert_allclose(plain, sigmoid[:, 0], atol=1e-6)
    np.testing.assert_allclose(mirrored, sigmoid.mean(axis=1), atol=1e-6)


def test_the_foci_cards_mirroring_reaches_candidates_and_vetoes(study):
    subtraction, breast, ball = study
    images = spaced_images(np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8),
                           ball.astype(np.uint16), ball.astype(np.float32))
    card = dataclasses.replace(FOCI_CARD, threshold=0.6, test_time_mirroring=True,
                               preprocessing={**FOCI_CARD.preprocessing, "veto_below": 0.4})
    loaded = type("Loaded", (), {"networks": [RightOfCentre(antisymmetric=True)], "card": card})()
    labelled, added, _ = add_foci(*images[:4], loaded, torch.device("cpu"), 0.0, images[4])
    assert added == [] and (sitk.GetArrayFromImage(labelled) == ball).all()  # every cube at 0.5 with its mirror
    loaded.card = dataclasses.replace(card, test_time_mirroring=False)
    labelled, added, _ = add_foci(*images[:4], loaded, torch.device("cpu"), 0.0, images[4])
    assert added and (sitk.GetArrayFromImage(labelled) != ball).any()


def test_find_foci_adds_what_the_classifier_accepts_away_from_known_lesions(study):
    subtraction, breast, ball = study
    no_lesions = np.zeros(SHAPE, np.uint8)
    found = find_foci(subtraction, breast, no_lesions, SPACING, [tiny_classifier(5.0)], torch.device("cpu"),
                      SEARCH, threshold=0.5)
    assert found.mask[BALL_CENTRE] and not found.mask[~breast].any()
    assert found.network_input[1:] == (1, 32, 32, 32) and found.network_input[0] >= len(found.peaks) >= 1
    assert len(found.probabilities) == len(found.peaks) and (found.probabilities > 0.99).all()
    refused = find_foci(subtraction, breast, no_lesions, SPACING, [tiny_classifier(-5.0)], torch.device("cpu"),
                        SEARCH, threshold=0.5)
    assert not refused.mask.any() and len(refused.peaks) == 0
    known = find_foci(subtraction, breast, ball, SPACING, [tiny_classifier(5.0)], torch.device("cpu"), SEARCH,
                      threshold=0.5)
    assert not known.mask[ball > 0].any()  # a blob on a lesion the network found is not looked at again


def test_masks_go_back_to_a_grid_of_any_orientation():
    reference = sitk.Image(6, 5, 4, sitk.sitkFloat32)
    reference.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS
    reference.SetSpacing(SPACING)
    marked = sitk.Image(reference)
    marked[1, 2, 3] = 1.0
    (lps,) = lps_arrays(marked)
    back = mask_like(lps > 0, reference)
    assert back.GetDirection() == reference.GetDirection() and back.GetOrigin() == reference.GetOrigin()
    assert sitk.GetArrayFromImage(back).sum() == 1 and back[1, 2, 3] == 1


def test_every_reference_lesion_gives_a_positive_example(study, rng):
    subtraction, breast, ball = study
    faint = np.zeros(SHAPE, np.uint8)
    faint[20, 50, 50] = 1  # a one-voxel lesion no peak falls on
    lesions = np.maximum(ball, faint)
    score = blob_score(subtraction, breast, SPACING, SEARCH)
    peaks, labels, volumes = labelled_peaks(score, breast, lesions, SPACING, SEARCH)
    assert labels[np.argwhere(lesions[tuple(peaks.T)] > 0)].all()
    positives = peaks[labels == 1]
    assert any(tuple(p) == (20, 50, 50) for p in positives)
    assert set(np.round(volumes[labels == 1], 3)) == {round(float(ball.sum() * np.prod(SPACING)), 3),
                                                       round(float(np.prod(SPACING)), 3)}
    examples = study_examples(subtraction, breast, lesions, SPACING, SEARCH, negatives=5, rng=rng, study="s")
    assert examples.cubes.shape[1:] == (1, 32, 32, 32) and examples.cubes.dtype == np.float16
    assert (examples.labels == 0).sum() == 5 and (examples.labels == 1).sum() == (labels == 1).sum()


def test_a_lesion_counts_at_most_a_few_peaks():
    count = MAX_PEAKS_PER_LESION + 3
    examples = Examples(np.zeros((count + 2, 1, 2, 2, 2), np.float16), np.array([1] * count + [0, 0]),
                        np.array([50.0] * count + [0.0, 0.0]), np.array(["a"] * (count + 2)))
    capped = capped_positives(examples, np.random.default_rng(0))
    assert (capped.labels == 1).sum() == MAX_PEAKS_PER_LESION and (capped.labels == 0).sum() == 2


def test_training_learns_bright_centres_and_the_card_saves_and_loads(tmp_path, one_thread):
    rng = np.random.default_rng(0)
    cubes = rng.normal(0.0, 0.1, size=(64, 1, 32, 32, 32)).astype(np.float16)
    labels = np.arange(64) % 2
    cubes[labels == 1, :, 13:19, 13:19, 13:19] += np.float16(3.0)
    studies = np.array([f"s{i % 8}" for i in range(64)])
    examples = Examples(cubes, labels, np.where(labels == 1, 1.0 + np.arange(64), 0.0), studies)
    network, report = train_classifier(examples, FOCI_CARD, epochs=3)
    probability = classify([network], cubes.astype(np.float32), torch.device("cpu"))
    assert probability[labels == 1].mean() > probability[labels == 0].mean() + 0.2
    assert len(report["history"]) == 3 and report["validation_studies"]
    card_path = save_model(network, FOCI_CARD, tmp_path / "models")
    assert ModelCard.from_json(card_path).task == "foci"


def test_a_model_folder_may_hold_one_foci_classifier_and_no_more(tmp_path):
    from test_pipeline import write_models  # the constant breast and lesion networks of the pipeline tests
    folder = write_models(tmp_path / "models", 5.0, 5.0)
    assert load_models(folder, "cpu").foci is None
    save_model(tiny_classifier(5.0), FOCI_CARD, tmp_path / "foci")
    for name in ("foci_classifier.json", "foci_classifier.safetensors"):
        (folder / name).write_bytes((tmp_path / "foci" / name).read_bytes())
    models = load_models(folder, "cpu")
    assert models.foci is not None and [c["task"] for c in models.cards()] == ["breast", "lesion", "foci"]
    second = ModelCard.from_json(folder / "foci_classifier.json").to_dict()
    (folder / "second.json").write_text(__import__("json").dumps({**second, "name": "second"}))
    with pytest.raises(InputError, match="at most one foci"):
        load_models(folder, "cpu")


def test_add_foci_relabels_lesions_by_size_on_the_study_grid(study):
    subtraction, breast, ball = study
    images = spaced_images(np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8))
    big = np.zeros(SHAPE, np.uint16)
    big[4:10, 40:56, 8:24] = 1  # a network lesion, far larger than the ball
    lesions = sitk.GetImageFromArray(big)
    lesions.CopyInformation(images[0])
    loaded = type("Loaded", (), {"networks": [tiny_classifier(10.0)], "card": FOCI_CARD})()  # above 0.998
    labelled, added, network_input = add_foci(*images, lesions, loaded, torch.device("cpu"), min_volume_mm3=10.0)
    array = sitk.GetArrayFromImage(labelled)
    assert labelled.GetPixelID() == sitk.sitkUInt16 and labelled.GetSize() == lesions.GetSize()
    assert array[BALL_CENTRE] > 1 and (array[4:10, 40:56, 8:24] == 1).all()
    assert network_input[0] >= len(added) >= 1
    # The ball's centre, in RAS millimetres (the images' grid is LPS-aligned: x and y change sign).
    ball_ras = np.array([-BALL_CENTRE[2] * SPACING[0], -BALL_CENTRE[1] * SPACING[1], BALL_CENTRE[0] * SPACING[2]])
    assert min(np.linalg.norm(np.array(row["peak_ras_mm"]) - ball_ras) for row in added) <= 2.0


def test_add_foci_reads_the_breasts_block_of_a_flipped_grid(study):
    from BreastSegmentationLib.inference.foci import search_region
    subtraction, breast, _ = study
    padding = ((0, 0), (0, 0), (0, 40))  # 32 mm more beyond the breast than the search reaches along x
    images = spaced_images(*(np.pad(array, padding) for array in (np.zeros(SHAPE, np.float32), subtraction,
                                                                  breast.astype(np.uint8), np.zeros(SHAPE, np.uint16))))
    for image in images:
        image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # RAS-aligned rows and columns
    size, index = search_region(images[2], SEARCH)
    assert index == [0, 0, 0] and size[0] < images[2].GetSize()[0] and size[1:] == [64, 24]
    loaded = type("Loaded", (), {"networks": [tiny_classifier(10.0)], "card": FOCI_CARD})()
    labelled, added, _ = add_foci(*images, loaded, torch.device("cpu"), min_volume_mm3=10.0)
    array = sitk.GetArrayFromImage(labelled)
    assert labelled.GetSize() == images[0].GetSize() and array[BALL_CENTRE] > 0 and not array[:, :, 64:].any()
    x, y, z = images[0].TransformIndexToPhysicalPoint(BALL_CENTRE[::-1])
    assert min(np.linalg.norm(np.array(row["peak_ras_mm"]) - [-x, -y, z]) for row in added) <= 2.0
    assert search_region(images[3], SEARCH) is None  # no breast: nothing to read


def test_add_foci_keeps_a_lesion_beyond_the_breasts_search_block(study):
    """The lesion map is rebuilt on the block the search reads, which must then hold every lesion."""
    subtraction, breast, _ = study
    padding = ((0, 0), (0, 0), (0, 40))
    far = np.zeros((SHAPE[0], SHAPE[1], SHAPE[2] + 40), np.uint16)
    far[10:14, 20:40, 96:100] = 1  # 26 mm beyond the breast: outside the block the breast alone asks for
    images = spaced_images(*(np.pad(array, padding)
                             for array in (np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8))))
    lesions = sitk.GetImageFromArray(far)
    lesions.CopyInformation(images[0])
    from BreastSegmentationLib.inference.foci import search_region
    assert search_region(images[2], SEARCH)[0][0] < 96 <= search_region(images[2], SEARCH, lesions)[0][0]
    loaded = type("Loaded", (), {"networks": [tiny_classifier(10.0)], "card": FOCI_CARD})()
    labelled, added, _ = add_foci(*images, lesions, loaded, torch.device("cpu"), min_volume_mm3=10.0)
    array = sitk.GetArrayFromImage(labelled)
    assert added and array[BALL_CENTRE] > 0 and (array[10:14, 20:40, 96:100] > 0).all()
    assert labelled.GetSize() == lesions.GetSize() and labelled.GetOrigin() == lesions.GetOrigin()


def test_add_foci_finds_the_same_foci_on_a_grid_with_permuted_axes(study):
    """A sagittal-like grid: the index axes are the axial grid's in another order, spacing included."""
    subtraction, breast, _ = study
    images = spaced_images(np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8),
                           np.zeros(SHAPE, np.uint16))
    loaded = type("Loaded", (), {"networks": [tiny_classifier(10.0)], "card": FOCI_CARD})()
    axial, axial_rows, _ = add_foci(*images, loaded, torch.device("cpu"), min_volume_mm3=10.0)
    permuted = [sitk.PermuteAxes(image, [2, 0, 1]) for image in images]
    assert permuted[0].GetSpacing() == (SPACING[2], SPACING[0], SPACING[1])
    labelled, rows, _ = add_foci(*permuted, loaded, torch.device("cpu"), min_volume_mm3=10.0)
    back = sitk.PermuteAxes(labelled, [1, 2, 0])
    assert sitk.GetArrayFromImage(axial).any()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(axial))
    assert rows == axial_rows


@pytest.mark.parametrize("logit", [-10.0, 10.0])
def test_each_lesion_gets_the_classifiers_probability_of_its_two_cubes(study, logit):
    from BreastSegmentationLib.inference.foci import lesion_veto_scores, score_candidates
    subtraction, breast, ball = study
    lesions = ball.astype(np.uint16)
    lesions[12, 20:40, 47:50] = 3  # the tube, as the lesion network might take it; label 2 is absent
    probability = (lesions > 0) * np.float32(0.9)
    networks = [tiny_classifier(logit)]
    candidates = score_candidates(subtraction, breast, lesions, SPACING, networks, torch.device("cpu"), SEARCH)
    scores = lesion_veto_scores(candidates, lesions, probability, SPACING, networks, torch.device("cpu"), SEARCH)
    assert sorted(scores) == [1, 3]
    assert np.allclose(list(scores.values()), 1.0 / (1.0 + np.exp(-logit)), atol=1e-6)


def test_veto_centres_are_each_lesions_highest_probability_and_score_voxels(rng):
    labels = np.zeros((12, 30, 40), np.uint16)
    labels[5:8, 20:25, 30:36] = 1
    labels[9:11, 3:6, 4:9] = 3  # label 2 is absent
    labels[9, 28, 38] = 4  # one voxel, over the size limit below only for the others
    probability, score = rng.random(labels.shape), rng.random(labels.shape)
    found, centres = veto_centres(labels, probability, score)
    assert found == [1, 3, 4]
    for label, (at_probability, at_score) in zip(found, centres.reshape(-1, 2, 3)):
        inside = labels == label
        assert probability[tuple(at_probability)] == probability[inside].max()
        assert score[tuple(at_score)] == score[inside].max()
    found, centres = veto_centres(labels, probability, score, max_voxels=1)
    assert found == [4] and centres.tolist() == [[9, 28, 38], [9, 28, 38]]
    found, centres = veto_centres(np.zeros_like(labels), probability, score)
    assert found == [] and centres.shape == (0, 3)


class BrightCentre(torch.nn.Module):
    """Says "lesion" where the cube's central 2 x 2 x 2 voxels are bright (normalised subtraction above 0.5)."""

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        return (cubes[:, :, 15:17, 15:17, 15:17].mean(dim=(2, 3, 4)) - 0.5) * 50.0


def test_a_lesion_is_judged_by_cubes_centred_inside_it(study):
    from BreastSegmentationLib.inference.foci import lesion_veto_scores, score_candidates
    subtraction, breast, ball = study
    lesions = ball.astype(np.uint16)
    lesions[6:9, 10:16, 30:36] = 2  # plain noise: no enhancement anywhere in it
    probability = (lesions > 0) * np.float32(0.5)
    probability[BALL_CENTRE] = probability[7, 12, 33] = 0.9
    networks = [BrightCentre().eval()]
    candidates = score_candidates(subtraction, breast, lesions, SPACING, networks, torch.device("cpu"), SEARCH)
    scores = lesion_veto_scores(candidates, lesions, probability, SPACING, networks, torch.device("cpu"), SEARCH)
    assert scores[1] > 0.99 and scores[2] < 0.01


def test_add_foci_removes_vetoed_lesions_and_counts_their_cubes(study):
    subtraction, breast, ball = study
    images = spaced_images(np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8),
                           ball.astype(np.uint16), ball.astype(np.float32))
    card = dataclasses.replace(FOCI_CARD, preprocessing={**FOCI_CARD.preprocessing, "veto_below": 0.5})
    loaded = type("Loaded", (), {"networks": [tiny_classifier(-10.0)], "card": card})()
    labelled, added, network_input = add_foci(*images[:4], loaded, torch.device("cpu"), 10.0, images[4])
    assert not sitk.GetArrayFromImage(labelled).any() and added == []
    without_probability = add_foci(*images[:4], loaded, torch.device("cpu"), 10.0)
    assert (sitk.GetArrayFromImage(without_probability[0]) == ball).all()
    assert network_input[0] == without_probability[2][0] + 2  # the ball's two cubes


def test_lesions_larger_than_the_veto_limit_are_not_judged_and_stay(study):
    subtraction, breast, ball = study
    lesions = ball.astype(np.uint16)
    lesions[4:20, 44:60, 28:44] = 2  # a mass of 16 x 16 x 16 voxels (5243 mm3) that fills most of the cube
    images = spaced_images(np.zeros(SHAPE, np.float32), subtraction, breast.astype(np.uint8), lesions,
                           (lesions > 0).astype(np.float32))
    voxel_mm3 = float(np.prod(SPACING))
    assert ball.sum() * voxel_mm3 < 1000.0 < (lesions == 2).sum() * voxel_mm3
    card = dataclasses.replace(FOCI_CARD, preprocessing={**FOCI_CARD.preprocessing, "veto_below": 0.5,
                                                         "veto_max_mm3": 1000.0})
    loaded = type("Loaded", (), {"networks": [tiny_classifier(-10.0)], "card": card})()
    labelled, _, network_input = add_foci(*images[:4], loaded, torch.device("cpu"), 10.0, images[4])
    kept = sitk.GetArrayFromImage(labelled)
    assert (kept > 0).sum() == (lesions == 2).sum() and (kept[lesions == 2] == 1).all()  # the ball was vetoed
    without_limit = add_foci(*images[:4], loaded, torch.device("cpu"), 10.0)
    assert network_input[0] == without_limit[2][0] + 2  # the ball's two cubes only


def test_the_pipeline_runs_the_foci_classifier_unless_told_not_to(tmp_path, rng):
    from test_pipeline import study_images, write_models
    from BreastSegmentationLib.inference.pipeline import SegmentationOptions, segment_images
    folder = write_models(tmp_path / "models", 5.0, -5.0)  # breast everywhere, no lesion from the network
    save_model(tiny_classifier(10.0), FOCI_CARD, tmp_path / "foci")
    for name in ("foci_classifier.json", "foci_classifier.safetensors"):
        (folder / name).write_bytes((tmp_path / "foci" / name).read_bytes())
    models = load_models(folder, "cpu")
    pre, post = study_images(rng)
    post = sitk.Add(post, 0.0)
    post[20, 20, 5] = 3000.0  # one bright voxel: a blob for the search
    with_foci = segment_images(pre, post, models)
    assert "foci" in with_foci.seconds and with_foci.network_inputs["foci"][1:] == (1, 32, 32, 32)
    without = segment_images(pre, post, models, SegmentationOptions(foci=False))
    assert "foci" not in without.seconds and "foci" not in without.network_inputs
    assert not sitk.GetArrayFromImage(without.lesions).any()


def test_examples_are_saved_and_read_back(tmp_path):
    from BreastSegmentationLib.training.foci import load_examples, save_examples
    examples = Examples(np.ones((3, 1, 2, 2, 2), np.float16), np.array([1, 0, 0]), np.array([5.0, 0.0, 0.0]),
                        np.array(["a", "a", "b"]))
    save_examples(examples, tmp_path / "one.npz")
    save_examples(examples.subset(np.array([False, True, True])), tmp_path / "two.npz")
    both = load_examples([tmp_path / "one.npz", tmp_path / "two.npz"])
    assert both.cubes.shape == (5, 1, 2, 2, 2) and list(both.labels) == [1, 0, 0, 0, 0]
    assert list(both.studies) == ["a", "a", "b", "a", "b"] and sorted(p.name for p in tmp_path.iterdir()) == [
        "one.npz", "two.npz"]


def test_grown_foci_follow_the_threshold_and_the_score_floor(study):
    from BreastSegmentationLib.inference.foci import grow_foci, score_candidates
    subtraction, breast, _ = study
    candidates = score_candidates(subtraction, breast, np.zeros(SHAPE, np.uint8), SPACING, [tiny_classifier(5.0)],
                                  torch.device("cpu"), SEARCH)
    ball_score = candidates.score[tuple(c - b.start for c, b in zip(BALL_CENTRE, candidates.box))]
    accepted = grow_foci(candidates, SHAPE, SPACING, SEARCH, threshold=0.5)
    assert accepted[BALL_CENTRE]
    assert not grow_foci(candidates, SHAPE, SPACING, SEARCH, threshold=0.999).any()  # sigmoid(5) = 0.993
    assert not grow_foci(candidates, SHAPE, SPACING, SEARCH, threshold=0.5, min_score=10 * ball_score).any()
    assert score_candidates(subtraction, np.zeros(SHAPE, bool), breast, SPACING, [tiny_classifier(5.0)],
                            torch.device("cpu"), SEARCH) is None


def test_the_veto_learns_from_the_cubes_it_will_judge(study):
    from BreastSegmentationLib.inference.foci import lesion_veto_scores, score_candidates
    subtraction, breast, ball = study
    found = ball.astype(np.uint16)
    found[12, 20:40, 47:50] = 3  # the tube, taken for a lesion by the network
    probability = (found > 0) * np.float32(0.5)
    torch.manual_seed(0)
    network = FOCI_CARD.build().eval()
    candidates = score_candidates(subtraction, breast, found, SPACING, [network], torch.device("cpu"), SEARCH)
    scores = lesion_veto_scores(candidates, found, probability, SPACING, [network], torch.device("cpu"), SEARCH)
    examples = collect_component_examples([("s", (subtraction, breast, ball, probability, found, SPACING, None))],
                                          SEARCH)
    assert list(examples.labels) == [1, 1, 0, 0] and list(examples.studies) == ["s"] * 4
    ball_mm3 = float(ball.sum() * np.prod(SPACING))
    assert np.allclose(examples.lesion_mm3, [ball_mm3, ball_mm3, 0.0, 0.0])
    best = classify([network], examples.cubes.astype(np.float32), torch.device("cpu")).reshape(-1, 2).max(axis=1)
    assert np.allclose(best, [scores[1], scores[3]], atol=2e-3)  # the cubes are stored as float16


def test_a_study_without_network_lesions_gives_no_veto_examples(study):
    subtraction, breast, ball = study
    examples = component_examples(subtraction, breast, ball, np.zeros(SHAPE, np.float32), np.zeros(SHAPE, np.uint8),
                                  SPACING, SEARCH, "s")
    assert examples.cubes.shape == (0, 1, 32, 32, 32) and len(examples.labels) == 0


def test_training_goes_on_from_a_network_and_reports_the_veto(one_thread):
    rng = np.random.default_rng(1)
    cubes = rng.normal(0.0, 0.1, size=(32, 1, 32, 32, 32)).astype(np.float16)
    labels = np.arange(32) % 2
    cubes[labels == 1, :, 13:19, 13:19, 13:19] += np.float16(3.0)
    examples = Examples(cubes, labels, np.where(labels == 1, 1.0 + np.arange(32), 0.0),
                        np.array([f"s{i % 8}" for i in range(32)]))
    components = Examples(cubes[:16], np.repeat(labels[:8], 2), np.repeat(np.where(labels[:8], 9.0, 0.0), 2),
                          np.array([f"c{i // 2}" for i in range(16)]))
    initial = FOCI_CARD.build()
    network, report = train_classifier(examples, FOCI_CARD, epochs=1, components=components, component_repeats=3,
                                       initial=initial)
    assert network is initial
    veto = report["history"][0]["veto_validation"]
    assert veto["true"] + veto["false"] == 1  # one of the 8 component studies is held out
    assert report["train_examples"] == 28 + 3 * 14  # 7 of 8 studies of each kind, components thrice


def test_veto_examples_come_from_the_lesions_models_find_in_phantom_studies(tmp_path):
    from test_pipeline import write_models
    from BreastSegmentationLib.training.foci import network_lesion_studies
    models = load_models(write_models(tmp_path / "models", 5.0, 5.0, min_lesion_mm3=0.0), "cpu")
    (name, arrays), = network_lesion_studies(models, 4000, 1, shape=(64, 64, 12))
    subtraction, breast, reference, probability, found, spacing, pre = arrays
    assert name == "phantom-4000" and len(spacing) == 3
    assert all(a.shape == subtraction.shape for a in arrays[:5] + arrays[6:])
    assert breast.any() and found.max() >= 1 and np.all(probability[found > 0] > 0.5)
    examples = collect_component_examples([(name, arrays)], SEARCH)
    assert len(examples.labels) == 2 * len(np.unique(found[found > 0]))
    first = found == np.unique(found[found > 0])[0]
    assert examples.labels[0] == int((reference[first] > 0).any())


def test_the_command_goes_on_training_a_card_with_veto_examples(tmp_path, one_thread):
    from BreastSegmentationLib.models.cards import load_model
    from BreastSegmentationLib.training.foci import main, save_examples
    rng = np.random.default_rng(2)
    cubes = rng.normal(0.0, 0.1, size=(16, 1, 32, 32, 32)).astype(np.float16)
    labels = np.arange(16) % 2
    save_examples(Examples(cubes, labels, labels * 50.0, np.array([f"s{i % 8}" for i in range(16)])),
                  tmp_path / "peaks.npz")
    save_examples(Examples(cubes[:4], np.array([1, 1, 0, 0]), np.array([50.0, 50.0, 0.0, 0.0]),
                           np.array(["c0", "c0", "c1", "c1"])), tmp_path / "veto.npz")
    first = save_model(FOCI_CARD.build(), dataclasses.replace(FOCI_CARD, threshold=0.97), tmp_path / "first")
    assert main(["--examples", str(tmp_path / "peaks.npz"), "--component-examples", str(tmp_path / "veto.npz"),
                 "--component-repeats", "2", "--init", str(first), "--epochs", "1",
                 "--out", str(tmp_path / "second")]) == 0
    network, card = load_model(tmp_path / "second" / "foci_classifier.json")
    initial, _ = load_model(first)
    assert card.threshold == 0.97 and card.training["history"][0]["veto_validation"]["true"] + \
        card.training["history"][0]["veto_validation"]["false"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), initial.state_dict().values()))


def test_a_new_classifier_card_records_the_volume_its_blob_score_was_taken_of(tmp_path, one_thread):
    from BreastSegmentationLib.training.foci import main, save_examples
    rng = np.random.default_rng(3)
    labels = np.arange(16) % 2
    save_examples(Examples(rng.normal(0.0, 0.1, size=(16, 1, 32, 32, 32)).astype(np.float16), labels, labels * 50.0,
                           np.array([f"s{i % 8}" for i in range(16)])), tmp_path / "peaks.npz")
    for score_input in ("enhancement", "subtraction"):
        extra = ["--score-input", score_input] if score_input == "enhancement" else []
        assert main(["--examples", str(tmp_path / "peaks.npz"), "--epochs", "1", "--out", str(tmp_path / score_input),
                     *extra]) == 0
        card = ModelCard.from_json(tmp_path / score_input / "foci_classifier.json")
        assert FocusSearch.from_dict(card.preprocessing).score_input == score_input


def test_the_command_draws_phantom_studies_with_the_fat_saturation_share_asked_for(tmp_path, one_thread):
    from BreastSegmentationLib.data.phantom import case_seed, generate_case
    from BreastSegmentationLib.training.foci import (
        FOCI_PHANTOM,
        collect_examples,
        load_examples,
        main,
        phantom_studies,
    )
    without = dataclasses.replace(FOCI_PHANTOM, fat_sat_probability=0.0)
    assert generate_case(case_seed(4, 0), FOCI_PHANTOM).info["fat_sat"]  # so the option must change this study
    assert main(["--phantom", "4", "1", "--fat-sat-probability", "0", "--save", str(tmp_path / "ex.npz")]) == 0
    saved = load_examples([tmp_path / "ex.npz"])
    expected = collect_examples(phantom_studies(4, 1, without), SEARCH)
    np.testing.assert_array_equal(saved.cubes, expected.cubes)
    np.testing.assert_array_equal(saved.labels, expected.labels)


def test_the_veto_reads_the_probability_resampled_at_the_lesions(rng):
    from BreastSegmentationLib.inference.pipeline import probability_at_lesions
    from BreastSegmentationLib.io.images import resample_like
    reference = sitk.GetImageFromArray(np.zeros(SHAPE, np.float32))
    reference.SetSpacing(SPACING)
    probability = sitk.GetImageFromArray(rng.random((12, 30, 30)).astype(np.float32))
    probability.SetSpacing((1.0, 1.0, 1.5))
    probability.SetOrigin((3.0, 4.0, 2.0))
    lesions = np.zeros(SHAPE, np.uint8)
    lesions[6:9, 10:14, 12:20] = 1
    lesion_image = sitk.GetImageFromArray(lesions)
    lesion_image.CopyInformation(reference)
    near = sitk.GetArrayFromImage(probability_at_lesions(probability, reference, lesion_image))
    whole = sitk.GetArrayFromImage(resample_like(probability, reference))
    assert np.allclose(near[lesions > 0], whole[lesions > 0], atol=1e-6) and whole[lesions > 0].any()
    assert not near[:, :, 21:].any()


class CentreOfChannel(torch.nn.Module):
    """A classifier sure of a cube whose centre voxel in one channel lies 2 below the breast's median or lower (the
    channels are normalised by the breast's median and its spread to the 99th percentile)."""

    def __init__(self, channel: int):
        super().__init__()
        self.channel = channel

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        return -10.0 * (cubes[:, self.channel, 16, 16, 16][:, None] + 2.0)


def pre_contrast(study, rng) -> np.ndarray:
    """A pre-contrast phase of bright fat in which the ball (the lesion) is dark and the tube is not."""
    _, _, ball = study
    pre = rng.normal(100.0, 1.0, size=SHAPE).astype(np.float32)
    pre[ball > 0] = 40.0
    return pre


def test_a_classifier_of_two_inputs_sees_the_pre_contrast_phase_in_its_second_channel(study, rng):
    from BreastSegmentationLib.inference.foci import cube_volumes
    subtraction, breast, ball = study
    pre = pre_contrast(study, rng)
    channels = cube_volumes(pre, pre + subtraction, subtraction, ["subtraction", "pre"])
    found = find_foci(subtraction, breast, np.zeros(SHAPE, np.uint8), SPACING, [CentreOfChannel(1)],
                      torch.device("cpu"), SEARCH, 0.5, channels=channels)
    assert found.network_input[1:] == (2, 32, 32, 32)
    assert found.mask[BALL_CENTRE] and not found.mask[12, :, 46:51].any()  # the ball, dark on pre; not the tube
    assert all(distance_mm(found.peaks, BALL_CENTRE) < 2.0)
    with pytest.raises(InputError, match="excess"):
        cube_volumes(pre, pre + subtraction, subtraction, ["subtraction", "excess"])


def test_relative_enhancement_divides_out_bright_fat_and_floors_dark_tissue():
    from BreastSegmentationLib.inference.foci import block_enhancement
    pre = np.full((4, 6, 6), 1000.0, np.float32)  # bright fat: its 99.5th percentile sets the floor, 200
    pre[0, 0, :2] = (400.0, 50.0)
    subtraction = np.zeros_like(pre)
    subtraction[0, 0, :3] = (200.0, 100.0, 30.0)
    enhancement = block_enhancement(pre, subtraction)
    assert enhancement[0, 0, :3] == pytest.approx((0.5, 0.5, 0.03))  # 200 / 400, 100 / floor 200, 30 / 1000
    assert enhancement.dtype == np.float32 and not enhancement[1:].any()


def test_candidates_can_be_scored_on_the_relative_enhancement(study, rng):
    """Without fat saturation a focus in bright fat enhances little against the fat's noise in the subtraction, but
    much relative to its own dark pre-contrast signal: scored on the relative enhancement, the ball leads."""
    from BreastSegmentationLib.inference.foci import scored_volume
    subtraction, breast, ball = study
    pre = pre_contrast(study, rng)
    scored = scored_volume(FocusSearch(score_input="enhancement"), subtraction, pre)
    assert np.ma.masked_array(scored, ~breast).argmax() == np.ravel_multi_index(
        np.argwhere(ball > 0)[np.argmax(scored[ball > 0])], SHAPE)  # the highest voxel lies in the ball
    assert scored_volume(SEARCH, subtraction, None) is subtraction
    assert scored_volume(FocusSearch(score_input="enhancement"), subtraction, None, {"enhancement": scored}) is scored
    with pytest.raises(InputError, match="pre-contrast phase"):
        scored_volume(FocusSearch(score_input="enhancement"), subtraction, None)
    with pytest.raises(InputError, match="score_input"):
        FocusSearch(score_input="post")


def test_the_pipeline_gives_a_foci_card_the_inputs_it_names_and_refuses_others(tmp_path, rng):
    from test_pipeline import study_images, write_models
    from BreastSegmentationLib.inference.pipeline import segment_images
    folder = write_models(tmp_path / "models", 5.0, -5.0)
    card = dataclasses.replace(FOCI_CARD, inputs=["subtraction", "pre"])
    save_model(card.build(), card, folder)
    models = load_models(folder, "cpu")
    pre, post = study_images(rng)
    post = sitk.Add(post, 0.0)
    post[20, 20, 5] = 3000.0
    assert segment_images(pre, post, models).network_inputs["foci"][1:] == (2, 32, 32, 32)
    saved = ModelCard.from_json(folder / "foci_classifier.json").to_dict()
    saved["inputs"] = ["subtraction", "excess"]
    (folder / "foci_classifier.json").write_text(__import__("json").dumps(saved))
    with pytest.raises(InputError, match="foci classifier's inputs must be among .*; got excess"):
        load_models(folder, "cpu")


def test_examples_of_two_inputs_add_the_pre_contrast_cubes_and_train_only_a_card_of_those_inputs(
        study, rng, tmp_path, one_thread):
    from BreastSegmentationLib.training.foci import collect_examples, load_examples, save_examples
    subtraction, breast, ball = study
    pre = pre_contrast(study, rng)
    studies = [("s", (subtraction, breast, ball, SPACING, pre))]
    alone = collect_examples(studies, SEARCH, negatives=5)
    both = collect_examples(studies, SEARCH, negatives=5, inputs=("subtraction", "pre"))
    assert both.inputs == ("subtraction", "pre") and both.cubes.shape[1] == 2
    np.testing.assert_array_equal(both.cubes[:, :1], alone.cubes)
    centre = both.cubes[:, 1, 16, 16, 16].astype(np.float32)
    assert centre[both.labels == 1].max() < centre[both.labels == 0].min()  # the lesion is dark before contrast
    save_examples(both, tmp_path / "both.npz")
    assert load_examples([tmp_path / "both.npz"]).inputs == ("subtraction", "pre")
    with pytest.raises(InputError, match="the examples show subtraction, pre"):
        train_classifier(both, FOCI_CARD, epochs=1)
    with pytest.raises(InputError, match="different inputs"):
        Examples.concatenate([alone, both])
    with pytest.raises(InputError, match="pre-contrast phase"):
        collect_examples([("s", (subtraction, breast, ball, SPACING, None))], SEARCH, inputs=("subtraction", "pre"))


@pytest.mark.parametrize("code", ["LPS", "RAS", "SPL"])
def test_block_arrays_equal_the_cut_blocks_turned_to_lps_and_their_grid_is_the_cuts(rng, code):
    """Views of the study's voxels on an LPS grid, copies otherwise: the same values either way, and the block's
    grid (no voxels) has the geometry of the cut itself."""
    image = sitk.GetImageFromArray(rng.normal(size=(9, 12, 14)).astype(np.float32))
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-10.0, 20.0, 5.0))
    image = reorient(image, code)
    labels = sitk.Cast(image > 0.5, sitk.sitkUInt8)
    size, index = [5, 4, 3], [2, 1, 3]
    blocks = lps_block_arrays((image, labels), size, index)
    cut = [sitk.RegionOfInterest(volume, size, index) for volume in (image, labels)]
    for block, expected in zip(blocks, lps_arrays(*cut)):
        assert np.array_equal(block, expected) and block.dtype == expected.dtype
    assert blocks[0].flags.writeable == (code != "LPS")  # the views cannot change the study
    grid = block_grid(image, size, index)
    assert (grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()) == (
        cut[0].GetSize(), cut[0].GetOrigin(), cut[0].GetSpacing(), cut[0].GetDirection())
