"""Phantom gallery: pre-contrast, first post-contrast and subtraction of an axial slice per case, side by side."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from ..data.phantom import PhantomCase  # noqa: E402
from ..io.outputs import atomic_output_file  # noqa: E402


def gallery_slice(case: PhantomCase) -> int:
    """Axial slice (k) through the largest lesion cross-section, or with the most breast if there is no lesion."""
    lesions = sitk.GetArrayViewFromImage(case.lesions)
    mask = lesions if lesions.any() else sitk.GetArrayViewFromImage(case.breast)
    return int(np.argmax(mask.sum(axis=(1, 2))))


def _caption(case: PhantomCase) -> str:
    info = case.info
    spacing = " x ".join(f"{value:.2f}" for value in info["spacing"])
    size = " x ".join(str(value) for value in info["shape"])
    saturation = "fat-sat" if info["fat_sat"] else "no fat-sat"
    kinds = ", ".join(lesion["type"] for lesion in info["lesions"]) or "no lesion"
    return (f"seed {info['seed']}: {info['vendor']} {info['field_strength_t']:.1f} T, {saturation}, "
            f"{size} @ {spacing} mm, density {info['density']}, BPE {info['bpe']['level']}, {kinds}")


def save_gallery(cases: Sequence[PhantomCase], path: str | Path, *, panel_inches: float = 3.4) -> Path:
    """One row per case: pre, first post and post - pre of :func:`gallery_slice`, lesion outlines on the subtraction;
    written atomically as a PNG."""
    if not cases:
        raise ValueError("the gallery needs at least one case")
    figure, axes = plt.subplots(len(cases), 3, figsize=(3 * panel_inches, len(cases) * (panel_inches + 0.3)),
                                squeeze=False, dpi=110)
    for row, case in zip(axes, cases):
        _draw_row(row, case)
    figure.tight_layout(h_pad=1.5)
    with atomic_output_file(path) as temporary:
        figure.savefig(temporary, facecolor="white")
    plt.close(figure)
    return Path(path)


def _draw_row(row, case: PhantomCase) -> None:
    k = gallery_slice(case)
    pre = sitk.GetArrayViewFromImage(case.pre)[k]
    post = sitk.GetArrayViewFromImage(case.posts[0])[k]
    subtraction = sitk.GetArrayFromImage(case.subtraction())[k]
    breast = sitk.GetArrayViewFromImage(case.breast)[k] > 0
    lesions = sitk.GetArrayViewFromImage(case.lesions)[k] > 0
    spacing = case.info["spacing"]
    aspect = spacing[1] / spacing[0]
    high = float(np.percentile(post, 99.7)) or 1.0
    sub_values = subtraction[breast] if breast.any() else subtraction.ravel()
    sub_high = float(np.percentile(sub_values, 99.9)) or 1.0
    panels = ((pre, 0.0, high, "pre-contrast"), (post, 0.0, high, "first post-contrast"),
              (subtraction, -0.1 * sub_high, sub_high, "subtraction (post - pre)"))
    for axis, (image, low, top, title) in zip(row, panels):
        axis.imshow(image, cmap="gray", vmin=low, vmax=top, aspect=aspect, interpolation="nearest")
        axis.set_title(title, fontsize=8)
        axis.set_xticks([])
        axis.set_yticks([])
    if lesions.any():
        row[2].contour(lesions, levels=[0.5], colors="#ff3030", linewidths=0.7)
    row[0].set_ylabel(f"slice {k}", fontsize=7)
    row[1].set_xlabel(_caption(case), fontsize=6.5)
