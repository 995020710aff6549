"""Lesions and contrast kinetics of the synthetic breast DCE-MRI phantom.

Kinetics follow a two-compartment-like curve E(t) = A (1 - exp(-k_in t)) exp(-k_out t) (relative signal increase over
the pre-contrast signal), classified as radiologists do (BI-RADS): initial phase slow / medium / fast by the
enhancement at the first post-contrast phase, delayed phase persistent / plateau / wash-out by the change after it.
Lesions (round, lobulated, irregular/spiculated, non-mass) are drawn in breast fat/FGT only, each one 26-connected
component that contains its centre, never touching another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .phantom_anatomy import Anatomy, Tissue
from .phantom_fields import Grid, choose, smooth_field, smoothstep
from .phantom_subject import Breast

LESION_TYPES = ("round", "lobulated", "irregular", "non_mass")
WASH_IN_RATES = {"fast": (2.0, 5.0), "medium": (0.8, 2.0), "slow": (0.25, 0.8)}  #: k_in per minute
DELAYED_RATES = {"persistent": (-0.15, -0.05), "plateau": (-0.015, 0.015), "washout": (0.1, 0.3)}  #: k_out per minute


@dataclass(frozen=True)
class Kinetics:
    """Enhancement curve: ``initial`` relative enhancement at the first post-contrast time, rates per minute."""

    initial: float
    wash_in: float
    wash_out: float

    def curve(self, times_min: Sequence[float]) -> np.ndarray:
        """Relative enhancement at each post-contrast time (minutes after injection)."""
        times = np.asarray(times_min, dtype=float)
        shape = (1.0 - np.exp(-self.wash_in * times)) * np.exp(-self.wash_out * times)
        return self.initial * shape / shape[0]


def classify_curve(values: Sequence[float]) -> dict[str, str | None]:
    """BI-RADS kinetic descriptors of relative enhancement values over the post-contrast phases."""
    first = float(values[0])
    initial = "slow" if first < 0.5 else "medium" if first <= 1.0 else "fast"
    if len(values) < 2:
        return {"initial_phase": initial, "delayed_phase": None}
    change = (float(values[-1]) - first) / max(abs(first), 1e-6)
    delayed = "persistent" if change > 0.1 else "washout" if change < -0.1 else "plateau"
    return {"initial_phase": initial, "delayed_phase": delayed}


@dataclass
class LesionSettings:
    """What lesions a case may get (a view on :class:`~.phantom.PhantomConfig`)."""

    count_range: tuple[int, int]
    diameter_range_mm: tuple[float, float]
    type_probabilities: Mapping[str, float]
    wash_in_probabilities: Mapping[str, float]
    delayed_probabilities: Mapping[str, float]
    conspicuity_range: tuple[float, float]
    necrosis_probability: float


@dataclass
class LesionMap:
    """Lesions drawn on a grid: which kinetic curve each voxel follows, how strongly, and the table of curves."""

    index: np.ndarray  #: uint8, 0 = no lesion, else a row of ``curves``
    weight: np.ndarray  #: float32 spatial factor of the enhancement (heterogeneity, clumps)
    mask: np.ndarray  #: bool ground truth (necrotic centres included)
    curves: np.ndarray  #: (rows, posts) relative enhancement; row 0 is zero
    pre_ratio: np.ndarray  #: (rows,) pre-contrast signal relative to FGT
    info: list[dict] = field(default_factory=list)


def _sample_kinetics(rng: np.random.Generator, settings: LesionSettings, background: float,
                     conspicuity: float) -> Kinetics:
    low, high = WASH_IN_RATES[choose(rng, settings.wash_in_probabilities)]
    out_low, out_high = DELAYED_RATES[choose(rng, settings.delayed_probabilities)]
    return Kinetics(float(background + conspicuity), float(rng.uniform(low, high)),
                    float(rng.uniform(out_low, out_high)))


def draw_lesions(anatomy: Anatomy, rng: np.random.Generator, settings: LesionSettings, times_min: Sequence[float],
                 background_enhancement: float) -> LesionMap:
    """Place 0-N lesions in the breasts of ``anatomy``; ``background_enhancement`` is the FGT's at the first post."""
    grid = anatomy.grid
    lesions = LesionMap(np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, np.float32),
                        np.zeros(grid.shape, bool), np.zeros((1, len(times_min))), np.ones(1))
    allowed = anatomy.breast & (anatomy.tissue == Tissue.FAT)
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(settings.count_range[0], settings.count_range[1] + 1))):
        kind = choose(rng, settings.type_probabilities)
        low, high = settings.diameter_range_mm
        if kind == "non_mass":  # non-mass enhancement spreads over a segment: at least 10 mm where allowed
            low = min(max(low, 10.0), high)
        diameter = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        spot = _find_spot(anatomy, rng, allowed, diameter, kind, placed)
        if spot is None:
            continue
        breast, centre, diameter = spot
        shape = _draw_shape(kind, grid, rng, centre, 0.5 * diameter, breast, allowed)
        placed.append((centre, _reach(kind, 0.5 * diameter)))
        conspicuity = float(np.exp(rng.uniform(*np.log(settings.conspicuity_range))))
        kinetics = _sample_kinetics(rng, settings, background_enhancement, conspicuity)
        _add_lesion(lesions, anatomy, rng, settings, shape, kind, breast, centre, diameter, kinetics, conspicuity,
                    times_min)
    return lesions


