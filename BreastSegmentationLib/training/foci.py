"""Training the 3-D focus classifier of :mod:`..inference.foci` on phantom studies.

    python -m BreastSegmentationLib.training.foci --cases DIR [DIR ...] [--phantom SEED COUNT] [--seed S] --save EX.npz
    python -m BreastSegmentationLib.training.foci --examples EX.npz [EX2.npz ...] --out DIR [--epochs 16]

The first collects examples (cubes around blob peaks, labelled) from case folders and drawn phantom studies; the
second trains the classifier on saved examples and writes its model card and weights. Both take a long while, so
they are separate steps, and several collections can run side by side.

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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..data.phantom import PhantomConfig, case_seed, generate_case
from ..inference.foci import FocusSearch, blob_score, candidate_peaks, classify, patches, subtraction_scale
from ..io.outputs import atomic_output_file
from ..models.cards import ModelCard, save_model

log = logging.getLogger(__name__)

#: The score floor of training candidates (inference keeps peaks above the card's ``min_score``).
TRAINING_MIN_SCORE = 4.0
MAX_PEAKS_PER_LESION = 4
#: Phantom studies drawn for training: more and smaller lesions than the default studies.
FOCI_PHANTOM = PhantomConfig(lesion_count_range=(2, 5), lesion_diameter_range_mm=(3.0, 9.0))
SMALL_LESION_MM3 = (20.0, 150.0)


@dataclass
class Examples:
    """Cubes (N, 1, P, P, P) float16, labels (1: lesion), the volume of the lesion of each positive, its study."""

    cubes: np.ndarray
    labels: np.ndarray
    lesion_mm3: np.ndarray
    studies: np.ndarray

    @classmethod
    def concatenate(cls, parts: list[Examples]) -> Examples:
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("cubes", "labels", "lesion_mm3",
                                                                                "studies")))

    def subset(self, keep: np.ndarray) -> Examples:
        return Examples(self.cubes[keep], self.labels[keep], self.lesion_mm3[keep], self.studies[keep])


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


def study_examples(subtraction: np.ndarray, breast: np.ndarray, lesions: np.ndarray,
                   spacing_xyz: tuple[float, ...], search: FocusSearch, negatives: int, rng: np.random.Generator,
                   study: str) -> Examples:
    """One study's examples: its positives and up to ``negatives`` random negatives."""
    score = blob_score(subtraction, breast, spacing_xyz, search)
    peaks, labels, lesion_mm3 = labelled_peaks(score, breast, lesions, spacing_xyz, search)
    negative = np.flatnonzero(labels == 0)
    chosen = np.concatenate([np.flatnonzero(labels == 1),
                             rng.choice(negative, size=min(negatives, len(negative)), replace=False)])
    cubes = patches(subtraction, peaks[chosen], spacing_xyz, search, *subtraction_scale(subtraction, breast))
    return Examples(cubes.astype(np.float16), labels[chosen], lesion_mm3[chosen], np.full(len(chosen), study))


def folder_study(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
    """(subtraction, breast, lesions, spacing) of a case folder."""
    def array(name: str) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.ReadImage(str(folder / name)))
    pre = sitk.ReadImage(str(folder / "pre.nii.gz"))
    subtraction = array("post.nii.gz").astype(np.float32) - sitk.GetArrayFromImage(pre).astype(np.float32)
    return subtraction, array("breast.nii.gz") > 0, array("lesions.nii.gz"), pre.GetSpacing()


def phantom_studies(seed: int, count: int, config: PhantomConfig = FOCI_PHANTOM) -> Iterator[tuple[str, tuple]]:
    """(name, (subtraction, breast, lesions, spacing)) of phantom studies drawn in memory."""
    for index in range(count):
        case = generate_case(case_seed(seed, index), config)
        pre = sitk.GetArrayFromImage(case.pre).astype(np.float32)
        yield f"phantom-{seed}-{index}", (sitk.GetArrayFromImage(case.posts[0]).astype(np.float32) - pre,
                                          sitk.GetArrayFromImage(case.breast) > 0,
                                          sitk.GetArrayFromImage(case.lesions), case.pre.GetSpacing())


def collect_examples(studies: Iterable[tuple[str, tuple]], search: FocusSearch, negatives: int = 80,
                     seed: int = 0) -> Examples:
    """The examples of every study, one after the other (the negatives drawn with one generator of ``seed``)."""
    rng = np.random.default_rng(seed)
    parts = []
    for name, (subtraction, breast, lesions, spacing) in studies:
        parts.append(study_examples(subtraction, breast, lesions, spacing, search, negatives, rng, name))
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


def train_classifier(examples: Examples, card: ModelCard, epochs: int, seed: int = 0,
                     batch_size: int = 64) -> tuple[torch.nn.Module, dict]:
    """Train ``card``'s network on ``examples`` (an eighth of the studies held out); return it and the history."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    examples = capped_positives(examples, rng)
    studies = np.unique(examples.studies)
    held_out = set(rng.choice(studies, size=max(1, len(studies) // 8), replace=False))
    validation = np.array([s in held_out for s in examples.studies])
    train, val = examples.subset(~validation), examples.subset(validation)
    network = card.build()
    optimiser = torch.optim.AdamW(network.parameters(), 1e-3, weight_decay=1e-4)
    steps = epochs * (len(train.labels) // batch_size + 1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
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
                        "validation": validation_report(network, val)})
        log.info("%s", history[-1])
    return network.eval(), {"history": history, "train_examples": len(train.labels),
                            "validation_studies": sorted(str(s) for s in held_out)}


FOCI_CARD = ModelCard(
    name="foci_classifier", task="foci", architecture="classifier3d", inputs=["subtraction"],
    preprocessing=FocusSearch().to_dict(), threshold=0.999, min_lesion_mm3=10.0,
    notes="3-D classifier of subtraction blobs: adds foci the lesion network misses (inference/foci.py)")


def save_examples(examples: Examples, path: str | Path) -> None:
    """Write the examples as one .npz file, whole or not at all."""
    with atomic_output_file(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, cubes=examples.cubes, labels=examples.labels, lesion_mm3=examples.lesion_mm3,
                 studies=examples.studies)


def load_examples(paths: Iterable[str | Path]) -> Examples:
    parts = []
    for path in paths:
        with np.load(path) as saved:
            parts.append(Examples(saved["cubes"], saved["labels"], saved["lesion_mm3"], saved["studies"]))
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
    parser.add_argument("--seed", type=int, default=0, help="seed of the negatives drawn (default 0)")
    parser.add_argument("--save", help="collect: write the examples here (.npz)")
    parser.add_argument("--examples", nargs="+", help="train: saved examples files")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--out", help="train: folder for the card and weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.save:
        search = FocusSearch.from_dict(FOCI_CARD.preprocessing)
        studies = ((str(f), folder_study(f)) for f in case_folders(args.cases))
        generated = phantom_studies(*args.phantom) if args.phantom else iter(())
        save_examples(collect_examples(itertools.chain(studies, generated), search, seed=args.seed), args.save)
        return 0
    if not (args.examples and args.out):
        parser.error("give --save to collect examples, or --examples and --out to train")
    network, report = train_classifier(load_examples(args.examples), FOCI_CARD, args.epochs)
    print(save_model(network, replace(FOCI_CARD, training={"epochs": args.epochs, **report}), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
