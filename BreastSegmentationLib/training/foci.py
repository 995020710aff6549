"""Training the 3-D focus classifier of :mod:`..inference.foci` on phantom studies.

    python -m BreastSegmentationLib.training.foci --cases DIR [DIR ...] [--phantom SEED COUNT] [--seed S] --save EX.npz
                                                  [--fat-sat-probability P] [--inputs subtraction pre]
                                                  [--score-input subtraction|enhancement]
    python -m BreastSegmentationLib.training.foci --components MODELS [--phantom-seeds 4000 120] --save VETO.npz
                                                  [--inputs subtraction pre] [--score-input ...]
    python -m BreastSegmentationLib.training.foci --examples EX.npz [EX2.npz ...] [--component-examples VETO.npz]
                                                  [--component-repeats N] [--init CARD] --out DIR [--epochs 16]
                                                  [--score-input ...]

The first collects examples (cubes around blob peaks, labelled) from case folders and drawn phantom studies; the
second collects the veto's examples: the lesions a model folder's lesion network finds in phantom studies, two cubes
each, true when they touch a reference lesion; the third trains the classifier on saved examples (or goes on
training a card's) and writes its model card and weights. ``--inputs`` chooses the volumes the cubes show, one
channel each (:data:`~..inference.foci.CUBE_INPUTS`); a new classifier takes its examples' inputs. ``--score-input``
chooses the volume the blob score is taken of, where peaks are found
(:attr:`~..inference.foci.FocusSearch.score_input`); the same is given to each step, and training writes it into the
card. Each takes a long
while, so they are separate steps, and several collections can run side by side.

Examples: every blob peak of a study (:func:`~..inference.foci.candidate_peaks`, with a lower score floor than
inference uses, so that the classifier also sees the fainter blobs) is a positive when it lies on or next to a
reference lesion and a negative otherwise. A lesion no peak falls on gets its highest-scoring voxel as a positive
(so that every lesion is seen), a lesion with many peaks counts at most ``MAX_PEAKS_PER_LESION`` of them (a large
mass has dozens, a focus one), and ``negatives`` negatives per study are drawn at random. Studies come from case
folders (``pre``, ``post``, ``breast``, ``lesions``) and from phantom studies drawn with mostly small lesions.
The classifier is MONAI's ``Classifier``, trained with a class-weighted binary cross-entropy, random flips of every
axis, in-plane transposes and intensity scaling; validation studies (an eighth) report how many small-lesion peaks
score above the 99th, 99.5th and 99.9th percentiles of the negatives.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..data.phantom import PhantomConfig, case_seed, generate_case
from ..errors import InputError
from ..inference.foci import (
    CUBE_INPUTS,
    SCORE_INPUTS,
    FocusSearch,
    blob_score,
    breast_box,
    breast_scale,
    candidate_peaks,
    channel_cubes,
    check_cube_inputs,
    classify,
    cube_volumes,
    lps_arrays,
    scored_volume,
    search_margin_mm,
    veto_centres,
)
from ..inference.pipeline import (
    ModelSet,
    SegmentationOptions,
    load_models,
    segment_images,
)
from ..io.images import as_float32, reorient
from ..io.outputs import atomic_output_file
from ..models.cards import ModelCard, load_model, save_model

log = logging.getLogger(__name__)

#: The score floor of training candidates (inference keeps peaks above the card's ``min_score``).
TRAINING_MIN_SCORE = 4.0
MAX_PEAKS_PER_LESION = 4
#: Phantom studies drawn for training: more and smaller lesions than the default studies.
FOCI_PHANTOM = PhantomConfig(lesion_count_range=(2, 5), lesion_diameter_range_mm=(3.0, 9.0))
SMALL_LESION_MM3 = (20.0, 150.0)


@dataclass
class Examples:
    """Cubes (N, C, P, P, P) float16 of the ``inputs`` volumes (:data:`~..inference.foci.CUBE_INPUTS`, one per
    channel), labels (1: lesion), the volume of the lesion of each positive, its study."""

    cubes: np.ndarray
    labels: np.ndarray
    lesion_mm3: np.ndarray
    studies: np.ndarray
    inputs: tuple[str, ...] = ("subtraction",)

    @classmethod
    def concatenate(cls, parts: list[Examples]) -> Examples:
        if len({p.inputs for p in parts}) > 1:
            raise InputError(f"examples of different inputs cannot be trained together: "
                             f"{sorted({', '.join(p.inputs) for p in parts})}")
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("cubes", "labels", "lesion_mm3",
                                                                                "studies")), parts[0].inputs)

    @classmethod
    def empty(cls, patch_voxels: int, inputs: tuple[str, ...] = ("subtraction",)) -> Examples:
        return cls(np.zeros((0, len(inputs)) + (patch_voxels,) * 3, np.float16), np.zeros(0, np.int64), np.zeros(0),
                   np.array([], dtype=str), inputs)

    def subset(self, keep: np.ndarray) -> Examples:
        return Examples(self.cubes[keep], self.labels[keep], self.lesion_mm3[keep], self.studies[keep], self.inputs)


def labelled_peaks(score: np.ndarray, breast: np.ndarray, lesions: np.ndarray, spacing_xyz: tuple[float, ...],
                   search: FocusSearch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(peaks, labels, lesion volumes in mm3) of one study, every reference lesion holding at least one peak."""
    peaks = candidate_peaks(score, breast, spacing_xyz, search, TRAINING_MIN_SCORE)
    labels, count = ndimage.label(lesions > 0, np.ones((3, 3, 3), bool))
    volumes = ndimage.sum(lesions > 0, labels, range(1, count + 1)) * float(np.prod(spacing_xyz))
    hit = ndimage.maximum_filter(labels, size=3)[tuple(peaks.T)] if len(peaks) else np.zeros(0, int)
    missed = [m for m in range(1, count + 1) if not np.any(hit == m)]
    extra = [np.argwhere(labels == m)[np.argmax(score[labels == m])] for m in missed]
    if extra:
        peaks = np.vstack([peaks, np.array(extra)])
        hit = np.append(hit, missed)
    lesion_mm3 = np.where(hit > 0, volumes[np.maximum(hit, 1) - 1] if count else 0.0, 0.0)
    return peaks, (hit > 0).astype(np.int64), lesion_mm3


