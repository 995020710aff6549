"""Figures of where the breast and the lesions are: seed 000 Fig. 6 and 7, seed 001 Fig. 4.

- Fig. 6: per data approach, the breast-region overlay map (breast masks summed over the slices the approach uses
  and over patients) with the lesion overlay map on top and lesion histograms along x (columns) and y (rows).
- Fig. 7: per approach, the breast-region map along the body midline, with H_max|mid (the breast depth there).
- Seed 001 Fig. 4: histograms of the Breast Anatomy Geometry (Nearest Point, Breast Size) over patients.

Maps are (y, x) arrays in the prepared (RAS) layout, where rows grow towards anterior; they are drawn with the
anterior side up, as a radiologist sees a prone breast MRI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402

from ..data.crops import breast_extent, overlay_map  # noqa: E402
from ..data.slices import pad_to  # noqa: E402
from ..io.outputs import atomic_output_file  # noqa: E402


def total_map(stacks: Sequence[np.ndarray]) -> np.ndarray:
    """The overlay maps of (n, y, x) mask stacks, zero-padded at the far end to the largest (y, x), summed."""
    shapes = [np.shape(stack)[-2:] for stack in stacks]
    if not shapes:
        raise ValueError("no mask stacks to sum")
    shape = tuple(max(sizes) for sizes in zip(*shapes))
    return sum(pad_to(overlay_map(stack), shape) for stack in stacks).astype(np.int64)


@dataclass(frozen=True)
class OverlayPanel:
    """One approach's breast-region and lesion overlay maps (the same (y, x) shape)."""

    title: str
    breast: np.ndarray
    lesions: np.ndarray

    @classmethod
    def from_stacks(cls, title: str, breast_stacks: Sequence[np.ndarray],
                    lesion_stacks: Sequence[np.ndarray]) -> OverlayPanel:
        """Panel of per-patient (n, y, x) breast and lesion stacks (the slices and crop the approach uses)."""
        breast, lesions = total_map(breast_stacks), total_map(lesion_stacks)
        shape = tuple(max(a, b) for a, b in zip(breast.shape, lesions.shape))
        return cls(title, pad_to(breast, shape), pad_to(lesions, shape))


@dataclass(frozen=True)
class MidlineProfile:
    """The breast-region map along the body midline column (seed 000 Fig. 7)."""

    column: int
    values: np.ndarray
    h_max_mid: int


def midline_profile(breast_map: np.ndarray) -> MidlineProfile | None:
    """Midline column, the map's values down that column and H_max|mid, measured as the OV crop measures them
    (:func:`~BreastSegmentationLib.data.crops.breast_extent` on the map's support); None for an empty map."""
    if not np.any(breast_map):
        return None
    extent = breast_extent(np.asarray(breast_map)[None] > 0)
    return MidlineProfile(extent.midline_col, np.asarray(breast_map)[:, extent.midline_col], extent.midline_depth)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    with atomic_output_file(path) as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    return Path(path)


def _draw_overlay(main: plt.Axes, panel: OverlayPanel) -> None:
    """Map with lesions on top, lesion histograms along x (above) and y (right), and the two colour bars; the side
    axes are cut from the map's own axes, so they stay aligned with the image whatever its aspect."""
    divider = make_axes_locatable(main)
    above = divider.append_axes("top", size="25%", pad=0.1, sharex=main)
    right = divider.append_axes("right", size="25%", pad=0.1, sharey=main)
    breast_bar = divider.append_axes("right", size="5%", pad=0.15)
    lesion_bar = divider.append_axes("right", size="5%", pad=0.75)
    breast_image = main.imshow(panel.breast, cmap="gray", origin="lower", interpolation="nearest")
    lesion_image = main.imshow(np.ma.masked_equal(panel.lesions, 0), cmap="autumn", origin="lower",
                               interpolation="nearest")
    main.set_xlabel("x (columns)")
    main.set_ylabel("y (rows, anterior up)")
    columns, rows = np.arange(panel.lesions.shape[1]), np.arange(panel.lesions.shape[0])
    above.bar(columns, panel.lesions.sum(axis=0), width=1.0, color="tab:red")
    above.set_title(panel.title)
    above.set_ylabel("lesion px")
    above.tick_params(labelbottom=False)
    right.barh(rows, panel.lesions.sum(axis=1), height=1.0, color="tab:red")
    right.set_xlabel("lesion px")
    right.tick_params(labelleft=False)
    plt.colorbar(breast_image, cax=breast_bar).set_label("breast region (slices)")
    plt.colorbar(lesion_image, cax=lesion_bar).set_label("lesion (slices)")


def plot_overlay_maps(panels: Sequence[OverlayPanel], path: str | Path) -> Path:
    """Seed 000 Fig. 6: one row per approach; written atomically as PNG."""
    figure, axes = plt.subplots(len(panels), 1, figsize=(8, 4.5 * len(panels)), dpi=100, squeeze=False)
    for axis, panel in zip(axes[:, 0], panels):
        _draw_overlay(axis, panel)
    figure.tight_layout()
    return _save(figure, path)


def plot_midline_profiles(panels: Sequence[OverlayPanel], path: str | Path) -> Path:
    """Seed 000 Fig. 7: the breast-region map along the midline of each approach, H_max|mid in the legend."""
    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    for panel in panels:
        profile = midline_profile(panel.breast)
        if profile is None:
            continue
        axis.plot(np.arange(profile.values.size), profile.values,
                  label=f"{panel.title}: H_max|mid = {profile.h_max_mid} px (column {profile.column})")
    axis.set_xlabel("y (rows, towards anterior)")
    axis.set_ylabel("breast region (slices x patients)")
    axis.set_title("Breast region along the body midline")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return _save(figure, path)


def plot_bag_histograms(rows: Sequence[Mapping[str, float]], path: str | Path, bins: int = 10) -> Path:
    """Seed 001 Fig. 4: histograms of Nearest Point and Breast Size (pixels) over patients."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for axis, key, title in ((axes[0], "nearest_point_px", "Nearest Point"), (axes[1], "breast_size_px",
                                                                              "Breast Size")):
        axis.hist([row[key] for row in rows], bins=bins, color="tab:blue", edgecolor="white")
        axis.set_xlabel(f"{title} (px)")
        axis.set_ylabel("patients")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_title(title)
    figure.tight_layout()
    return _save(figure, path)
