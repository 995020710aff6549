"""The overview figure of a segmentation: a subtraction MIP with lesion outlines, then a slice through each lesion.

Images are shown as radiologists read axial breast MRI: anterior up, the patient's right on the image's left
(ITK's LPS index order), with the pixel aspect ratio of the acquisition. The figure is drawn without pyplot (a
``Figure`` of its own, which ``savefig`` renders with Agg): importing this module leaves the host's matplotlib backend
(Slicer's, a notebook's) as it was, and no figure stays open in pyplot's registry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy import ndimage

from ..io.images import bounding_box, reorient
from ..io.outputs import atomic_output_file

#: Lesion panels shown at most (the largest lesions first).
MAX_LESION_PANELS = 7
#: Width of one panel in inches.
PANEL_WIDTH_IN = 3.6


def display_images(*images: sitk.Image) -> list[sitk.Image]:
    """The images with their axes in radiological display order (LPS): rows anterior -> posterior, columns right ->
    left; each image itself where it already is. The caller keeps them while it reads their array views: copying the
    arrays of a study's volumes would take some 0.05 s."""
    return [reorient(image, "LPS") for image in images]


def _aspect(image: sitk.Image) -> float:
    spacing = reorient(image, "LPS").GetSpacing()
    return spacing[1] / spacing[0]


def _window(values: np.ndarray) -> tuple[float, float]:
    """Display window from the 1st to the 99.5th percentile (of at most about a million evenly spread values)."""
    values = np.ravel(values)
    low, high = np.percentile(values[::max(1, values.size // 1_000_000)], (1.0, 99.5))
    return float(low), float(max(high, low + 1e-6))


def _caption(axis: Axes, text: str) -> None:
    """A panel's title as plain text above it: ``set_title`` makes every draw measure the (hidden) axes to place
    titles, a third of the figure's drawing time."""
    axis.text(0.5, 1.01, text, transform=axis.transAxes, ha="center", va="bottom", fontsize=8)


def _largest_slices(lesion_a: np.ndarray, limit: int) -> dict[int, int]:
    """The first ``limit`` labels of a label map and, for each, the slice where it has the most voxels (searched in
    the lesions' bounding box: find_objects visits every voxel it is given)."""
    if not lesion_a.any():
        return {}
    around = bounding_box(lesion_a)
    lesions = lesion_a[around]
    boxes = ndimage.find_objects(lesions)
    labels = [label for label, box in enumerate(boxes, start=1) if box is not None][:limit]
    slices = {}
    for label in labels:
        box = boxes[label - 1]
        slices[label] = around[0].start + box[0].start + int(np.argmax((lesions[box] == label).sum(axis=(1, 2))))
    return slices


def save_overview(pre: sitk.Image, post: sitk.Image, breast: sitk.Image, lesions: sitk.Image, path: str | Path,
                  lesion_rows: list[dict] | None = None, title: str = "") -> Path:
    """Write the overview PNG; ``lesions`` is a label map (1..N by decreasing volume), all images on one grid."""
    in_display_order = display_images(pre, post, breast, lesions)
    pre_a, post_a, breast_a, lesion_a = (sitk.GetArrayViewFromImage(image) for image in in_display_order)
    breast_a = breast_a > 0
    lesion_slices = _largest_slices(lesion_a, MAX_LESION_PANELS)
    labels = list(lesion_slices)
    volumes = {int(row["id"]): row.get("volume_mm3") for row in (lesion_rows or [])}
    aspect = _aspect(pre)
    columns = 1 + max(len(labels), 1)
    panel_height = PANEL_WIDTH_IN * aspect * post_a.shape[1] / post_a.shape[2]
    titles_height = 0.55 if title else 0.3
    figure = Figure(figsize=(PANEL_WIDTH_IN * columns, panel_height + titles_height), dpi=110)
    axes = figure.subplots(1, columns, squeeze=False)[0]
    mip = np.subtract(post_a, pre_a, dtype=np.float32).max(axis=0)
    low, high = _window(mip)
    axes[0].imshow(mip, cmap="gray", vmin=low, vmax=high, aspect=aspect)
    axes[0].contour(breast_a.any(axis=0), levels=[0.5], colors="deepskyblue", linewidths=0.8)
    if labels:
        shown = (lesion_a > 0) & (lesion_a <= labels[-1])  # the labels shown are the first ones present
        axes[0].contour(shown.any(axis=0), levels=[0.5], colors="red", linewidths=0.9)
    _caption(axes[0], "subtraction MIP: breast (blue), lesions (red)")
    low, high = _window(post_a[breast_a] if breast_a.any() else post_a)
    for axis, label in zip(axes[1:], labels):
        k = lesion_slices[label]
        axis.imshow(post_a[k], cmap="gray", vmin=low, vmax=high, aspect=aspect)
        axis.contour(breast_a[k], levels=[0.5], colors="deepskyblue", linewidths=0.6)
        axis.contour(lesion_a[k] == label, levels=[0.5], colors="red", linewidths=1.0)
        volume = volumes.get(label)
        _caption(axis, f"lesion {label}" + (f": {volume:.0f} mm³" if volume is not None else ""))
    if not labels:
        axes[1].imshow(post_a[post_a.shape[0] // 2], cmap="gray", vmin=low, vmax=high, aspect=aspect)
        _caption(axes[1], "no lesion found (middle slice)")
    for axis in axes:
        axis.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=9)
    # A fixed layout sized to the panels' aspect: they carry no ticks or labels, so tight_layout's text measuring (a
    # third of a second) would only find what is set here.
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=panel_height / (panel_height + titles_height),
                           wspace=0.04)
    with atomic_output_file(path) as temporary:
        figure.savefig(temporary, pil_kwargs={"compress_level": 1})  # zlib's fastest: half the time, a quarter larger
    return Path(path)