def example_volumes(subtraction: np.ndarray, pre: np.ndarray | None, inputs: Sequence[str]) -> list[np.ndarray]:
    """The volumes of a classifier's ``inputs`` (:data:`~..inference.foci.CUBE_INPUTS`) of a study known by its
    subtraction and, for inputs other than the subtraction, its pre-contrast phase."""
    check_cube_inputs(inputs)
    if pre is None:
        if set(inputs) != {"subtraction"}:
            raise InputError(f"inputs {', '.join(inputs)} need the study's pre-contrast phase")
        return [subtraction]
    return cube_volumes(pre, pre + subtraction if "post" in inputs else None, subtraction, inputs)


def study_examples(subtraction: np.ndarray, breast: np.ndarray, lesions: np.ndarray,
                   spacing_xyz: tuple[float, ...], search: FocusSearch, negatives: int, rng: np.random.Generator,
                   study: str, pre: np.ndarray | None = None, inputs: Sequence[str] = ("subtraction",)) -> Examples:
    """One study's examples: its positives and up to ``negatives`` random negatives, as cubes of ``inputs``
    (``pre``: the study's pre-contrast phase, for inputs other than the subtraction)."""
    volumes = example_volumes(subtraction, pre, inputs)
    score = blob_score(scored_volume(search, subtraction, pre, dict(zip(inputs, volumes))), breast, spacing_xyz,
                       search)
    peaks, labels, lesion_mm3 = labelled_peaks(score, breast, lesions, spacing_xyz, search)
    negative = np.flatnonzero(labels == 0)
    chosen = np.concatenate([np.flatnonzero(labels == 1),
                             rng.choice(negative, size=min(negatives, len(negative)), replace=False)])
    cubes = study_cubes(volumes, breast, peaks[chosen], spacing_xyz, search)
    return Examples(cubes.astype(np.float16), labels[chosen], lesion_mm3[chosen], np.full(len(chosen), study),
                    tuple(inputs))