def _reach(kind: str, radius: float) -> float:
    """How far a lesion may extend from its centre (spicules and segmental spread reach beyond the radius)."""
    return radius * {"round": 1.15, "lobulated": 1.3, "irregular": 2.1, "non_mass": 1.2}[kind]


def _find_spot(anatomy: Anatomy, rng: np.random.Generator, allowed: np.ndarray, diameter: float, kind: str,
               placed: list[tuple[np.ndarray, float]]) -> tuple[Breast, np.ndarray, float] | None:
    """A centre inside breast FGT where the lesion fits (shrunk if the breast is thin), away from other lesions."""
    grid = anatomy.grid
    gap = 2.0 * max(grid.spacing) + 2.0
    best, best_score = None, -np.inf
    for _ in range(24):
        breast = anatomy.subject.breasts[int(rng.integers(0, len(anatomy.subject.breasts)))]
        centre = breast.point(rng.uniform(0.15, 0.85), np.sqrt(rng.uniform(0.0, 0.45)), rng.uniform(0, 2 * np.pi))
        index = grid.point_index(centre)
        if index is None or not allowed[index]:
            continue
        room = float(anatomy.surface_distance[index]) - anatomy.subject.thorax.skin - 2.0
        radius = min(0.5 * diameter, room / (_reach(kind, 1.0)))
        if radius < 1.0 or any(np.linalg.norm(centre - other) < _reach(kind, radius) + reach + gap
                               for other, reach in placed):
            continue
        score = float(anatomy.gland[index]) + 0.3 * rng.random() + 0.2 * radius / (0.5 * diameter)
        if score > best_score:
            best, best_score = (breast, centre, 2.0 * radius), score
    return best


def _local_frame(grid: Grid, rng: np.random.Generator, centre: np.ndarray, reach: float):
    """Box around ``centre``, the (x, y, z) offsets (mm) of its voxels and the same offsets randomly rotated."""
    box = grid.box(centre - reach - max(grid.spacing), centre + reach + max(grid.spacing))
    z, y, x = grid.coords(box)
    offsets = np.stack(np.broadcast_arrays(x - centre[0], y - centre[1], z - centre[2]), axis=-1)
    rotation = Rotation.random(random_state=rng).as_matrix().astype(np.float32)
    return box, offsets, offsets @ rotation.T


def _draw_shape(kind: str, grid: Grid, rng: np.random.Generator, centre: np.ndarray, radius: float, breast: Breast,
                allowed: np.ndarray) -> tuple[tuple, np.ndarray, np.ndarray, np.ndarray]:
    """(box, mask, relative radius (0 centre .. 1 edge), enhancement weight) of one lesion in its box."""
    box, offsets, local = _local_frame(grid, rng, centre, _reach(kind, radius))
    distance = np.linalg.norm(local, axis=-1)
    zc, yc, xc = grid.coords(box)
    texture = smooth_field(rng, zc, yc, xc, max(1.5, 0.35 * radius))
    weight = np.ones(distance.shape, np.float32)
    if kind == "round":
        axes = radius * np.array([1.0, rng.uniform(0.65, 1.0), rng.uniform(0.65, 1.0)], np.float32)
        relative = np.linalg.norm(local / axes, axis=-1) / (1.0 + 0.05 * texture)
    elif kind == "lobulated":
        relative = _lobes(rng, local, radius) / (1.0 + 0.05 * texture)
    elif kind == "irregular":
        relative = distance / (radius * (1.0 + 0.22 * texture))
        relative = np.minimum(relative, _spicules(rng, local, distance, radius, min(grid.spacing)))
    else:
        relative, weight = _non_mass(rng, offsets, distance, radius, texture, breast, centre)
    mask = (relative < 1.0) & allowed[box]
    centre_index = tuple(np.array(grid.point_index(centre)) - np.array([piece.start for piece in box]))
    mask[centre_index] = True
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    mask = labels == labels[centre_index]
    return box, mask, np.clip(relative, 0.0, 1.0), weight


def _lobes(rng: np.random.Generator, local: np.ndarray, radius: float) -> np.ndarray:
    """Union of a central sphere and 3-6 lobes around it, as relative distance (< 1 inside)."""
    relative = np.linalg.norm(local, axis=-1) / (0.62 * radius)
    for _ in range(int(rng.integers(3, 7))):
        direction = rng.normal(size=3)
        lobe_centre = (0.45 * radius * direction / np.linalg.norm(direction)).astype(np.float32)
        lobe = np.linalg.norm(local - lobe_centre, axis=-1) / (radius * rng.uniform(0.4, 0.58))
        relative = np.minimum(relative, lobe)
    return relative


