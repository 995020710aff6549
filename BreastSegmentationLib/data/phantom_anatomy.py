"""Drawing a phantom subject on an image grid: tissue labels, FGT and small-vessel shares, the breast mask.

Tissue layers (skin, subcutaneous fat, muscle, ribs, lungs and mediastinum) follow from the radial depth below the
thorax surface; breasts merge into the body outline with a smooth fillet and get fibroglandular tissue whose strands
converge on the nipple, Cooper's ligaments, small tortuous vessels and sometimes an implant. Everything is vectorised
numpy; smooth random fields are drawn on a coarse lattice and upsampled (:mod:`.phantom_fields`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage, special

from .phantom_fields import Grid, capsule_distance, smooth_field, smooth_union, smoothstep, uniform
from .phantom_subject import Breast, LymphNode, Mediastinum, Subject, Thorax


class Tissue(IntEnum):
    """Tissue labels of the phantom; the signal model gives each its T1 signal and contrast kinetics."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    MARROW = 4
    CORTEX = 5
    CARTILAGE = 6
    LUNG = 7
    BLOOD = 8
    MYOCARDIUM = 9
    LIVER = 10
    NIPPLE = 11
    CSF = 12
    LYMPH_NODE = 13
    GLAND = 14  #: only in exported label maps: breast fat voxels whose FGT share exceeds one half
    IMPLANT = 15


@dataclass
class Anatomy:
    """The phantom drawn on a grid: KJI arrays, plus the subject it came from."""

    grid: Grid
    subject: Subject
    tissue: np.ndarray  #: uint8 :class:`Tissue`
    gland: np.ndarray  #: float32 0..1: share of fibroglandular tissue in breast fat voxels
    vessels: np.ndarray  #: float32 0..1: share of small enhancing vessels
    breast: np.ndarray  #: bool ground truth: breast tissue anterior to the pectoralis, skin included
    surface_distance: np.ndarray  #: float32 signed distance (mm) to the skin surface, inside positive

    def labels(self) -> np.ndarray:
        """Tissue labels with FGT-dominant breast voxels as :attr:`Tissue.GLAND`."""
        labels = self.tissue.copy()
        labels[self.gland > 0.5] = Tissue.GLAND
        return labels


def build_anatomy(subject: Subject, grid: Grid, rng: np.random.Generator) -> Anatomy:
    """Draw ``subject`` on ``grid``: labels, gland and vessel fractions, the breast ground truth."""
    thorax = subject.thorax
    z, y, x = grid.coords()
    psi = np.arctan2(x[0], thorax.centre_y - y[0])
    radius_2d = np.hypot(x[0], y[0] - thorax.centre_y)
    # Radial depth below the outer muscle surface: > 0 inside the rib cage, < 0 in the fat and breasts.
    depth = thorax.radius(psi)[None] * thorax.z_scale(z) - radius_2d[None]
    fat = _fat_thickness(thorax, psi)[None] * (1.0 + 0.2 * smooth_field(rng, z, y, x, 50.0))
    surface_distance = (fat + depth).astype(np.float32)
    del fat
    gland = np.zeros(grid.shape, np.float32)
    vessels = np.zeros(grid.shape, np.float32)
    implants = np.zeros(grid.shape, bool)
    breast_slices = np.zeros(grid.shape[0], bool)
    for breast in subject.breasts:
        breast_slices |= _draw_breast(breast, subject, grid, rng, depth, surface_distance, gland, vessels, implants)
    tissue = np.where(surface_distance > 0, Tissue.FAT, Tissue.AIR).astype(np.uint8)
    tissue[implants] = Tissue.IMPLANT
    tissue[(surface_distance > 0) & (surface_distance < thorax.skin)] = Tissue.SKIN
    _draw_chest_wall(thorax, grid, psi, radius_2d, depth, tissue)
    _draw_mediastinum(subject.mediastinum, grid, tissue)
    _draw_vessels_and_nodes(subject, grid, tissue)
    for breast in subject.breasts:
        _draw_nipple(breast, grid, tissue, surface_distance, thorax.skin)
    _draw_lung_vessels(rng, grid, tissue, vessels)
    breast_mask = _breast_region(subject, grid, depth, surface_distance, breast_slices)
    gland[tissue != Tissue.FAT] = 0.0
    gland[~breast_mask] = 0.0
    return Anatomy(grid, subject, tissue, gland, vessels, breast_mask, surface_distance)