def study_cubes(volumes: list[np.ndarray], breast: np.ndarray, centres: np.ndarray, spacing_xyz: tuple[float, ...],
                search: FocusSearch) -> np.ndarray:
    """Cubes of ``volumes`` around ``centres``, each volume normalised over the breast as inference does."""
    scales = [breast_scale(volume, breast) for volume in volumes]
    return channel_cubes(volumes, scales, centres, spacing_xyz, search)


def component_examples(subtraction: np.ndarray, breast: np.ndarray, reference: np.ndarray, probability: np.ndarray,
                       found: np.ndarray, spacing_xyz: tuple[float, ...], search: FocusSearch, study: str,
                       pre: np.ndarray | None = None, inputs: Sequence[str] = ("subtraction",)) -> Examples:
    """The veto's examples of one study: the two cubes of each lesion the lesion network ``found`` (a label map)
    where :func:`~..inference.foci.lesion_veto_scores` centres them, positive when the lesion touches a
    ``reference`` lesion. Blob peaks alone teach the classifier too few of the network's own false positives
    (enhancing gland and vessels that it outlines slice by slice). ``pre`` and ``inputs`` as for
    :func:`study_examples`."""
    channels = example_volumes(subtraction, pre, inputs)
    score = blob_score(scored_volume(search, subtraction, pre, dict(zip(inputs, channels))), breast, spacing_xyz,
                       search)
    labels, centres = veto_centres(found, probability, score)
    if not labels:
        return Examples.empty(search.patch_voxels, tuple(inputs))
    reference_labels, _ = ndimage.label(reference > 0, np.ones((3, 3, 3), bool))
    volumes = np.bincount(reference_labels.ravel()) * float(np.prod(spacing_xyz))
    touched = [np.unique(reference_labels[found == label]) for label in labels]
    lesion_mm3 = np.repeat([float(volumes[t[t > 0]].max(initial=0.0)) for t in touched], 2)
    cubes = study_cubes(channels, breast, centres, spacing_xyz, search)
    return Examples(cubes.astype(np.float16), (lesion_mm3 > 0).astype(np.int64), lesion_mm3,
                    np.full(len(centres), study), tuple(inputs))