def _spicules(rng: np.random.Generator, local: np.ndarray, distance: np.ndarray, radius: float,
              voxel: float) -> np.ndarray:
    """Thin tapering spikes radiating from the surface, as relative distance (< 1 inside)."""
    relative = np.full(distance.shape, np.inf, np.float32)
    width = max(0.9, 0.6 * voxel)
    for _ in range(int(rng.integers(4, 11))):
        direction = rng.normal(size=3).astype(np.float32)
        direction /= np.linalg.norm(direction)
        length = radius * rng.uniform(1.4, 2.1)
        along = local @ direction
        lateral = np.sqrt(np.maximum(distance**2 - along**2, 0.0))
        taper = width * np.clip((length - along) / (length - 0.7 * radius), 0.0, 1.0)
        spike = np.where(along > 0, np.maximum(lateral / np.maximum(taper, 1e-3), along / length), np.inf)
        relative = np.minimum(relative, spike)
    return relative


def _non_mass(rng: np.random.Generator, offsets: np.ndarray, distance: np.ndarray, radius: float,
              texture: np.ndarray, breast: Breast, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clumped enhancement in an elongated segment pointing along the ducts towards the nipple."""
    toward_nipple = breast.nipple_tip() - centre
    toward_nipple /= np.linalg.norm(toward_nipple)
    along = offsets @ np.asarray(toward_nipple, np.float32)
    across = np.sqrt(np.maximum(distance**2 - along**2, 0.0))
    segment = np.sqrt((along / radius) ** 2 + (across / (radius * rng.uniform(0.35, 0.55))) ** 2)
    clumps = texture + 2.0 * np.exp(-(distance / (0.3 * radius)) ** 2)
    relative = np.where((clumps > 0.35) | (distance < 0.3 * radius), segment, np.inf)
    weight = (0.6 + 0.4 * smoothstep(clumps, 0.35, 1.5)).astype(np.float32)
    return relative, weight


def _add_lesion(lesions: LesionMap, anatomy: Anatomy, rng: np.random.Generator, settings: LesionSettings, shape,
                kind: str, breast: Breast, centre: np.ndarray, diameter: float, kinetics: Kinetics,
                conspicuity: float, times_min: Sequence[float]) -> None:
    """Write one lesion into the map and describe it in ``info``."""
    box, mask, relative, weight = shape
    grid = anatomy.grid
    heterogeneity = rng.uniform(0.05, 0.35)
    zc, yc, xc = grid.coords(box)
    weight = weight * np.clip(1.0 + heterogeneity * smooth_field(rng, zc, yc, xc, 2.0), 0.3, 1.7)
    row = _add_curve(lesions, kinetics.curve(times_min), rng.uniform(0.8, 1.05))
    indices = np.where(mask, row, 0).astype(np.uint8)
    necrotic = kind != "non_mass" and diameter >= 12.0 and rng.random() < settings.necrosis_probability
    if necrotic:
        core = Kinetics(rng.uniform(0.03, 0.2), rng.uniform(0.2, 0.6), rng.uniform(-0.1, -0.02))
        core_row = _add_curve(lesions, core.curve(times_min), rng.uniform(0.7, 0.9))
        indices[mask & (relative < rng.uniform(0.45, 0.65))] = core_row
    lesions.index[box][mask] = indices[mask]
    lesions.weight[box][mask] = weight[mask]
    lesions.mask[box] |= mask
    curve = kinetics.curve(times_min)
    voxels = int(mask.sum())
    lesions.info.append({
        "id": len(lesions.info) + 1,
        "type": kind,
        "breast": breast.side,
        "diameter_mm": round(float(diameter), 2),
        "volume_mm3": round(voxels * grid.voxel_volume, 3),
        "voxels": voxels,
        "centre_mm": [round(float(value), 2) for value in centre],
        "centre_index": list(grid.point_index(centre))[::-1],
        "rim_enhancement": bool(necrotic),
        "conspicuity": round(conspicuity, 3),
        "kinetics": {"initial_enhancement": round(kinetics.initial, 3), "wash_in_per_min": round(kinetics.wash_in, 3),
                     "wash_out_per_min": round(kinetics.wash_out, 3),
                     "curve": [round(float(value), 3) for value in curve], **classify_curve(curve)},
    })


def _add_curve(lesions: LesionMap, curve: np.ndarray, pre_ratio: float) -> int:
    lesions.curves = np.vstack([lesions.curves, curve[None]])
    lesions.pre_ratio = np.append(lesions.pre_ratio, pre_ratio)
    return len(lesions.curves) - 1
