"""Random subjects for the synthetic breast DCE-MRI phantom: body, breasts, heart and vessels as parameters (mm).

The thorax is a super-ellipse in every axial slice, seen from its centre at angle psi (0 anterior, +pi/2 the
patient's left). Each breast is a cone-like solid hanging anteriorly from the chest wall (prone), described in its own
coordinates: depth fraction t (0 at the base, 1 at the apex) and the offset across its axis. :mod:`.phantom_anatomy`
draws a subject on an image grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .phantom_fields import choose, uniform

CRANIAL = np.array([0.0, 0.0, 1.0], np.float32)

DENSITY_FRACTIONS = {"a": (0.04, 0.15), "b": (0.15, 0.35), "c": (0.35, 0.55), "d": (0.55, 0.8)}
"""BI-RADS breast density category -> range of the FGT share of the glandular zone."""
DENSITY_PROBABILITIES = {"a": 0.1, "b": 0.4, "c": 0.4, "d": 0.1}


@dataclass
class Thorax:
    """Rib cage and the layers around it (mm). Angle psi: 0 anterior, +pi/2 patient left, pi posterior."""

    half_width: float
    front_depth: float
    back_depth: float
    exponent: float
    ripple: np.ndarray  #: rows (amplitude, phase) of the harmonics 2, 3, 4 of the outline
    taper: float  #: relative narrowing at 100 mm above or below the breast level
    sternal_muscle: float
    pectoral_muscle: float
    side_muscle: float
    back_muscle: float
    pectoral_floor_z: float  #: the pectoralis fades out below this height
    rib_band: float
    rib_pitch: float
    rib_slope: float
    rib_duty: float
    rib_phase: float
    sternum_half_width: float
    cartilage_half_width: float
    fat_front: float
    fat_side: float
    fat_back: float
    skin: float

    @property
    def centre_y(self) -> float:
        return self.front_depth

    def radius(self, psi: np.ndarray) -> np.ndarray:
        """Distance from the thorax centre to the outer muscle surface in direction ``psi``."""
        depth = np.where(np.cos(psi) > 0, self.front_depth, self.back_depth)
        radius = ((np.abs(np.sin(psi)) / self.half_width) ** self.exponent
                  + (np.abs(np.cos(psi)) / depth) ** self.exponent) ** (-1.0 / self.exponent)
        harmonics = sum(amplitude * np.cos(order * psi + phase)
                        for order, (amplitude, phase) in enumerate(self.ripple, start=2))
        return (radius * (1.0 + harmonics)).astype(np.float32)

    def z_scale(self, z: np.ndarray) -> np.ndarray:
        return (1.0 - self.taper * (z / 100.0) ** 2).astype(np.float32)

    def surface_point(self, psi: float, z: float, outward: float = 0.0) -> np.ndarray:
        """Point (x, y, z) at ``outward`` mm outside the muscle surface in direction ``psi`` at height ``z``."""
        radius = float(self.radius(np.asarray(psi))) * float(self.z_scale(np.asarray(z))) + outward
        return np.array([radius * np.sin(psi), self.centre_y - radius * np.cos(psi), z], dtype=np.float32)


@dataclass
class Breast:
    """One breast in its own coordinates: t = 0 at the base on the chest wall, t = 1 at the apex (nipple)."""

    side: str
    base: np.ndarray
    axis: np.ndarray  #: unit vector from the base to the apex (anterior, slightly lateral)
    across: np.ndarray  #: unit vector in the axial plane, perpendicular to the axis
    depth: float
    half_width: float
    half_height: float
    fullness: float  #: exponent of the depth profile: small = conical, large = round
    roundness: float
    apex_shift: tuple[float, float]  #: apex offset (across, cranial) in mm: nipple position, ptosis
    back: float  #: the solid continues this far behind the base, into the curved chest wall
    nipple_length: float
    nipple_radius: float
    subcutaneous_fat: float
    implant: float = 0.0  #: relative radius of a subglandular silicone implant; 0 = none

    def profile(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cross-section scale P(t) (1 at the base, 0 at the apex) and its derivative."""
        clipped = np.clip(t, 0.0, 0.999)
        inner = 1.0 - clipped**self.fullness
        scale = inner ** (1.0 / self.roundness)
        slope = (-(inner ** (1.0 / self.roundness - 1.0)) * self.fullness * clipped ** (self.fullness - 1.0)
                 / self.roundness)
        return scale, np.where(t > 0, slope, 0.0)

    def local(self, z, y, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth fraction t and cross-section offsets (across, cranial) of points, in mm."""
        vx, vy, vz = x - self.base[0], y - self.base[1], z - self.base[2]
        t = (vx * self.axis[0] + vy * self.axis[1]) / self.depth
        bend = np.clip(t, 0.0, 1.0) ** 2
        across = vx * self.across[0] + vy * self.across[1] - bend * self.apex_shift[0]
        cranial = vz - bend * self.apex_shift[1]
        return t, across, cranial

    def signed_distance(self, z, y, x, perturbation: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Approximate signed distance to the breast surface (mm, inside positive) and the depth fraction t."""
        t, across, cranial = self.local(z, y, x)
        scale, slope = self.profile(t)
        scale = np.maximum(scale * (1.0 + perturbation), 1e-3)
        u_across, u_cranial = across / (self.half_width * scale), cranial / (self.half_height * scale)
        rho = np.sqrt(u_across**2 + u_cranial**2)
        # Distance = level-set value over gradient norm, exact at the surface, where it matters (skin, margins).
        direction = np.sqrt((u_across / self.half_width) ** 2 + (u_cranial / self.half_height) ** 2)
        direction = np.where(rho > 1e-4, direction / np.maximum(rho, 1e-4),
                             1.0 / min(self.half_width, self.half_height))
        gradient = np.sqrt(direction**2 + (rho * slope / self.depth) ** 2)
        lateral = (1.0 - rho) * scale / gradient
        # Far outside, where the tapering tip makes that estimate collapse towards zero, use the radial excess.
        radial_excess = (1.0 - rho) * scale * min(self.half_width, self.half_height)
        lateral = np.where(rho > 1.5, np.minimum(lateral, radial_excess), lateral)
        return np.minimum(np.minimum(lateral, (1.0 - t) * self.depth), t * self.depth + self.back), t

    def centre(self, t: float) -> np.ndarray:
        t = float(np.clip(t, 0.0, 1.0))
        shift = self.apex_shift[0] * self.across + self.apex_shift[1] * CRANIAL
        return self.base + t * self.depth * self.axis + t * t * shift

    def point(self, t: float, rho: float, angle: float) -> np.ndarray:
        """Point at depth fraction ``t``, relative radius ``rho`` (0 on the axis, 1 on the surface), ``angle``."""
        scale = float(self.profile(np.asarray(t))[0])
        offset = rho * scale * (self.half_width * np.cos(angle) * self.across
                                + self.half_height * np.sin(angle) * CRANIAL)
        return self.centre(t) + offset

    def nipple_direction(self) -> np.ndarray:
        shift = self.apex_shift[0] * self.across + self.apex_shift[1] * CRANIAL
        tangent = self.depth * self.axis + 2.0 * shift
        return (tangent / np.linalg.norm(tangent)).astype(np.float32)

    def nipple_tip(self) -> np.ndarray:
        return self.centre(1.0) + self.nipple_length * self.nipple_direction()

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper (x, y, z) corners of a box holding the breast and its nipple."""
        points = [self.point(t, 1.08, angle) for t in np.linspace(0.0, 1.0, 11)
                  for angle in np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)]
        points += [point - self.back * self.axis for point in points[:24]] + [self.nipple_tip()]
        points = np.array(points)
        margin = self.nipple_radius + 4.0
        return points.min(axis=0) - margin, points.max(axis=0) + margin


@dataclass
class Mediastinum:
    """Heart, great vessels, spine and diaphragm (mm)."""

    heart_centre: np.ndarray
    heart_axes: np.ndarray
    heart_angle: float
    aorta_radius: float
    ascending: tuple[float, float]
    descending: tuple[float, float]
    arch_z: float
    vena_cava: tuple[float, float]
    vena_cava_radius: float
    half_width: float
    spine_y: float
    vertebra_radius: float
    canal_y: float
    disc_pitch: float
    disc_phase: float
    mammary_x: float
    mammary_radius: float
    dome_right_z: float
    dome_left_z: float
    dome_radius: float


@dataclass
class LymphNode:
    centre: np.ndarray
    axes: tuple[float, float, float]
    angle: float


@dataclass
class Subject:
    """Everything random about the person being scanned."""

    thorax: Thorax
    breasts: list[Breast]
    mediastinum: Mediastinum
    density: str
    gland_fraction: float
    lymph_nodes: list[LymphNode] = field(default_factory=list)
    vessels_per_breast: int = 8
    breast_cut_psi: float = 1.1  #: the breast region ends posteriorly at the chest-wall point at this angle


def sample_thorax(rng: np.random.Generator, body_size: float) -> Thorax:
    """Rib cage and body wall; ``body_size`` 0..1 scales width and subcutaneous fat (slim to large)."""
    return Thorax(
        half_width=118.0 + 36.0 * body_size + uniform(rng, -6, 6),
        front_depth=uniform(rng, 66, 84) + 8.0 * body_size,
        back_depth=uniform(rng, 76, 96) + 8.0 * body_size,
        exponent=uniform(rng, 2.0, 2.6),
        ripple=np.column_stack([rng.uniform(0.0, 0.025, 3), rng.uniform(0.0, 2 * np.pi, 3)]),
        taper=uniform(rng, 0.0, 0.06),
        sternal_muscle=uniform(rng, 1.5, 4.0),
        pectoral_muscle=uniform(rng, 7.0, 18.0),
        side_muscle=uniform(rng, 6.0, 12.0),
        back_muscle=uniform(rng, 35.0, 55.0),
        pectoral_floor_z=uniform(rng, -60.0, -20.0),
        rib_band=uniform(rng, 9.0, 13.0),
        rib_pitch=uniform(rng, 22.0, 30.0),
        rib_slope=uniform(rng, 0.3, 0.7),
        rib_duty=uniform(rng, 0.4, 0.55),
        rib_phase=uniform(rng, 0.0, 1.0),
        sternum_half_width=uniform(rng, 11.0, 17.0),
        cartilage_half_width=uniform(rng, 30.0, 50.0),
        fat_front=4.0 + 20.0 * body_size + uniform(rng, 0, 4),
        fat_side=6.0 + 36.0 * body_size + uniform(rng, 0, 6),
        fat_back=6.0 + 26.0 * body_size + uniform(rng, 0, 4),
        skin=uniform(rng, 1.5, 2.8),
    )


def sample_breast(rng: np.random.Generator, thorax: Thorax, side: str, size: float,
                  template: Breast | None = None, implant: float = 0.0) -> Breast:
    """One breast; ``size`` 0..1 (small to large); ``template`` (the other breast) makes the pair alike."""
    sign = 1.0 if side == "left" else -1.0
    psi = sign * (uniform(rng, 0.42, 0.72) if template is None else
                  float(np.clip(abs(np.arctan2(template.base[0], thorax.centre_y - template.base[1]))
                                + rng.normal(0, 0.05), 0.35, 0.8)))
    base_z = uniform(rng, -10, 10) if template is None else float(template.base[2] + rng.normal(0, 5))
    tilt = sign * np.deg2rad(uniform(rng, 4, 22))
    axis = np.array([np.sin(tilt), -np.cos(tilt), 0.0], np.float32)
    across = np.array([np.cos(tilt), np.sin(tilt), 0.0], np.float32)
    half_width = 52.0 + 38.0 * size + uniform(rng, -5, 5)
    base = thorax.surface_point(psi, base_z)
    # The chest wall curves away behind the base plane: continue the solid until it surely meets the wall.
    chest_radius = float(thorax.radius(np.asarray(psi)))
    back = chest_radius - float(np.sqrt(max(chest_radius**2 - (1.1 * half_width) ** 2, 0.0))) + 10.0
    like = template is not None
    return Breast(
        side=side, base=base, axis=axis, across=across,
        depth=55.0 + 120.0 * size + uniform(rng, -6, 6),
        half_width=half_width,
        half_height=40.0 + 28.0 * size + uniform(rng, -4, 4),
        fullness=template.fullness * uniform(rng, 0.9, 1.1) if like else uniform(rng, 1.15, 2.2),
        roundness=template.roundness if like else uniform(rng, 1.5, 2.2),
        apex_shift=(sign * uniform(rng, -8, 15), uniform(rng, -15, 5)),
        back=back,
        nipple_length=uniform(rng, 3, 9),
        nipple_radius=uniform(rng, 4, 7),
        subcutaneous_fat=uniform(rng, 2, 12),
        implant=implant,
    )


def sample_mediastinum(rng: np.random.Generator, thorax: Thorax) -> Mediastinum:
    heart_axes = np.array([uniform(rng, 48, 62), uniform(rng, 38, 50), uniform(rng, 45, 60)], np.float32)
    inner_front = thorax.centre_y - float(thorax.radius(np.asarray(0.0))) + thorax.sternal_muscle + thorax.rib_band
    heart_centre = np.array([uniform(rng, 10, 35), inner_front + uniform(rng, 3, 15) + heart_axes[1],
                             uniform(rng, -50, -15)], np.float32)
    back_surface = thorax.centre_y + float(thorax.radius(np.asarray(np.pi)))
    canal_y = back_surface - 0.55 * thorax.back_muscle
    vertebra_radius = uniform(rng, 15, 20)
    spine_y = canal_y - 9.0 - vertebra_radius
    aorta_radius = uniform(rng, 11, 15)
    ascending = (uniform(rng, -5, 8), float(heart_centre[1] - 0.3 * heart_axes[1]))
    dome_right = float(heart_centre[2] - 0.4 * heart_axes[2] + uniform(rng, -15, 10))
    return Mediastinum(
        heart_centre=heart_centre, heart_axes=heart_axes, heart_angle=np.deg2rad(uniform(rng, 20, 45)),
        aorta_radius=aorta_radius, ascending=ascending,
        descending=(uniform(rng, 15, 25), spine_y - vertebra_radius - aorta_radius - 2.0),
        arch_z=float(heart_centre[2] + heart_axes[2] + uniform(rng, 15, 35)),
        vena_cava=(ascending[0] - uniform(rng, 20, 26), ascending[1] + uniform(rng, -5, 8)),
        vena_cava_radius=uniform(rng, 8, 11),
        half_width=uniform(rng, 8, 15), spine_y=spine_y, vertebra_radius=vertebra_radius, canal_y=canal_y,
        disc_pitch=uniform(rng, 24, 30), disc_phase=uniform(rng, 0, 1),
        mammary_x=uniform(rng, 22, 32), mammary_radius=uniform(rng, 1.3, 2.2),
        dome_right_z=dome_right, dome_left_z=dome_right - uniform(rng, 5, 25), dome_radius=uniform(rng, 120, 180),
    )


def sample_lymph_nodes(rng: np.random.Generator, thorax: Thorax, breasts: list[Breast]) -> list[LymphNode]:
    """0-3 axillary lymph nodes in the fat lateral and cranial to the breasts (enhancing, not lesions)."""
    nodes = []
    for _ in range(int(rng.integers(0, 4))):
        breast = breasts[int(rng.integers(0, len(breasts)))]
        sign = 1.0 if breast.side == "left" else -1.0
        z = float(breast.base[2] + breast.half_height * uniform(rng, 0.3, 0.9))
        centre = thorax.surface_point(sign * uniform(rng, 0.9, 1.25), z, outward=uniform(rng, 5, 12))
        nodes.append(LymphNode(centre, (uniform(rng, 5, 11), uniform(rng, 3, 6), uniform(rng, 3, 6)),
                               uniform(rng, 0, np.pi)))
    return nodes


def sample_subject(rng: np.random.Generator) -> Subject:
    body_size = float(rng.beta(1.8, 2.0))
    thorax = sample_thorax(rng, body_size)
    breast_size = float(np.clip(0.6 * body_size + 0.4 * rng.beta(1.5, 1.5) + rng.normal(0, 0.08), 0.02, 1.0))
    first_side, second_side = ("left", "right") if rng.random() < 0.5 else ("right", "left")
    implant = uniform(rng, 0.55, 0.8) if rng.random() < 0.06 else 0.0
    first = sample_breast(rng, thorax, first_side, breast_size, implant=implant)
    second_size = float(np.clip(breast_size * uniform(rng, 0.85, 1.15), 0.02, 1.0))
    breasts = [first, sample_breast(rng, thorax, second_side, second_size, template=first, implant=implant)]
    breasts.sort(key=lambda breast: breast.side)
    density = choose(rng, DENSITY_PROBABILITIES)
    return Subject(
        thorax=thorax, breasts=breasts, mediastinum=sample_mediastinum(rng, thorax), density=density,
        gland_fraction=uniform(rng, *DENSITY_FRACTIONS[density]),
        lymph_nodes=sample_lymph_nodes(rng, thorax, breasts),
        vessels_per_breast=int(rng.integers(3, 13)),
        breast_cut_psi=uniform(rng, 1.0, 1.25),
    )