def folder_study(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...], np.ndarray]:
    """(subtraction, breast, lesions, spacing, pre) of a case folder."""
    def array(name: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
    image = sitk.ReadImage(str(folder / "pre.nii.gz"))
    pre = sitk.GetArrayFromImage(image).astype(np.float32)
    return (array("post.nii.gz").astype(np.float32) - pre, array("breast.nii.gz") > 0, array("lesions.nii.gz"),
            image.GetSpacing(), pre)


def phantom_studies(seed: int, count: int, config: PhantomConfig = FOCI_PHANTOM) -> Iterator[tuple[str, tuple]]:
    """(name, (subtraction, breast, lesions, spacing, pre)) of phantom studies drawn in memory."""
    for index in range(count):
        case = generate_case(case_seed(seed, index), config)
        pre = sitk.GetArrayFromImage(case.pre).astype(np.float32)
        yield f"phantom-{seed}-{index}", (sitk.GetArrayFromImage(case.posts[0]).astype(np.float32) - pre,
                                          sitk.GetArrayFromImage(case.breast) > 0,
                                          sitk.GetArrayFromImage(case.lesions), case.pre.GetSpacing(), pre)


def network_lesion_studies(models: ModelSet, first_seed: int, count: int,
                           shape: Sequence[int] | None = None) -> Iterator[tuple[str, tuple]]:
    """(name, (subtraction, breast, reference, lesion probability, network lesions, spacing, pre)) of the phantom
    studies of seeds ``first_seed`` .. ``first_seed + count - 1`` (default settings; ``shape`` for tests), segmented
    by ``models`` without foci, as (z, y, x) arrays in LPS order (as :func:`..inference.pipeline.add_foci` searches
    them)."""
    for seed in range(first_seed, first_seed + count):
        case = generate_case(seed, shape=shape)
        result = segment_images(case.pre, case.posts[0], models, SegmentationOptions(foci=False))
        pre, post, breast, reference, probability, found = lps_arrays(
            as_float32(case.pre), result.post_aligned, result.breast, case.lesions, result.probability, result.lesions)
        yield f"phantom-{seed}", (post - pre, breast > 0, reference, probability, found,
                                  reorient(case.pre, "LPS").GetSpacing(), pre)


def collect_component_examples(studies: Iterable[tuple[str, tuple]], search: FocusSearch,
                               inputs: Sequence[str] = ("subtraction",)) -> Examples:
    """The veto's examples (:func:`component_examples`) of every study, on the breast's box, as cubes of
    ``inputs``."""
    parts = []
    for name, (subtraction, breast, reference, probability, found, spacing, pre) in studies:
        if not breast.any():
            continue
        box = breast_box(breast, spacing, search_margin_mm(search))
        parts.append(component_examples(subtraction[box], breast[box], reference[box], probability[box], found[box],
                                        spacing, search, name, None if pre is None else pre[box], inputs))
        log.info("%s: %d network lesions, %d true", name, len(parts[-1].labels) // 2, parts[-1].labels.sum() // 2)
    return Examples.concatenate(parts) if parts else Examples.empty(search.patch_voxels, tuple(inputs))


def collect_examples(studies: Iterable[tuple[str, tuple]], search: FocusSearch, negatives: int = 80,
                     seed: int = 0, inputs: Sequence[str] = ("subtraction",)) -> Examples:
    """The examples of every study, one after the other (the negatives drawn with one generator of ``seed``), as
    cubes of ``inputs``."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, (subtraction, breast, lesions, spacing, pre) in studies:
        parts.append(study_examples(subtraction, breast, lesions, spacing, search, negatives, rng, name, pre,
                                    inputs))
        log.info("%s: %d examples, %d positive", name, len(parts[-1].labels), parts[-1].labels.sum())
    return Examples.concatenate(parts)


def capped_positives(examples: Examples, rng: np.random.Generator) -> Examples:
    """At most ``MAX_PEAKS_PER_LESION`` positives of one lesion (a lesion is known by its study and volume)."""
    keep = np.ones(len(examples.labels), bool)
    positive = examples.labels == 1
    for study, volume in set(zip(examples.studies[positive], examples.lesion_mm3[positive])):
        same = np.flatnonzero(positive & (examples.studies == study) & (examples.lesion_mm3 == volume))
        if len(same) > MAX_PEAKS_PER_LESION:
            keep[rng.choice(same, len(same) - MAX_PEAKS_PER_LESION, replace=False)] = False
    return examples.subset(keep)


def augment(cubes: torch.Tensor) -> torch.Tensor:
    """Random flips of each axis, an in-plane transpose and an intensity scale per cube, and a little noise."""
    for axis in (2, 3, 4):
        if torch.rand(()) < 0.5:
            cubes = cubes.flip(axis)
    if torch.rand(()) < 0.5:
        cubes = cubes.transpose(3, 4)
    scale = torch.empty(cubes.shape[0], 1, 1, 1, 1).uniform_(0.7, 1.4)
    return cubes * scale + 0.05 * torch.randn_like(cubes)


def _share_above(values: np.ndarray, cut: float) -> float | None:
    return round(float((values > cut).mean()), 3) if len(values) else None


def validation_report(network: torch.nn.Module, examples: Examples) -> dict:
    """Share of positives, and of small-lesion positives, above the 99th/99.5th/99.9th percentile of negatives."""
    probability = classify([network.eval()], examples.cubes.astype(np.float32), torch.device("cpu"))
    network.train()
    negatives = probability[examples.labels == 0]
    small = (examples.labels == 1) & (examples.lesion_mm3 >= SMALL_LESION_MM3[0]) & \
        (examples.lesion_mm3 <= SMALL_LESION_MM3[1])
    report = {"small_positives": int(small.sum()), "positives": int((examples.labels == 1).sum())}
    for quantile in (0.99, 0.995, 0.999):
        cut = float(np.quantile(negatives, quantile)) if len(negatives) else 1.0
        report[f"at_negative_q{quantile}"] = {"threshold": round(cut, 4),
                                              "positives": _share_above(probability[examples.labels == 1], cut),
                                              "small": _share_above(probability[small], cut)}
    return report


def veto_report(network: torch.nn.Module, components: Examples) -> dict:
    """Of the validation studies' network lesions (two cubes each, :func:`component_examples`): how many true and
    false ones a veto at 0.3 and 0.5 would drop (both cubes below it)."""
    if not len(components.labels):
        return {}
    best = classify([network.eval()], components.cubes.astype(np.float32),
                    torch.device("cpu")).reshape(-1, 2).max(axis=1)
    network.train()
    true = components.labels[::2] == 1
    report: dict = {"true": int(true.sum()), "false": int((~true).sum())}
    for veto in (0.3, 0.5):
        report[f"dropped_below_{veto}"] = {"true": int((best[true] < veto).sum()),
                                           "false": int((best[~true] < veto).sum())}
    return report


def held_out_studies(studies: np.ndarray, rng: np.random.Generator) -> set:
    """An eighth of the studies, for validation."""
    unique = np.unique(studies)
    return set(rng.choice(unique, size=max(1, len(unique) // 8), replace=False))


def train_classifier(examples: Examples, card: ModelCard, epochs: int, seed: int = 0, batch_size: int = 64,
                     components: Examples | None = None, component_repeats: int = 1,
                     initial: torch.nn.Module | None = None,
                     learning_rate: float = 2e-3) -> tuple[torch.nn.Module, dict]:
    """Train ``card``'s network (or go on training ``initial``) on ``examples`` and ``components`` (each of these
    seen ``component_repeats`` times per epoch), an eighth of the studies of each held out; return it and the
    history. The examples must show the card's inputs."""
    for given in [examples] + ([components] if components is not None else []):
        if list(given.inputs) != list(card.inputs):
            raise InputError(f"the examples show {', '.join(given.inputs)} but the classifier's card takes "
                             f"{', '.join(card.inputs)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    examples = capped_positives(examples, rng)
    held_out = held_out_studies(examples.studies, rng)
    validation = np.array([s in held_out for s in examples.studies])
    train, val = examples.subset(~validation), examples.subset(validation)
    components = components if components is not None else Examples.empty(examples.cubes.shape[-1], examples.inputs)
    held_out_components = held_out_studies(components.studies, rng) if len(components.labels) else set()
    component_validation = np.array([s in held_out_components for s in components.studies], dtype=bool)
    val_components = components.subset(component_validation)
    train = Examples.concatenate([train] + [components.subset(~component_validation)] * component_repeats)
    network = initial if initial is not None else card.build()
    network.train()
    optimiser = torch.optim.AdamW(network.parameters(), learning_rate / 2, weight_decay=1e-4)
    steps = epochs * (len(train.labels) // batch_size + 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, learning_rate, total_steps=steps)
    cubes, labels = torch.from_numpy(train.cubes), torch.from_numpy(train.labels).float()
    # The positives' weight: the square root of the class ratio, between balancing the classes and not.
    pos_weight = torch.tensor(float(((labels == 0).sum() / max(float((labels == 1).sum()), 1.0)) ** 0.5))
    history = []
    for epoch in range(epochs):
        started, total = time.perf_counter(), 0.0
        for batch in torch.randperm(len(labels)).split(batch_size):
            logits = network(augment(cubes[batch].float()))[:, 0]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[batch], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        history.append({"epoch": epoch + 1, "train_loss": round(total / len(labels), 4),
                        "seconds": round(time.perf_counter() - started, 1),
                        "validation": validation_report(network, val),
                        "veto_validation": veto_report(network, val_components)})
        log.info("%s", history[-1])
    return network.eval(), {"history": history, "train_examples": len(train.labels),
                            "validation_studies": sorted(str(s) for s in held_out | held_out_components)}


FOCI_CARD = ModelCard(
    name="foci_classifier", task="foci", architecture="classifier3d", inputs=["subtraction"],
    preprocessing=FocusSearch().to_dict(), threshold=0.999, min_lesion_mm3=10.0,
    notes="3-D classifier of subtraction blobs: adds foci the lesion network misses (inference/foci.py)")


def save_examples(examples: Examples, path: str | Path) -> None:
    """Write the examples as one .npz file, whole or not at all."""
    with atomic_output_file(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, cubes=examples.cubes, labels=examples.labels, lesion_mm3=examples.lesion_mm3,
                 studies=examples.studies, inputs=np.array(examples.inputs))


def load_examples(paths: Iterable[str | Path]) -> Examples:
    """Saved examples (files written before they recorded their inputs hold subtraction cubes)."""
    parts = []
    for path in paths:
        with np.load(path) as saved:
            inputs = tuple(str(name) for name in saved["inputs"]) if "inputs" in saved else ("subtraction",)
            parts.append(Examples(saved["cubes"], saved["labels"], saved["lesion_mm3"], saved["studies"], inputs))
    return Examples.concatenate(parts)


def case_folders(paths: Iterable[str]) -> list[Path]:
    """Case folders named directly, or found as ``case_*`` inside the folders named."""
    return [f for c in paths for f in ([Path(c)] if (Path(c) / "pre.nii.gz").is_file()
                                       else sorted(Path(c).glob("case_*")))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", default=[], help="case folders, or folders of case folders")
    parser.add_argument("--phantom", type=int, nargs=2, metavar=("SEED", "COUNT"),
                        help="also draw COUNT phantom studies with mostly small lesions from SEED")
    parser.add_argument("--fat-sat-probability", type=float, default=FOCI_PHANTOM.fat_sat_probability,
                        help="with --phantom: the share of fat-saturated studies drawn (default "
                             f"{FOCI_PHANTOM.fat_sat_probability}); the others are the harder kind for small lesions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the negatives drawn (default 0)")
    parser.add_argument("--components", metavar="MODELS",
                        help="collect the veto's examples instead: the lesions MODELS (a model folder) find in the "
                             "phantom studies of --phantom-seeds")
    parser.add_argument("--phantom-seeds", type=int, nargs=2, metavar=("FIRST", "COUNT"), default=(4000, 120),
                        help="with --components: phantom seeds FIRST .. FIRST+COUNT-1 (default 4000 120)")
    parser.add_argument("--save", help="collect: write the examples here (.npz)")
    parser.add_argument("--examples", nargs="+", help="train: saved examples files")
    parser.add_argument("--component-examples", nargs="*", default=[],
                        help="train: saved veto examples files (--components)")
    parser.add_argument("--component-repeats", type=int, default=1,
                        help="train: times each veto example is seen per epoch (default 1)")
    parser.add_argument("--inputs", nargs="+", default=FOCI_CARD.inputs, choices=CUBE_INPUTS,
                        help="collect: the volumes the cubes show, one channel each (default: subtraction); a new "
                             "classifier takes the inputs of its examples")
    parser.add_argument("--score-input", choices=SCORE_INPUTS, default=FOCI_CARD.preprocessing["score_input"],
                        help="collect and train: the volume the blob score is taken of (default: subtraction); give "
                             "the same when collecting and when training, which writes it into the card (with "
                             "--init the card keeps its own)")
    parser.add_argument("--init", help="train: go on training the classifier of this card instead of a new one")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="peak of the one-cycle schedule")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--out", help="train: folder for the card and weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    search = replace(FocusSearch.from_dict(FOCI_CARD.preprocessing), score_input=args.score_input)
    if args.save and args.components:
        studies = network_lesion_studies(load_models(args.components, "cpu"), *args.phantom_seeds)
        save_examples(collect_component_examples(studies, search, args.inputs), args.save)
        return 0
    if args.save:
        studies = ((str(f), folder_study(f)) for f in case_folders(args.cases))
        config = replace(FOCI_PHANTOM, fat_sat_probability=args.fat_sat_probability)
        generated = phantom_studies(*args.phantom, config) if args.phantom else iter(())
        save_examples(collect_examples(itertools.chain(studies, generated), search, seed=args.seed,
                                       inputs=args.inputs), args.save)
        return 0
    if args.components or not (args.examples and args.out):
        parser.error("give --save to collect examples (with --components: the veto's), or --examples and --out to "
                     "train")
    examples = load_examples(args.examples)
    card, initial = replace(FOCI_CARD, inputs=list(examples.inputs), preprocessing=search.to_dict()), None
    if args.init:
        initial, card = load_model(args.init)
    components = load_examples(args.component_examples) if args.component_examples else None
    network, report = train_classifier(examples, card, args.epochs, components=components,
                                       component_repeats=args.component_repeats, initial=initial,
                                       learning_rate=args.learning_rate)
    print(save_model(network, replace(card, training={"epochs": args.epochs, **report}), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
