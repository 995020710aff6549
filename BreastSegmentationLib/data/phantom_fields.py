"""Image grid and smooth random fields for the synthetic breast DCE-MRI phantom.

The grid speaks millimetres in LPS with an identity direction (x to the patient's left, y posterior, z superior), so
array row index j grows posteriorly. Smooth fields give texture, shape perturbation and bias fields: white noise on a
coarse lattice, upsampled by Gaussian kernels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel centres of an axis-aligned image: ``size`` and ``spacing`` in SimpleITK (x, y, z) order."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape in KJI (z, y, x) order."""
        return self.size[2], self.size[1], self.size[0]

    @property
    def voxel_volume(self) -> float:
        return float(np.prod(self.spacing))

    def axis(self, dim: int) -> np.ndarray:
        """Coordinates (mm) of the voxel centres along x (0), y (1) or z (2)."""
        return (self.origin[dim] + self.spacing[dim] * np.arange(self.size[dim])).astype(np.float32)

    def full_box(self) -> Box:
        return slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])

    def box(self, lower: Sequence[float], upper: Sequence[float]) -> Box | None:
        """Array-order slices of the voxels whose centres lie between ``lower`` and ``upper`` (x, y, z mm)."""
        slices = []
        for dim in (2, 1, 0):
            start = int(np.ceil((lower[dim] - self.origin[dim]) / self.spacing[dim]))
            stop = int(np.floor((upper[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            start, stop = max(start, 0), min(stop, self.size[dim])
            if start >= stop:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)

    def coords(self, box: Box | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable (z, y, x) coordinate arrays (mm) of ``box`` (the whole grid by default)."""
        box = box or self.full_box()
        z = self.axis(2)[box[0]][:, None, None]
        y = self.axis(1)[box[1]][None, :, None]
        x = self.axis(0)[box[2]][None, None, :]
        return z, y, x

    def point_index(self, point: Sequence[float]) -> tuple[int, int, int] | None:
        """Array (k, j, i) index of the voxel nearest to ``point`` (x, y, z mm), None outside the grid."""
        index = [int(round((point[dim] - self.origin[dim]) / self.spacing[dim])) for dim in (2, 1, 0)]
        if all(0 <= value < limit for value, limit in zip(index, self.shape)):
            return tuple(index)
        return None


def _upsampling_matrix(coordinates: np.ndarray, lattice_step: float) -> tuple[np.ndarray, int]:
    """Gaussian weights from a lattice of step ``lattice_step`` to ``coordinates``, rows of unit squared sum."""
    start = float(coordinates.min()) - 2.5 * lattice_step
    count = int(np.ceil((float(coordinates.max()) - start) / lattice_step)) + 3
    lattice = start + lattice_step * np.arange(count)
    weights = np.exp(-0.5 * ((coordinates[:, None] - lattice[None, :]) / (0.75 * lattice_step)) ** 2)
    # Unit squared row sums make every output voxel exactly N(0, 1): the weights combine independent noise.
    weights /= np.sqrt((weights**2).sum(axis=1, keepdims=True))
    return weights.astype(np.float32), count


def smooth_field(rng: np.random.Generator, z: np.ndarray, y: np.ndarray, x: np.ndarray,
                 correlation_mm: float | Sequence[float]) -> np.ndarray:
    """A Gaussian random field of unit variance on the (z, y, x) coordinate vectors, correlated over ``correlation_mm``.

    ``correlation_mm`` is one length or (x, y, z) lengths for anisotropic texture.
    """
    cx, cy, cz = np.broadcast_to(np.asarray(correlation_mm, dtype=float), (3,))
    up_z, nz = _upsampling_matrix(np.ravel(z), cz)
    up_y, ny = _upsampling_matrix(np.ravel(y), cy)
    up_x, nx = _upsampling_matrix(np.ravel(x), cx)
    lattice = rng.standard_normal((nz, ny, nx), dtype=np.float32)
    # Separable matrix products, one 2-D product per axis (stacked small products make threaded BLAS crawl):
    # ~100x faster than ndimage.zoom(order=3) at full resolution, without the creases of linear interpolation.
    field = (up_z @ lattice.reshape(nz, -1)).reshape(-1, ny, nx)
    field = (up_y @ field.transpose(1, 0, 2).reshape(ny, -1)).reshape(-1, len(up_z), nx).transpose(1, 0, 2)
    return (field.reshape(-1, nx) @ up_x.T).reshape(len(up_z), len(up_y), len(up_x))


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """One uniform draw as a Python float (keeps float32 arithmetic float32 downstream)."""
    return float(rng.uniform(low, high))


def choose(rng: np.random.Generator, probabilities: Mapping[str, float]) -> str:
    """One name drawn with the given (unnormalised) weights."""
    names = list(probabilities)
    weights = np.array([probabilities[name] for name in names], dtype=float)
    return str(rng.choice(names, p=weights / weights.sum()))


def smoothstep(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """0 below ``low``, 1 above ``high``, a smooth cubic ramp between."""
    ramp = np.clip((values - low) / (high - low), 0.0, 1.0)
    return ramp * ramp * (3.0 - 2.0 * ramp)


def smooth_union(a: np.ndarray, b: np.ndarray, softness: float) -> np.ndarray:
    """Smooth maximum of two signed distances (inside positive): a fillet where two shapes meet."""
    return np.maximum(a, b) + softness * np.log1p(np.exp(-np.abs(a - b) / softness))


def capsule_distance(grid: Grid, start: Sequence[float], end: Sequence[float], radius: float
                     ) -> tuple[Box, np.ndarray] | None:
    """Box around the segment ``start``-``end`` (x, y, z mm) and the signed distance (inside positive) of a tube
    of ``radius`` around it, for the voxels of that box."""
    start, end = np.asarray(start, dtype=np.float32), np.asarray(end, dtype=np.float32)
    margin = radius + 2.0 * max(grid.spacing)
    box = grid.box(np.minimum(start, end) - margin, np.maximum(start, end) + margin)
    if box is None:
        return None
    z, y, x = grid.coords(box)
    direction = end - start
    length2 = max(float(direction @ direction), 1e-6)
    along = ((x - start[0]) * direction[0] + (y - start[1]) * direction[1] + (z - start[2]) * direction[2]) / length2
    along = np.clip(along, 0.0, 1.0)
    distance = np.sqrt((x - start[0] - along * direction[0]) ** 2 + (y - start[1] - along * direction[1]) ** 2
                       + (z - start[2] - along * direction[2]) ** 2)
    return box, radius - distance