def _fat_thickness(thorax: Thorax, psi: np.ndarray) -> np.ndarray:
    knots = [0.0, 0.6, 1.4, 2.5, np.pi]
    values = [thorax.fat_front, 1.1 * thorax.fat_front, thorax.fat_side, thorax.fat_back, 0.8 * thorax.fat_back]
    return np.interp(np.abs(psi), knots, values).astype(np.float32)


def _muscle_thickness(thorax: Thorax, psi: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Muscle over the ribs: thin at the sternum, pectoralis under the breasts (fading caudally), paraspinal behind."""
    knots = [0.0, 0.15, 0.35, 1.0, 1.5, 2.4, 2.9, np.pi]
    base = np.interp(np.abs(psi), knots, [thorax.sternal_muscle, thorax.sternal_muscle, thorax.side_muscle,
                                          thorax.side_muscle, thorax.side_muscle, thorax.side_muscle,
                                          thorax.back_muscle, thorax.back_muscle]).astype(np.float32)
    pectoral = np.interp(np.abs(psi), [0.15, 0.4, 0.9, 1.3], [0.0, 1.0, 1.0, 0.0]).astype(np.float32)
    fade = smoothstep(z, thorax.pectoral_floor_z - 30.0, thorax.pectoral_floor_z)
    return base[None] + ((thorax.pectoral_muscle - thorax.side_muscle) * pectoral)[None] * fade


def _draw_breast(breast: Breast, subject: Subject, grid: Grid, rng: np.random.Generator, depth: np.ndarray,
                 surface_distance: np.ndarray, gland: np.ndarray, vessels: np.ndarray,
                 implants: np.ndarray) -> np.ndarray:
    """Merge one breast into the body outline and give it glandular tissue, small vessels and maybe an implant;
    return which slices hold it."""
    slices = np.zeros(grid.shape[0], bool)
    box = grid.box(*breast.bounds())
    if box is None:
        return slices
    z, y, x = grid.coords(box)
    perturbation = 0.06 * smooth_field(rng, z, y, x, 22.0)
    distance, t = breast.signed_distance(z, y, x, perturbation)
    surface_distance[box] = smooth_union(surface_distance[box], distance, 4.0)
    region = (distance > 0) & (depth[box] < 0)
    slices[box[0]] = region.any(axis=(1, 2))
    if not region.any():
        return slices
    _, across, cranial = breast.local(z, y, x)
    scale = np.maximum(breast.profile(t)[0], 0.05)
    rho2 = (across / (breast.half_width * scale)) ** 2 + (cranial / (breast.half_height * scale)) ** 2
    breast_gland = _gland(breast, subject, rng, z, y, x, distance, t, region, rho2, across / scale, cranial / scale)
    breast_vessels = _breast_vessels(breast, subject.vessels_per_breast, grid, box, rng, distance)
    if breast.implant > 0:
        implant = region & (((t - 0.28) / 0.26) ** 2 + rho2 / breast.implant**2 < 1.0)
        implants[box] |= implant
        breast_gland[implant] = 0.0
        breast_vessels[implant] = 0.0
    gland[box] = np.maximum(gland[box], breast_gland)
    vessels[box] = np.maximum(vessels[box], breast_vessels)
    return slices


def _gland(breast: Breast, subject: Subject, rng: np.random.Generator, z, y, x, distance: np.ndarray,
           t: np.ndarray, region: np.ndarray, rho2: np.ndarray, across: np.ndarray, cranial: np.ndarray) -> np.ndarray:
    """FGT share: a thresholded smooth random field, denser centrally, with strands converging on the nipple.

    ``rho2`` is the squared relative radius in the cross-section, ``across`` and ``cranial`` the cross-section
    offsets scaled by the depth profile (mm at the base)."""
    u_across, u_cranial = across / breast.half_width, cranial / breast.half_height
    zone = (smoothstep(distance, breast.subcutaneous_fat, breast.subcutaneous_fat + 6.0)
            * smoothstep(t, 0.04, 0.16) * (1.0 - smoothstep(t, 0.92, 1.0)) * region)
    score = (0.45 * smooth_field(rng, z, y, x, 12.0) + 0.8 * _radial_strands(rng, u_across, u_cranial, t)
             + 0.35 * smooth_field(rng, z, y, x, 2.0) + 1.2 * (1.0 - np.minimum(rho2, 1.5)))
    inside_zone = score[zone > 0.5]
    if inside_zone.size == 0:
        return np.zeros_like(score)
    threshold = np.quantile(inside_zone[:: max(1, inside_zone.size // 200_000)], 1.0 - subject.gland_fraction)
    # Towards the zone's edges the gland thins out into islands rather than fading into a grey haze.
    score -= 4.0 * (1.0 - zone)
    gland = region * special.expit((score - threshold) / 0.1)
    # Cooper's ligaments: thin sheets where a smooth field crosses zero, stretched towards the skin.
    sheets = smooth_field(rng, z, y, x, (7.0, 14.0, 7.0))
    ligaments = np.exp(-((sheets / 0.05) ** 2)) * smoothstep(distance, 0.0, 2.0) * region
    return np.maximum(gland, 0.22 * ligaments).astype(np.float32)


def _radial_strands(rng: np.random.Generator, u_across: np.ndarray, u_cranial: np.ndarray,
                    t: np.ndarray) -> np.ndarray:
    """A random field that is nearly constant along lines through the apex: strands converging on the nipple.

    It lives on a small lattice over (t, normalised cross-section position) and is sampled at every voxel.
    """
    lattice = ndimage.gaussian_filter(rng.standard_normal((8, 64, 64)), (1.8, 1.4, 1.4), mode="wrap")
    lattice /= lattice.std()
    coordinates = np.stack(np.broadcast_arrays((np.clip(t, -0.2, 1.2) + 0.2) / 1.4 * 7,
                                               (np.clip(u_across, -1.4, 1.4) + 1.4) / 2.8 * 63,
                                               (np.clip(u_cranial, -1.4, 1.4) + 1.4) / 2.8 * 63))
    return ndimage.map_coordinates(lattice.astype(np.float32), coordinates, order=1, mode="nearest")


def _breast_vessels(breast: Breast, count: int, grid: Grid, box, rng: np.random.Generator,
                    distance: np.ndarray) -> np.ndarray:
    """Tortuous vessels running from the chest wall towards the nipple, as a 0..1 partial-volume share."""
    splats = np.zeros(distance.shape, np.float32)
    radius_mm = 0.55
    sigma = np.array([radius_mm / grid.spacing[2], radius_mm / grid.spacing[1], radius_mm / grid.spacing[0]])
    origin = np.array([grid.axis(2)[box[0]][0], grid.axis(1)[box[1]][0], grid.axis(0)[box[2]][0]])
    step = 0.3 * min(grid.spacing)
    # Unit peak for a straight line: splat weight = step * 2 pi sigma^2 / voxel volume (sigma in mm).
    weight_per_point = step * 2.0 * np.pi * radius_mm**2 / grid.voxel_volume
    for _ in range(count):
        angle = uniform(rng, 0, 2 * np.pi)
        start = breast.point(uniform(rng, 0.0, 0.15), uniform(rng, 0.75, 0.95), angle)
        end = breast.point(uniform(rng, 0.45, 0.95), uniform(rng, 0.0, 0.6), angle + rng.normal(0, 0.6))
        path = _wiggly_path(rng, start, end, step)
        kji = np.rint((path[:, ::-1] - origin) / np.array([grid.spacing[2], grid.spacing[1], grid.spacing[0]]))
        kji = kji.astype(int)
        keep = np.all((kji >= 0) & (kji < np.array(splats.shape)), axis=1)
        np.add.at(splats, tuple(kji[keep].T), weight_per_point * uniform(rng, 0.25, 1.0))
    vessels = ndimage.gaussian_filter(splats, sigma, truncate=2.5)
    return np.clip(1.4 * vessels, 0.0, 1.0) * (distance > 1.0)


def _wiggly_path(rng: np.random.Generator, start: np.ndarray, end: np.ndarray, step: float) -> np.ndarray:
    """Points every ``step`` mm along a tortuous curve from ``start`` to ``end``."""
    length = float(np.linalg.norm(end - start)) * 1.3 + 1.0
    s = np.linspace(0.0, 1.0, max(int(length / step), 2))[:, None]
    path = start + s * (end - start)
    for order in range(1, 9):
        direction = rng.normal(size=3)
        amplitude = uniform(rng, 1.5, 7.0) / np.sqrt(order)
        path += amplitude * np.sin(np.pi * order * s + uniform(rng, 0, 2 * np.pi)) * np.sin(np.pi * s) \
            * direction / np.linalg.norm(direction)
    return path


def _draw_chest_wall(thorax: Thorax, grid: Grid, psi: np.ndarray, radius_2d: np.ndarray, depth: np.ndarray,
                     tissue: np.ndarray) -> None:
    """Muscle, then a band of ribs (marrow, cortex; cartilage and sternum in front), then the lungs."""
    z_axis, x_axis = grid.axis(2), grid.axis(0)
    muscle = _muscle_thickness(thorax, psi, z_axis[:, None, None])
    within = depth - muscle
    del muscle
    tissue[depth >= 0] = Tissue.MUSCLE
    tissue[within >= thorax.rib_band] = Tissue.LUNG
    k, j, i = np.nonzero((within >= 0) & (within < thorax.rib_band))
    band = within[k, j, i]
    across_band = (band - 0.5 * thorax.rib_band) / (0.42 * thorax.rib_band)
    arc = radius_2d[j, i] * np.abs(psi[j, i])
    phase = np.mod((z_axis[k] + thorax.rib_slope * arc) / thorax.rib_pitch + thorax.rib_phase, 1.0)
    along_rib = (phase - 0.5 * thorax.rib_duty) / (0.5 * thorax.rib_duty)
    rib = np.where(phase < thorax.rib_duty, along_rib**2 + across_band**2, np.inf)
    front = np.cos(psi[j, i]) > 0
    x = x_axis[i]
    sternum = np.where(front & (np.abs(x) < thorax.sternum_half_width),
                       (x / thorax.sternum_half_width) ** 2 + across_band**2, np.inf)
    cartilage = front & (np.abs(x) < thorax.cartilage_half_width) & (rib < 1.0)
    bone = np.minimum(np.where(cartilage, np.inf, rib), sternum)
    labels = np.full(band.shape, Tissue.MUSCLE, np.uint8)
    labels[cartilage] = Tissue.CARTILAGE
    labels[bone < 1.0] = Tissue.CORTEX
    labels[bone < 0.55] = Tissue.MARROW
    tissue[k, j, i] = labels


def _draw_mediastinum(mediastinum: Mediastinum, grid: Grid, tissue: np.ndarray) -> None:
    """Mediastinal fat, spine, diaphragm with liver below, the heart and the great vessels inside the cavity."""
    x, y = grid.axis(0)[None, :], grid.axis(1)[:, None]
    # In-plane maps, looked up for the cavity voxels only. The mediastinum is a spindle from sternum to spine.
    front = mediastinum.heart_centre[1] - 1.2 * mediastinum.heart_axes[1]
    height = np.clip((y - front) / (mediastinum.spine_y - front), 0.0, 1.0)
    fat = np.abs(x - 0.3 * mediastinum.ascending[0]) < mediastinum.half_width * (0.35 + np.sin(np.pi * height))
    fat &= y < mediastinum.spine_y
    dome_y = mediastinum.spine_y - 60.0
    dome = np.maximum(
        mediastinum.dome_right_z - ((x + 55.0) ** 2 + (y - dome_y) ** 2) / (2 * mediastinum.dome_radius),
        mediastinum.dome_left_z - ((x - 55.0) ** 2 + (y - dome_y) ** 2) / (2 * mediastinum.dome_radius))
    vertebra = np.hypot(x, y - mediastinum.spine_y) / mediastinum.vertebra_radius
    k, j, i = np.nonzero(tissue == Tissue.LUNG)
    z = grid.axis(2)[k]
    labels = np.full(k.shape, Tissue.LUNG, np.uint8)
    labels[fat[j, i]] = Tissue.FAT
    labels[z < dome[j, i]] = Tissue.LIVER
    in_vertebra = vertebra[j, i]
    disc = np.mod(z / mediastinum.disc_pitch + mediastinum.disc_phase, 1.0) < 0.2
    labels[in_vertebra < 1.0] = Tissue.CORTEX
    body = in_vertebra < 0.85
    labels[body] = np.where(disc[body], Tissue.CARTILAGE, Tissue.MARROW)
    tissue[k, j, i] = labels
    _draw_heart(mediastinum, grid, tissue)
    _draw_great_vessels(mediastinum, grid, tissue)


HEART_CHAMBERS = (  # left ventricle first, then right ventricle, left and right atrium: centre and semi-axes as
    # fractions of the heart's axes (the first axis points to the apex), wall thickness in mm
    ((0.1, 0.25, -0.05), (0.5, 0.3, 0.45), 10.0),
    ((0.05, -0.35, -0.05), (0.55, 0.35, 0.45), 4.0),
    ((-0.55, 0.2, 0.35), (0.35, 0.35, 0.35), 3.0),
    ((-0.45, -0.45, 0.2), (0.35, 0.3, 0.4), 3.0),
)


def _draw_heart(mediastinum: Mediastinum, grid: Grid, tissue: np.ndarray) -> None:
    """Four blood-filled chambers in their myocardium (thick around the left ventricle), in epicardial fat."""
    centre, axes = mediastinum.heart_centre.tolist(), mediastinum.heart_axes.tolist()
    extent = max(axes) + 12.0
    box = grid.box([value - extent for value in centre], [value + extent for value in centre])
    if box is None:
        return
    z, y, x = grid.coords(box)
    cos, sin = math.cos(mediastinum.heart_angle), math.sin(mediastinum.heart_angle)
    local = ((x - centre[0]) * cos - (y - centre[1]) * sin,  # towards the apex: left and anterior
             (x - centre[0]) * sin + (y - centre[1]) * cos,
             z - centre[2])
    chambers, walls, fat = [], [], None
    for middle, semi_axes, wall in HEART_CHAMBERS:
        middle = [fraction * axis for fraction, axis in zip(middle, axes)]
        semi_axes = [fraction * axis for fraction, axis in zip(semi_axes, axes)]
        chambers.append(_inside_ellipsoid(local, middle, semi_axes, 0.0))
        walls.append(_inside_ellipsoid(local, middle, semi_axes, wall))
        padding = _inside_ellipsoid(local, middle, semi_axes, wall + 6.0)
        fat = padding if fat is None else fat | padding
    # The thick left-ventricular wall (the septum included) stays muscle where other chambers would overlap it.
    septum = walls[0] & ~chambers[0]
    blood = chambers[0] | (np.logical_or.reduce(chambers[1:]) & ~septum)
    cavity = np.isin(tissue[box], (Tissue.LUNG, Tissue.FAT, Tissue.LIVER))
    labels = tissue[box]
    labels[cavity & fat] = Tissue.FAT
    labels[cavity & np.logical_or.reduce(walls)] = Tissue.MYOCARDIUM
    labels[cavity & blood] = Tissue.BLOOD


def _inside_ellipsoid(local, centre, semi_axes, grow: float) -> np.ndarray:
    """Whether points lie inside an ellipsoid whose semi-axes are lengthened by ``grow`` mm."""
    total = 0.0
    for coordinate, middle, axis in zip(local, centre, semi_axes):
        total = total + ((coordinate - middle) / (axis + grow)) ** 2
    return total < 1.0


def _paint_tube(grid: Grid, tissue: np.ndarray, start, end, radius: float, label: Tissue,
                only: tuple[Tissue, ...] | None = None) -> None:
    tube = capsule_distance(grid, start, end, radius)
    if tube is None:
        return
    box, distance = tube
    inside = distance > 0
    if only is not None:
        inside &= np.isin(tissue[box], only)
    tissue[box][inside] = label


def _draw_great_vessels(mediastinum: Mediastinum, grid: Grid, tissue: np.ndarray) -> None:
    """Ascending aorta, arch and descending aorta, superior vena cava, spinal canal, oesophagus and trachea."""
    low, high = float(grid.axis(2)[0]) - 10.0, float(grid.axis(2)[-1]) + 10.0
    heart_top = float(mediastinum.heart_centre[2] + 0.3 * mediastinum.heart_axes[2])
    radius = mediastinum.aorta_radius
    ascending, descending, arch = mediastinum.ascending, mediastinum.descending, mediastinum.arch_z
    _paint_tube(grid, tissue, (*ascending, heart_top), (*ascending, arch), radius, Tissue.BLOOD)
    _paint_tube(grid, tissue, (*ascending, arch), (*descending, arch), radius * 0.95, Tissue.BLOOD)
    _paint_tube(grid, tissue, (*descending, low), (*descending, arch), radius * 0.9, Tissue.BLOOD)
    cava_start = float(mediastinum.heart_centre[2] + 0.5 * mediastinum.heart_axes[2])
    _paint_tube(grid, tissue, (*mediastinum.vena_cava, cava_start), (*mediastinum.vena_cava, high),
                mediastinum.vena_cava_radius, Tissue.BLOOD)
    _paint_tube(grid, tissue, (0.0, mediastinum.canal_y, low), (0.0, mediastinum.canal_y, high), 7.0, Tissue.CSF)
    oesophagus_y = mediastinum.spine_y - mediastinum.vertebra_radius - 7.0
    _paint_tube(grid, tissue, (6.0, oesophagus_y, low), (6.0, oesophagus_y, high), 6.5, Tissue.MUSCLE,
                only=(Tissue.FAT, Tissue.LUNG))
    _paint_tube(grid, tissue, (0.0, oesophagus_y - 17.0, arch - 15.0), (0.0, oesophagus_y - 17.0, high), 9.0,
                Tissue.AIR, only=(Tissue.FAT, Tissue.LUNG))


def _draw_vessels_and_nodes(subject: Subject, grid: Grid, tissue: np.ndarray) -> None:
    """Internal mammary and lateral thoracic vessels along the chest wall, axillary lymph nodes in the fat."""
    thorax, mediastinum = subject.thorax, subject.mediastinum
    low, high = float(grid.axis(2)[0]) - 10.0, float(grid.axis(2)[-1]) + 10.0
    inner_front = thorax.centre_y - float(thorax.radius(np.asarray(0.0))) + thorax.sternal_muscle + thorax.rib_band
    for sign in (-1.0, 1.0):
        x = sign * mediastinum.mammary_x
        _paint_tube(grid, tissue, (x, inner_front + 3.0, low), (x, inner_front + 5.0, high),
                    mediastinum.mammary_radius, Tissue.BLOOD)
        top = thorax.surface_point(sign * 1.05, 90.0, outward=3.0)
        bottom = thorax.surface_point(sign * 1.25, -70.0, outward=3.0)
        _paint_tube(grid, tissue, top, bottom, 1.6, Tissue.BLOOD, only=(Tissue.FAT,))
    for node in subject.lymph_nodes:
        _draw_lymph_node(node, grid, tissue)


def _draw_lymph_node(node: LymphNode, grid: Grid, tissue: np.ndarray) -> None:
    """A kidney-shaped node with a fatty hilum."""
    box = grid.box(node.centre - max(node.axes) - 2.0, node.centre + max(node.axes) + 2.0)
    if box is None:
        return
    z, y, x = grid.coords(box)
    cos, sin = math.cos(node.angle), math.sin(node.angle)
    u = (x - node.centre[0]) * cos + (y - node.centre[1]) * sin
    v = -(x - node.centre[0]) * sin + (y - node.centre[1]) * cos
    w = z - node.centre[2]
    shape = (u / node.axes[0]) ** 2 + (v / node.axes[1]) ** 2 + (w / node.axes[2]) ** 2
    hilum = ((u / (0.5 * node.axes[0])) ** 2 + ((v - 0.8 * node.axes[1]) / (0.6 * node.axes[1])) ** 2
             + (w / (0.5 * node.axes[2])) ** 2) < 1.0
    labels = tissue[box]
    fat = labels == Tissue.FAT
    labels[fat & (shape < 1.0) & ~hilum] = Tissue.LYMPH_NODE


def _draw_nipple(breast: Breast, grid: Grid, tissue: np.ndarray, surface_distance: np.ndarray, skin: float) -> None:
    """A round-tipped nipple protruding from the apex, with a thickened areolar skin around it."""
    direction = breast.nipple_direction()
    apex = breast.centre(1.0)
    radius = breast.nipple_radius
    tube = capsule_distance(grid, apex - 5.0 * direction, apex + max(breast.nipple_length - radius, 0.5) * direction,
                            radius)
    if tube is None:
        return
    box, nipple = tube
    distance = np.maximum(surface_distance[box], nipple)
    surface_distance[box] = distance
    labels = tissue[box]
    labels[(distance > 0) & (labels == Tissue.AIR)] = Tissue.FAT
    z, y, x = grid.coords(box)
    near_apex = (x - apex[0]) ** 2 + (y - apex[1]) ** 2 + (z - apex[2]) ** 2 < (3.0 * radius) ** 2
    labels[(distance > 0) & (distance < 1.8 * skin) & near_apex] = Tissue.SKIN
    labels[nipple > 0] = Tissue.NIPPLE


def _draw_lung_vessels(rng: np.random.Generator, grid: Grid, tissue: np.ndarray, vessels: np.ndarray) -> None:
    """Pulmonary vessels: where two smooth fields both cross zero, a network of tortuous curves appears."""
    z, y, x = grid.coords()
    first = smooth_field(rng, z, y, x, 14.0)
    second = smooth_field(rng, z, y, x, 14.0)
    lung = tissue == Tissue.LUNG
    vessels[lung] = 0.9 * np.exp(-(first[lung] ** 2 + second[lung] ** 2) / 0.012)


def _breast_region(subject: Subject, grid: Grid, depth: np.ndarray, surface_distance: np.ndarray,
                   breast_slices: np.ndarray) -> np.ndarray:
    """Ground truth: body in front of the pectoralis and of a coronal cut at the mid-axillary side, over the
    slices that hold breast tissue (skin and nipple included; chest wall, heart, lungs and air excluded)."""
    cut_y = float(subject.thorax.surface_point(subject.breast_cut_psi, 0.0)[1])
    region = (surface_distance > 0) & (depth < 0) & (grid.axis(1)[None, :, None] < cut_y)
    region &= breast_slices[:, None, None]
    return region
