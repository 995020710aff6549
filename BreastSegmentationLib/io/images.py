"""Volumes: reading, checking, writing and resampling SimpleITK images.

Every image keeps its spacing, origin and direction. Problems a user can fix (missing or damaged files, 2-D or
4-D data, NaN voxels, volumes that do not overlap) raise :class:`InputError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

from ..errors import InputError
from .outputs import atomic_output_dir, atomic_output_file

#: File formats read and written by name; a DICOM series is read from its folder.
SINGLE_FILE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
#: Formats whose header names a separate data file written beside it.
DETACHED_HEADER_SUFFIXES: tuple[str, ...] = (".nhdr", ".mhd")
IMAGE_SUFFIXES: tuple[str, ...] = SINGLE_FILE_SUFFIXES + DETACHED_HEADER_SUFFIXES

#: Smallest fraction of the pre-contrast box the post-contrast volume must cover before it is resampled onto it.
MINIMUM_OVERLAP = 0.5

_COMPLEX_PIXEL_TYPES = (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64)
_FLOAT_PIXEL_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64)
_MASK_INTEGER_TOLERANCE = 1e-3


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a NIfTI, NRRD or MetaImage file, or the one DICOM series in a folder, with its geometry."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    try:
        return _read_dicom_folder(path) if path.is_dir() else _read_image_file(path)
    except OSError as error:
        raise InputError(f"cannot be read ({error.strerror or error})", path) from None


def read_volume(path: str | os.PathLike, name: str = "image") -> sitk.Image:
    """Read an image and check that it is a usable 3-D scalar volume (see :func:`check_volume`)."""
    return check_volume(read_image(path), name, path=path)


def check_volume(image: sitk.Image, name: str, path: str | os.PathLike | None = None) -> sitk.Image:
    """Return ``image`` unchanged if it is a non-empty 3-D scalar volume without NaN or infinite voxels."""
    _require_3d_scalar(image, name, path)
    _require_finite(image, name, path)
    return image


def check_mask(image: sitk.Image, name: str, path: str | os.PathLike | None = None) -> sitk.Image:
    """Return ``image`` unchanged if it is a 3-D mask: integer labels, or values that round to 0/1."""
    _require_3d_scalar(image, name, path)
    _require_finite(image, name, path)
    if image.GetPixelID() in _FLOAT_PIXEL_TYPES:
        values = sitk.GetArrayViewFromImage(image)
        fractional = np.abs(values - np.rint(values)) > _MASK_INTEGER_TOLERANCE
        outside_unit_range = (values < 0.0) | (values > 1.0)
        offending = fractional & outside_unit_range
        if offending.any():
            raise InputError(
                f"{name} is not a mask: it has values that are neither integers nor between 0 and 1 "
                f"(e.g. {values[offending].flat[0]:g}); an image was probably given where a mask is expected",
                path,
            )
    return image


def binary_mask(image: sitk.Image) -> sitk.Image:
    """UInt8 mask, 1 where the value rounded to the nearest integer is not zero, with ``image``'s geometry."""
    mask = sitk.GetImageFromArray((np.rint(sitk.GetArrayViewFromImage(image)) != 0).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` atomically (parents created; nothing partial on error); return the path written."""
    path = Path(path)
    lower_name = path.name.lower()
    if not lower_name.endswith(IMAGE_SUFFIXES):
        raise InputError(f"cannot write this format; use one of {', '.join(IMAGE_SUFFIXES)}", path)
    if lower_name.endswith(DETACHED_HEADER_SUFFIXES):
        # The header records its data file's name, so both files are staged under their final names.
        with atomic_output_dir(path.parent) as staging:
            sitk.WriteImage(image, str(staging / path.name), useCompression=compress)
    else:
        with atomic_output_file(path) as temporary:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
    return path


def resample_like(image: sitk.Image, reference: sitk.Image, is_mask: bool = False) -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid: linear (Float32/64) for images, nearest neighbour for masks.

    Masks keep their pixel type so labels stay labels; points outside ``image`` get 0. Only the block of
    ``reference``'s grid that ``image`` covers is interpolated and the rest filled with 0, so putting a crop back
    onto a whole study's grid costs the crop's share of the voxels, not the study's.
    """
    block, start = resampled_block(image, reference, is_mask)
    if np.array_equal(block.GetSize(), reference.GetSize()):
        return block
    return paste_into_empty(block, start, reference)


def resampled_block(image: sitk.Image, reference: sitk.Image, is_mask: bool = False) -> tuple[sitk.Image, list[int]]:
    """``image`` resampled as :func:`resample_like` does, on the block of ``reference``'s grid that it covers only
    (possibly empty), and the block's (x, y, z) start index in ``reference``: for callers that change the block's
    values before :func:`paste_into_empty` puts it on the whole grid."""
    if is_mask:
        interpolator, pixel_type = sitk.sitkNearestNeighbor, image.GetPixelID()
    else:
        interpolator = sitk.sitkLinear
        pixel_type = sitk.sitkFloat64 if image.GetPixelID() == sitk.sitkFloat64 else sitk.sitkFloat32
    start, stop = _covered_block(image, reference)
    index = [int(v) for v in start]
    block_reference = block_grid(reference, [int(v) for v in np.maximum(stop - start, 0)], index)
    if np.any(stop <= start):
        return sitk.Cast(block_reference, pixel_type), index
    return sitk.Resample(image, block_reference, sitk.Transform(), interpolator, 0.0, pixel_type), index


def block_grid(image: sitk.Image, size: list[int], index: list[int]) -> sitk.Image:
    """An empty UInt8 image on the grid of ``image``'s block of ``size`` voxels from ``index`` (x, y, z, as for
    ``sitk.RegionOfInterest``): a reference grid for resampling and geometry that copies no voxel."""
    block = sitk.Image(size, sitk.sitkUInt8)
    block.SetSpacing(image.GetSpacing())
    block.SetDirection(image.GetDirection())
    block.SetOrigin(image.TransformIndexToPhysicalPoint(index))
    return block


def empty_like(reference: sitk.Image, pixel_type: int) -> sitk.Image:
    """An image of ``reference``'s grid and ``pixel_type``, 0 everywhere."""
    empty = sitk.Image(reference.GetSize(), pixel_type)
    empty.CopyInformation(reference)
    return empty


def paste_into_empty(block: sitk.Image, start: list[int], reference: sitk.Image) -> sitk.Image:
    """An image of ``reference``'s grid and ``block``'s pixel type, 0 but for ``block`` placed at index ``start``.

    Pasted in place (SimpleITK's slice assignment): ``sitk.Paste`` would first copy the whole empty image.
    """
    full = empty_like(reference, block.GetPixelID())
    if 0 in block.GetSize():
        return full
    full[tuple(slice(first, first + size) for first, size in zip(start, block.GetSize()))] = block
    return full


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding the non-zero voxels of a non-empty array, from its projections on the axes: a
    tenth of the time of ``ndimage.find_objects``, which labels every voxel. The array itself is read twice (its
    profile along the first axis, and its projection along it, in which the other axes are found)."""
    mask = np.asarray(mask)
    if mask.ndim == 1:
        found = np.flatnonzero(mask)
        return (slice(int(found[0]), int(found[-1]) + 1),)
    profile = np.any(mask, axis=tuple(range(1, mask.ndim)))
    return bounding_box(profile) + bounding_box(np.any(mask, axis=0))


#: Histogram bins of :func:`otsu_threshold`, as ITK's Otsu filter has by default.
OTSU_BINS = 128


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of ``values`` (any shape): the upper edge of the histogram bin (``bins`` equal bins from the
    smallest value to the largest) that best separates two classes; the largest value when all are equal.

    Why not ITK's OtsuThresholdImageFilter: its histogram filter took four times as long on a study's volumes, for
    thresholds within a hundredth of a bin of this one's.
    """
    values = np.ravel(values)
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return high
    width = (high - low) / bins
    counts = np.bincount(np.minimum(((values - low) / width).astype(np.intp), bins - 1), minlength=bins)
    centres = low + (np.arange(bins) + 0.5) * width
    below = np.cumsum(counts, dtype=np.float64)
    above = below[-1] - below
    sum_below = np.cumsum(counts * centres)
    mean_below = sum_below / np.maximum(below, 1.0)
    mean_above = (sum_below[-1] - sum_below) / np.maximum(above, 1.0)
    between_class = below * above * (mean_below - mean_above) ** 2
    return low + (int(np.argmax(between_class[:-1])) + 1) * width


def cut_to_mask(image: sitk.Image, mask_zyx: np.ndarray, margin: int = 0) -> sitk.Image:
    """The box of ``image`` that holds the non-zero voxels of ``mask_zyx`` (its array, not empty), grown by
    ``margin`` voxels and clipped to the image, with its place in space: resampled, it costs the box's voxels."""
    z, y, x = bounding_box(mask_zyx)
    start = np.maximum([x.start - margin, y.start - margin, z.start - margin], 0)
    stop = np.minimum([x.stop + margin, y.stop + margin, z.stop + margin], image.GetSize())
    return sitk.RegionOfInterest(image, [int(v) for v in stop - start], [int(v) for v in start])


def _covered_block(image: sitk.Image, reference: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The index range ``[start, stop)`` (x, y, z) of ``reference``'s voxels that may take a value from ``image``:
    the voxels whose centres lie in ``image``'s box (voxel edges included), with one voxel to spare on each side,
    clipped to ``reference``."""
    edges = [(-0.5, size - 0.5) for size in image.GetSize()]
    corners = np.array([reference.TransformPhysicalPointToContinuousIndex(
        image.TransformContinuousIndexToPhysicalPoint(corner)) for corner in itertools.product(*edges)])
    size = np.asarray(reference.GetSize())
    start = np.clip(np.floor(corners.min(axis=0)).astype(int) - 1, 0, size)
    stop = np.clip(np.ceil(corners.max(axis=0)).astype(int) + 2, 0, size)
    return start, stop


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-4) -> bool:
    """True if size matches exactly and spacing, origin (mm) and direction agree within ``tolerance``."""
    return (
        a.GetDimension() == b.GetDimension()
        and a.GetSize() == b.GetSize()
        and np.allclose(a.GetSpacing(), b.GetSpacing(), rtol=0.0, atol=tolerance)
        and np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0.0, atol=tolerance)
        and np.allclose(a.GetDirection(), b.GetDirection(), rtol=0.0, atol=tolerance)
    )


def index_to_physical_matrix(image: sitk.Image) -> np.ndarray:
    """The 3x3 matrix ``direction @ diag(spacing)`` taking index steps to physical (LPS, mm) steps."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return direction * np.asarray(image.GetSpacing(), dtype=float)


def physical_overlap(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction (0..1) of ``a``'s physical box (voxel edges included) that lies inside ``b``'s box.

    Exact for any pair of directions: both boxes are written as half-spaces and the volume of their
    intersection polyhedron is measured (scipy's Qhull), so oblique or rotated volumes are not over-estimated.
    """
    halfspaces = np.vstack([_box_halfspaces(a), _box_halfspaces(b)])
    interior = _deepest_interior_point(halfspaces)
    if interior is None:
        return 0.0
    try:
        corners = HalfspaceIntersection(halfspaces, interior).intersections
        shared_volume = ConvexHull(corners).volume
    except QhullError:  # an intersection too thin for Qhull to give a volume
        return 0.0
    box_volume = abs(np.linalg.det(index_to_physical_matrix(a))) * math.prod(a.GetSize())
    return float(min(1.0, shared_volume / box_volume))


def align_post_to_pre(pre: sitk.Image, post: sitk.Image, pre_name: str, post_name: str) -> sitk.Image:
    """Return ``post`` on ``pre``'s grid: unchanged when the grids match, else linearly resampled.

    Refuses volumes that do not overlap, or where ``post`` covers less than :data:`MINIMUM_OVERLAP` of ``pre``:
    they most likely come from different studies or positions.
    """
    if same_geometry(pre, post):
        return post
    overlap = physical_overlap(pre, post)
    if overlap == 0.0:
        raise InputError(
            f"pre- and post-contrast volumes do not overlap ({pre_name} and {post_name}); "
            "check that both belong to the same study"
        )
    if overlap < MINIMUM_OVERLAP:
        raise InputError(
            f"pre- and post-contrast volumes overlap by only {overlap:.0%}: {post_name} covers {overlap:.0%} of "
            f"{pre_name} (at least {MINIMUM_OVERLAP:.0%} is needed); check that both belong to the same study"
        )
    return resample_like(post, pre)


def reorient_to_ras(image: sitk.Image) -> sitk.Image:
    """Permute and flip the axes so that i, j, k point towards patient Right, Anterior, Superior (RAS+).

    SimpleITK's ``DICOMOrient`` codes name the direction each index axis points *to* (identity = "LPS", as in
    DICOM); checked with SimpleITK 2.5: "RAS" gives the direction diag(-1, -1, 1) in LPS, i.e. axes towards +R,
    +A, +S, the orientation nibabel and Slicer call RAS. Voxels only move, so each keeps its physical point.
    """
    return reorient(image, "RAS")


def orientation_code(image: sitk.Image) -> str:
    """The DICOMOrient code of ``image``'s axes ("LPS" for the identity direction)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


def reorient(image: sitk.Image, code: str) -> sitk.Image:
    """``image`` with its axes permuted and flipped towards ``code`` (DICOMOrient's convention); ``image`` itself,
    not a copy, when it already is (the copy of a large volume costs a tenth of a second each time)."""
    if orientation_code(image) == code:
        return image
    return sitk.DICOMOrient(image, code)


def as_float32(image: sitk.Image) -> sitk.Image:
    """``image`` as Float32: itself when it already is, else a cast copy."""
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


def _read_image_file(path: Path) -> sitk.Image:
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise InputError(_unsupported_file_problem(path), path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        if path.name.lower().endswith((".nii", ".nii.gz")):
            return _read_nifti(path, reader)
        return reader.Execute()
    except RuntimeError as error:
        raise InputError(
            f"cannot be read as an image: it is truncated, damaged or not in the format its name says "
            f"({_itk_reason(error)})",
            path,
        ) from None


def _read_dicom_folder(folder: Path) -> sitk.Image:
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputError("folder holds no DICOM series (sub-folders are not searched)", folder)
    if len(series_ids) > 1:
        raise InputError(
            f"folder holds {len(series_ids)} DICOM series, one is needed; {_dicom_inspect_hint(folder)}", folder
        )
    # Imported here: pydicom (and the tqdm it imports when present) is needed for DICOM folders only, and the Slicer
    # module imports this module before it has installed the packages it lacks.
    from .dicom import is_enhanced_image_file, read_enhanced_volume

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_ids[0])
    if len(files) == 1 and is_enhanced_image_file(files[0]):
        return read_enhanced_volume(files[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"DICOM series cannot be read ({_itk_reason(error)})", folder) from None
    _require_one_volume_per_series(reader, folder)
    return image


def _require_one_volume_per_series(reader: sitk.ImageSeriesReader, folder: Path) -> None:
    """Several phases sharing one series UID put several slices at each position: refuse to stack them."""
    slice_count = len(reader.GetFileNames())
    positions = {
        reader.GetMetaData(index, "0020|0032").strip()
        for index in range(slice_count)
        if reader.HasMetaDataKey(index, "0020|0032")
    }
    if positions and len(positions) < slice_count:
        raise InputError(
            f"DICOM series has {slice_count} slices at only {len(positions)} positions: it holds several volumes "
            f"(phases); {_dicom_inspect_hint(folder)}",
            folder,
        )


def _dicom_inspect_hint(folder: Path) -> str:
    return f"run 'breastseg inspect --dicom {folder}' to list the series, then pass the folder of one"


def _unsupported_file_problem(path: Path) -> str:
    formats = f"expected a DICOM folder or one of {', '.join(IMAGE_SUFFIXES)}"
    with open(path, "rb") as handle:
        is_dicom = handle.read(132)[128:] == b"DICM"
    if is_dicom:
        return f"is a single DICOM file; pass the folder that holds its series ({formats})"
    return f"unsupported file type; {formats}"


#: NIfTI datatype codes of the scalar voxel types read straight from the file's bytes, and their numpy types.
_NIFTI_TYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8,
                512: np.uint16, 768: np.uint32}


def _read_nifti(path: Path, reader: sitk.ImageFileReader) -> sitk.Image:
    """Read a NIfTI file, decompressing it once.

    ITK silently fills a truncated NIfTI with zeros and reads NaN voxels as 0, so the voxels are checked on the
    file's own bytes; a plain 3-D scalar volume is then built from those same bytes with the geometry ITK read
    from the header, rather than decompressed a second time by ITK. Anything else (scaled, vector, 4-D or unusual
    voxel types) is left to ITK's reader.
    """
    voxels = _checked_nifti_voxels(path, reader)
    if voxels is None or reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1 \
            or float(reader.GetMetaData("scl_slope")) not in (0.0, 1.0) or float(reader.GetMetaData("scl_inter")):
        return reader.Execute()
    native = np.asarray(voxels, dtype=voxels.dtype.newbyteorder("="))
    image = sitk.GetImageFromArray(native.reshape(tuple(reversed(reader.GetSize()))))
    if image.GetPixelID() != reader.GetPixelID():
        return reader.Execute()
    image.SetSpacing(reader.GetSpacing())
    image.SetOrigin(reader.GetOrigin())
    image.SetDirection(reader.GetDirection())
    return image


def _checked_nifti_voxels(path: Path, reader: sitk.ImageFileReader) -> np.ndarray | None:
    """The stored voxels (x fastest), after checking that none is missing and none is NaN or infinite; None for
    voxel types not in :data:`_NIFTI_TYPES` (only completeness is checked then)."""
    dimensions = int(reader.GetMetaData("dim[0]"))
    count = math.prod(int(reader.GetMetaData(f"dim[{axis}]")) for axis in range(1, dimensions + 1))
    offset = int(float(reader.GetMetaData("vox_offset")))
    needed = offset + count * int(reader.GetMetaData("bitpix")) // 8
    payload = _uncompressed_bytes(path, needed)
    if len(payload) < needed:
        raise InputError(f"file is truncated: {len(payload)} of {needed} bytes present", path)
    voxel_type = _NIFTI_TYPES.get(int(reader.GetMetaData("datatype")))
    if voxel_type is None:
        return None
    byte_order = "<" if int.from_bytes(payload[:4], "little") in (348, 540) else ">"
    values = np.frombuffer(payload, dtype=np.dtype(voxel_type).newbyteorder(byte_order), count=count, offset=offset)
    if values.dtype.kind == "f":
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise InputError(f"contains {bad} NaN or infinite voxels", path)
    return values


#: Deflate expands its input at most about this many times (zlib's technical details).
DEFLATE_MAX_RATIO = 1032


def _uncompressed_bytes(path: Path, expected_bytes: int = 0) -> bytes:
    """The file's bytes, gunzipped when compressed. ``expected_bytes`` (what the header says the file holds) sizes
    zlib's output buffer at once: it otherwise grows by doubling and copying, a quarter of the decompression's
    time on a study's volume. The buffer is capped at deflate's largest expansion of the compressed bytes, so a
    damaged header cannot ask for more. A file of several gzip members (zlib reads the first) is left to the gzip
    module."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        buffer_bytes = min(max(expected_bytes, zlib.DEF_BUF_SIZE), DEFLATE_MAX_RATIO * len(data))
        payload = zlib.decompress(data, wbits=31, bufsize=buffer_bytes)
        return payload if len(payload) >= expected_bytes else gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise InputError(f"compressed file is truncated or damaged ({error})", path) from None


def _itk_reason(error: RuntimeError) -> str:
    """The informative line of an ITK/SimpleITK exception, without source paths and object addresses."""
    lines = [line.strip() for line in str(error).splitlines() if "ERROR" in line]
    reason = lines[-1] if lines else str(error).strip().splitlines()[-1]
    return re.sub(r"^.*?ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", reason)


def _require_3d_scalar(image: sitk.Image, name: str, path: str | os.PathLike | None) -> None:
    size = image.GetSize()
    if image.GetDimension() == 2:
        raise InputError(f"{name} is 2-D, a 3-D volume is needed", path)
    if image.GetDimension() == 4:
        raise InputError(
            f"{name} is 4-D ({size[3]} volumes of {_size_text(size[:3])}), a single 3-D volume is needed: "
            "pass one phase",
            path,
        )
    if image.GetDimension() != 3:
        raise InputError(f"{name} has {image.GetDimension()} dimensions, a 3-D volume is needed", path)
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} values per voxel (a vector or colour image), "
            "a scalar 3-D volume is needed",
            path,
        )
    if image.GetPixelID() in _COMPLEX_PIXEL_TYPES:
        raise InputError(f"{name} has complex voxels, a real-valued volume is needed", path)
    if 0 in size:
        raise InputError(f"{name} is empty (size {_size_text(size)})", path)
    if 1 in size:
        raise InputError(f"{name} is 2-D (a single slice, size {_size_text(size)}), a 3-D volume is needed", path)


def _require_finite(image: sitk.Image, name: str, path: str | os.PathLike | None) -> None:
    if image.GetPixelID() not in _FLOAT_PIXEL_TYPES:
        return
    values = sitk.GetArrayViewFromImage(image)
    if np.isfinite(values).all():  # one sweep in the usual case; the kinds are counted only for the message
        return
    counts = {"NaN": int(np.isnan(values).sum()), "infinite": int(np.isinf(values).sum())}
    present = [f"{count} {kind}" for kind, count in counts.items() if count]
    if present:
        raise InputError(f"{name} contains {' and '.join(present)} voxels", path)


def _size_text(size: tuple[int, ...]) -> str:
    return "x".join(str(extent) for extent in size)


def _box_halfspaces(image: sitk.Image) -> np.ndarray:
    """Rows ``[n, c]`` with unit ``n`` and ``n . x + c <= 0`` exactly for the points of the image's voxel box."""
    to_index = np.linalg.inv(index_to_physical_matrix(image))
    origin_index = to_index @ np.asarray(image.GetOrigin(), dtype=float)
    upper = np.asarray(image.GetSize(), dtype=float) - 0.5
    # index = to_index @ x - origin_index must satisfy -0.5 <= index <= upper
    rows = np.vstack([
        np.hstack([to_index, (-origin_index - upper)[:, None]]),
        np.hstack([-to_index, (origin_index - 0.5)[:, None]]),
    ])
    return rows / np.linalg.norm(rows[:, :3], axis=1, keepdims=True)


def _deepest_interior_point(halfspaces: np.ndarray, minimum_depth_mm: float = 1e-6) -> np.ndarray | None:
    """The centre of the largest ball inside all half-spaces (a linear programme), or None if there is none."""
    normals, offsets = halfspaces[:, :3], halfspaces[:, 3]
    constraints = np.hstack([normals, np.ones((len(normals), 1))])  # n . x + r <= -c (unit normals)
    result = linprog(
        c=[0.0, 0.0, 0.0, -1.0],
        A_ub=constraints,
        b_ub=-offsets,
        bounds=[(None, None)] * 3 + [(0.0, None)],
        method="highs",
    )
    if not result.success or result.x[3] <= minimum_depth_mm:
        return None
    return result.x[:3]
