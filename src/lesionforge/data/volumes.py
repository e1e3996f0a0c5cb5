"""3D volumes (NIfTI via nibabel; DICOM series, MHA, NRRD via SimpleITK) sliced to 2D samples.

Volumes are held in index order ``(X, Y, Z)`` (nibabel's order; SimpleITK arrays are transposed to match).
A 2D slice is ``volume.take(index, axis)`` transposed, so for ``axis=2`` rows run along Y and columns along X.
Intensities are normalised per volume and stored in the sample's :class:`SliceRef`, so every slice of a volume
shares them. ``window`` (CT): clip to a window (given, or the volume's 0.5-99.5 percentiles) and scale it to
uint8 0..255. ``zscore`` (MRI, as nnU-Net): clip to the 0.5-99.5 percentiles, subtract the clipped volume's mean,
divide by its std, and map z = -3..3 linearly to uint8 0..255 (the pipeline's tensors then hold z / 3 in [-1, 1];
the rare voxels beyond 3 std saturate). ``auto`` picks ``zscore`` when the dataset's ``dataset.json`` names an MRI
modality (:mod:`lesionforge.data.decathlon`).

Slice ids are ``<case>/<axis>_<index>`` (``hippocampus_001/2_0012``): :func:`case_of` recovers the case, so a
split file may list cases and select every slice of each (:func:`lesionforge.data.splits.expand_cases`).
Slices without foreground are dropped unless ``negatives``: then they are labelled samples with an empty mask
(``SliceRef.area == 0``), usable as negatives in training and as inpainting backgrounds, and needed to
reassemble a whole volume for its 3D Dice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from lesionforge.data.decathlon import Normalisation, default_normalisation
from lesionforge.data.layout import IMAGE_DIRS, MASK_DIRS, FolderScan, first_dir, is_volume
from lesionforge.data.manifest import Sample, SliceRef
from lesionforge.errors import (
    CorruptFileError,
    DataError,
    DuplicateIdError,
    MissingDependencyError,
    NonBinaryMaskError,
    SizeMismatchError,
)

#: ``z`` of the z-score normalisation mapped to uint8 0 and 255
Z_RANGE = 3.0
_SLICE_ID = re.compile(r"^(?P<case>.+)/(?P<axis>[012])_(?P<index>\d{4,})$")
_VOLUME_SUFFIX = re.compile(r"(\.nii\.gz|\.nii|\.mha|\.mhd|\.nrrd)$", re.IGNORECASE)
#: nnU-Net names image channels ``<case>_0000``; a mask may carry ``_mask``/``_seg``/``_label``.
_CASE_SUFFIX = re.compile(r"(_0000|_(mask|seg|label|labels|gt))$", re.IGNORECASE)


def volume_stem(path: str | Path) -> str:
    """Case name of a volume file or DICOM folder: ``case_01.nii.gz`` -> ``case_01``."""
    return _CASE_SUFFIX.sub("", _VOLUME_SUFFIX.sub("", Path(path).name))


def slice_id(case: str, axis: int, index: int) -> str:
    """Sample id of a volume slice: ``<case>/<axis>_<index:04d>``."""
    return f"{case}/{axis}_{int(index):04d}"


def case_of(sample_id: str) -> str | None:
    """The case (volume) of a slice id, or None for an id that is not a volume slice."""
    m = _SLICE_ID.match(sample_id)
    return m["case"] if m else None


def case_groups(ids: Iterable[str]) -> dict[str, str]:
    """Each id's case (an id that is not a volume slice is its own group): the groups of a paired bootstrap that
    resamples cases, each with all its slices (``experiment.stats.bootstrap_paired``)."""
    return {i: case_of(i) or i for i in ids}


def slice_order(sample_id: str) -> tuple[int, int]:
    """``(axis, index)`` of a slice id (for stacking slices back into their volume)."""
    m = _SLICE_ID.match(sample_id)
    if m is None:
        raise ValueError(f"{sample_id!r} is not a volume slice id")
    return int(m["axis"]), int(m["index"])


#: the share of a case's foreground range at each end that :func:`position_subsets` calls its ends
ENDS_SHARE = 0.25


def position_subsets(ids: list[str], ends: float = ENDS_SHARE) -> dict[str, list[str]]:
    """Foreground slices grouped by where they lie along their case's foreground range: ``structure-ends`` (the
    outer ``ends`` share at each end, where the structure is small and thin) and ``structure-middle`` (the rest).

    ``ids`` are the slices with foreground (of any cases; ids that are not volume slices are left out). A slice's
    position is ``(index - first) / (last - first)`` over its case's slices in ``ids`` along their axis; a case with
    one slice counts as middle. A per-slice mean hides where along a structure an arm gains or loses (a small
    structure's end slices are few pixels, the hardest to draw and to segment), so results of volumes report both.
    """
    if not 0 < ends < 0.5:
        raise ValueError(f"ends must lie in (0, 0.5), got {ends}")
    by_case: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for i in ids:
        case = case_of(i)
        if case is not None:
            axis, index = slice_order(i)
            by_case.setdefault((case, axis), []).append((index, i))
    out: dict[str, list[str]] = {"structure-ends": [], "structure-middle": []}
    for slices in by_case.values():
        first, last = min(k for k, _ in slices), max(k for k, _ in slices)
        for k, i in slices:
            pos = 0.5 if last == first else (k - first) / (last - first)
            out["structure-ends" if pos < ends or pos > 1 - ends else "structure-middle"].append(i)
    return {name: sorted(v) for name, v in out.items()}


def read_volume(path: str | Path) -> np.ndarray:
    """Read a 3D volume in ``(X, Y, Z)`` index order, native dtype. DICOM: a folder of ``.dcm`` files.

    A volume that is not 3D after dropping singleton axes (a 4D series, a multi-channel file) or that holds NaN or
    infinite voxels is a :class:`CorruptFileError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise CorruptFileError(path, "volume not found")
    if re.search(r"\.nii(\.gz)?$", path.name, re.IGNORECASE):
        import nibabel as nib

        try:
            arr = np.asanyarray(nib.load(str(path)).dataobj)
        except Exception as e:  # noqa: BLE001 - nibabel raises many types; all mean "unreadable"
            raise CorruptFileError(path, f"cannot read NIfTI ({e})") from e
    else:
        arr = _read_sitk(path)
    arr = np.squeeze(arr)
    if arr.ndim != 3:
        raise CorruptFileError(path, f"expected a 3D volume, got {arr.ndim}D shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise CorruptFileError(path, f"{bad} NaN or infinite voxels (of {arr.size})")
    return arr


def _read_sitk(path: Path) -> np.ndarray:
    try:
        import SimpleITK as sitk
    except ImportError as e:
        raise MissingDependencyError(
            f"{path}: reading DICOM/MHA/NRRD needs SimpleITK; pip install 'lesionforge[dicom]'"
        ) from e
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            files = reader.GetGDCMSeriesFileNames(str(path))
            if not files:
                raise CorruptFileError(path, "no DICOM series in folder")
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise CorruptFileError(path, f"cannot read volume ({e})") from e
    return np.transpose(sitk.GetArrayFromImage(image))  # SimpleITK gives (Z, Y, X)


@lru_cache(maxsize=2)
def _cached_volume(path: str) -> np.ndarray:
    # slices of one volume are read one after another: keep the image and its label in memory
    return read_volume(path)


def intensity_window(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """The ``(low, high)`` intensities at the given percentiles of a volume."""
    lo, hi = np.percentile(volume.astype(np.float32), percentiles)
    return float(lo), float(hi)


def window_to_uint8(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip ``image`` to ``window`` and scale it linearly to uint8 [0, 255]."""
    lo, hi = window
    scaled = (image.astype(np.float32) - lo) / max(hi - lo, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def zscore_stats(volume: np.ndarray, window: tuple[float, float]) -> tuple[float, float]:
    """``(mean, std)`` of the volume clipped to ``window`` (std floored so a flat volume cannot divide by 0)."""
    clipped = np.clip(volume.astype(np.float32), *window)
    return float(clipped.mean()), max(float(clipped.std()), 1e-6)


def zscore_to_uint8(image: np.ndarray, window: tuple[float, float], stats: tuple[float, float]) -> np.ndarray:
    """Clip to ``window``, z-score with ``stats`` = (mean, std), map z = -Z_RANGE..Z_RANGE to uint8 0..255."""
    z = (np.clip(image.astype(np.float32), *window) - stats[0]) / stats[1]
    return (np.clip((z + Z_RANGE) / (2 * Z_RANGE), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def slice_areas(label: np.ndarray, axis: int, multiclass: bool = False) -> np.ndarray:
    """Foreground pixels per slice along ``axis``, shape (n_slices,). ``multiclass``: the largest single label."""
    other = tuple(a for a in range(3) if a != axis)
    if not multiclass:
        return np.count_nonzero(label, axis=other)
    values = [v for v in np.unique(label) if v != 0]
    if not values:
        return np.zeros(label.shape[axis], np.int64)
    return np.max([np.count_nonzero(label == v, axis=other) for v in values], axis=0)


def volume_samples(
    image_path: str | Path,
    label_path: str | Path | None,
    axis: int = 2,
    min_area: int = 1,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    multiclass: bool = False,
    normalise: Normalisation = "window",
    negatives: bool = False,
) -> list[Sample]:
    """One sample per kept slice of a volume: slices whose structure covers at least ``min_area`` pixels, and with
    ``negatives`` also those without any foreground (every slice, image-only, when there is no label). Ids are
    ``<case>/<axis>_<index>``; ``normalise`` is ``window`` or ``zscore`` (module docstring)."""
    if axis not in (0, 1, 2):
        raise DataError(image_path, f"axis must be 0, 1 or 2, got {axis}")
    if normalise not in ("window", "zscore"):
        raise DataError(image_path, f"normalise must be 'window' or 'zscore', got {normalise!r}")
    image = read_volume(image_path)
    window = window or intensity_window(image, percentiles)
    stats = zscore_stats(image, window) if normalise == "zscore" else None
    case = volume_stem(image_path)
    areas: np.ndarray | None = None
    if label_path is None:
        keep = range(image.shape[axis])
    else:
        label = read_volume(label_path)
        if label.shape != image.shape:
            raise SizeMismatchError(label_path, f"label shape {label.shape} != image shape {image.shape}")
        areas = slice_areas(label, axis, multiclass)
        union = slice_areas(label, axis) if multiclass else areas
        keep = np.flatnonzero((areas >= min_area) | ((union == 0) if negatives else False))
    return [
        Sample(
            id=slice_id(case, axis, i), image=str(image_path),
            masks=[str(label_path)] if label_path else [], has_mask=label_path is not None,
            slice=SliceRef(axis=axis, index=int(i), label=str(label_path) if label_path else None, window=window,
                           zscore=stats, area=None if areas is None else int(areas[i])),
        )
        for i in keep
    ]


def read_slice(sample: Sample, channels: int | None = None, multiclass: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume slice sample: image uint8 (H, W, C) windowed to [0, 255] and mask uint8 (H, W)
    ({0, 1}, or labels 0..K when ``multiclass``; zeros when the sample has no label)."""
    ref = sample.slice
    if ref is None:
        raise DataError(sample.image, f"sample {sample.id!r} is not a volume slice")
    volume = _cached_volume(sample.image)
    window = ref.window or intensity_window(volume)
    plane = np.take(volume, ref.index, axis=ref.axis).T
    image = (zscore_to_uint8(plane, window, ref.zscore) if ref.zscore else window_to_uint8(plane, window))[..., None]
    if channels == 3:
        image = np.repeat(image, 3, axis=-1)
    if ref.label is None:
        return image, np.zeros(image.shape[:2], np.uint8)
    label = np.take(_cached_volume(ref.label), ref.index, axis=ref.axis).T
    if not multiclass:
        return image, (label > 0).astype(np.uint8)
    if label.min() < 0 or label.max() > 255:
        raise NonBinaryMaskError(ref.label, f"labels must lie in 0..255, got {label.min()}..{label.max()}")
    return image, label.astype(np.uint8)


def _index_volumes(folder: Path, problems: list[DataError]) -> dict[str, Path]:
    """Map case name -> volume file or DICOM folder; a second volume with one case name is a problem."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not is_volume(p):
            continue
        case = volume_stem(p)
        if case in out:
            problems.append(DuplicateIdError(p, f"two volumes share the case name {case!r} (also {out[case].name})"))
            continue
        out[case] = p
    return out


def scan_volumes(
    root: str | Path,
    axis: int = 2,
    min_area: int = 1,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    multiclass: bool = False,
    normalise: Normalisation | Literal["auto"] = "auto",
    negatives: bool = False,
) -> FolderScan:
    """Pair image volumes in ``images/`` (or ``imagesTr/``) with label volumes in ``labels/``/``labelsTr/``/
    ``masks/`` by case name and slice them; returns a :class:`~lesionforge.data.layout.FolderScan`.
    ``normalise="auto"``: ``zscore`` when ``root/dataset.json`` names an MRI modality, else ``window``."""

    root = Path(root)
    if normalise == "auto":
        normalise = default_normalisation(root)
    image_dir = first_dir(root, IMAGE_DIRS)
    label_dir = first_dir(root, MASK_DIRS, required=False)
    problems: list[DataError] = []
    images = _index_volumes(image_dir, problems)
    labels = _index_volumes(label_dir, problems) if label_dir else {}
    samples: list[Sample] = []
    for case, path in images.items():
        try:
            samples += volume_samples(path, labels.get(case), axis, min_area, window, percentiles, multiclass,
                                      normalise, negatives)
        except DataError as e:  # collected: the input check reports every bad volume at once
            problems.append(e)
    missing = [str(p) for c, p in images.items() if label_dir and c not in labels]
    orphans = [str(p) for c, p in labels.items() if c not in images]
    return FolderScan("volumes", samples, missing, orphans, problems)
