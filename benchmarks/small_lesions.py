"""What the lesion model makes of small lesions (20-150 mm3) of phantom studies: its peak probability on each, as the
study is and with its input changed in three ways, to tell what it needs to see a lesion.

    python benchmarks/small_lesions.py [--models DIR] --seeds 3011 3013 3014 ... [--out small.json]

For each reference lesion of 20-150 mm3, on the slice where it is largest, the mean probability of the lesion card's
networks (with its mirroring) at the lesion's voxels, highest value:
- ``as_is``: the input the pipeline gives the network;
- ``neighbours_lesion``: the neighbouring-slice inputs (``...@-1``, ``...@+1``) take the slice's own values inside
  the lesion, as if it were as large on the slices above and below;
- ``neighbours_tissue``: the neighbouring-slice inputs take, inside the lesion, the median of the tissue around it,
  as if it were on this slice alone;
- ``drawn_larger``: the slice drawn 1.6 times larger in-plane (bilinear), as a lesion 1.6 times as wide would be.
Use tuning seeds (3000 and up), never the held-out ones of the accuracy benchmark. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from accuracy import SMALL_LESION_MM3  # benchmarks/ is on the path of a script run from it
from scipy import ndimage

from BreastSegmentationLib.data.phantom import generate_case
from BreastSegmentationLib.data.preprocessing import parse_input, prepare_case
from BreastSegmentationLib.inference.pipeline import ModelSet, lesion_input, load_models, segment_images
from BreastSegmentationLib.inference.runtime import configure_cpu_memory, predict_slices
from BreastSegmentationLib.io.images import resample_like
from BreastSegmentationLib.reports.tables import markdown_table

LARGER = 1.6


def peak(models: ModelSet, channels: np.ndarray, lesion: np.ndarray) -> float:
    """Highest probability of the lesion card's networks at ``lesion`` on one slice of (C, y, x) ``channels``."""
    model = models.lesion
    probability = predict_slices(model.networks, channels[:, None], [0], models.device,
                                 mirror=model.card.test_time_mirroring)[0]
    return round(float(probability[lesion].max()), 3)


def drawn_larger(channels: np.ndarray, lesion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slice and its lesion mask drawn :data:`LARGER` times larger in-plane."""
    image = torch.nn.functional.interpolate(torch.from_numpy(channels[None]), scale_factor=LARGER, mode="bilinear")
    mask = torch.nn.functional.interpolate(torch.from_numpy(lesion[None, None].astype(np.float32)),
                                           scale_factor=LARGER, mode="nearest")
    return image[0].numpy(), mask[0, 0].numpy() > 0


def variants(models: ModelSet, channels: np.ndarray, lesion: np.ndarray) -> dict[str, float]:
    """Peak probability on ``lesion`` for the slice as it is and the three changed inputs."""
    neighbours = [index for index, name in enumerate(models.lesion.card.inputs) if parse_input(name)[1] != 0]
    centre = {parse_input(name)[0]: index for index, name in enumerate(models.lesion.card.inputs)
              if parse_input(name)[1] == 0}
    ring = ndimage.binary_dilation(lesion, iterations=6) & ~ndimage.binary_dilation(lesion, iterations=2)
    as_lesion, as_tissue = channels.copy(), channels.copy()
    for index in neighbours:
        own = channels[centre[parse_input(models.lesion.card.inputs[index])[0]]]
        as_lesion[index][lesion] = own[lesion]
        as_tissue[index][lesion] = np.median(channels[index][ring])
    return {"as_is": peak(models, channels, lesion), "neighbours_lesion": peak(models, as_lesion, lesion),
            "neighbours_tissue": peak(models, as_tissue, lesion),
            "drawn_larger": peak(models, *drawn_larger(channels, lesion))}


def small_lesion_rows(models: ModelSet, seed: int) -> list[dict]:
    """One row per reference lesion of 20-150 mm3 of the phantom study of ``seed``."""
    case = generate_case(seed)
    breast = segment_images(case.pre, case.posts[0], models).breast
    prepared = prepare_case(case.pre, case.posts[0], lesions=case.lesions, config=models.lesion.preprocessing)
    breast_array = sitk.GetArrayFromImage(resample_like(breast, prepared.grid.reference(), is_mask=True))
    box, channels = lesion_input(prepared, breast_array, models.lesion.card.inputs, models.lesion.crop)
    components, count = ndimage.label(box.apply(prepared.lesions), np.ones((3, 3, 3), bool))
    voxel_mm3 = float(np.prod(prepared.grid.spacing))
    rows = []
    for label in range(1, count + 1):
        lesion = components == label
        volume = float(lesion.sum()) * voxel_mm3
        if not 20.0 <= volume <= SMALL_LESION_MM3:
            continue
        k = int(np.argmax(lesion.sum(axis=(1, 2))))
        rows.append({"seed": seed, "volume_mm3": round(volume), "slices": int(lesion.any(axis=(1, 2)).sum()),
                     "slice_mm": round(prepared.grid.spacing[2], 1),
                     **variants(models, np.ascontiguousarray(channels[:, k]), lesion[k])})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="model folder (default: the bundled models)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="phantom seeds (tuning: 3000 and up)")
    parser.add_argument("--out", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    configure_cpu_memory()
    models = load_models(args.models, "auto")
    rows = [row for seed in args.seeds for row in small_lesion_rows(models, seed)]
    print(markdown_table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
