"""Reading and writing image and mask files (PNG/JPEG/TIFF) with specific errors for bad files.

Images come back as ``uint8`` arrays ``(H, W, C)`` with C in {1, 3}; masks as ``uint8`` ``(H, W)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lesionforge.errors import ChannelCountError, CorruptFileError, NonBinaryMaskError, SizeMismatchError
from lesionforge.utils import atomic_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: JPEG-compressed binary masks have noise near 0 and 255; values within this margin are noise.
JPEG_NOISE_MARGIN = 40


class MaskNotice(UserWarning):
    """A mask was usable but needed cleaning (e.g. JPEG noise thresholded)."""


_NOTICED_FOLDERS: set[str] = set()


def read_array(path: str | Path) -> np.ndarray:
    """Decode a 2D image file to a NumPy array of its native dtype, ``(H, W)`` or ``(H, W, C)``.

    Pillow first; TIFFs Pillow cannot open (float, multi-page, odd compression) fall back to tifffile.
    """
    path = Path(path)
    if not path.is_file():
        raise CorruptFileError(path, "file not found")
    try:
        with Image.open(path) as im:
            im.load()  # forces full decode: truncated files fail here
            arr = np.asarray(im)
            if im.mode == "P":
                arr = np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
            elif im.mode in ("I;16", "I;16B", "I"):
                arr = np.asarray(im).astype(np.int32)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff(path, e)
        else:
            raise CorruptFileError(path, f"cannot decode image ({e})") from e
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise CorruptFileError(path, f"unexpected array shape {arr.shape}")
    return arr


def _read_tiff(path: Path, first_error: Exception) -> np.ndarray:
    import tifffile

    try:
        arr = tifffile.imread(path)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types; all mean "corrupt"
        raise CorruptFileError(path, f"cannot decode TIFF ({first_error}; tifffile: {e})") from e
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) layout
    return arr


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale any numeric array to uint8 (min-max for non-uint8 data)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    a = arr.astype(np.float64)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.clip((a - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_image(path: str | Path, channels: int | None = None) -> np.ndarray:
    """Read an image as ``uint8 (H, W, C)``.

    ``channels``: 1 (grey), 3 (RGB) or None (keep: grey stays 1, RGB(A) becomes 3). An RGB image whose
    channels are identical counts as grey. A request for 1 channel on a truly coloured image converts to
    luminance; a 2-channel or >4-channel file raises :class:`ChannelCountError`.
    """
    return image_from_array(read_array(path), path, channels)


def image_from_array(arr: np.ndarray, path: str | Path, channels: int | None = None) -> np.ndarray:
    """:func:`read_image` on an already decoded array (``path`` only names the file in errors)."""
    arr = to_uint8(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
    c = arr.shape[-1]
    if c == 4:
        arr = arr[..., :3]
    elif c == 2 or c > 4:
        raise ChannelCountError(path, f"{c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if channels is None or channels == arr.shape[-1]:
        return np.ascontiguousarray(arr)
    if channels == 1:
        weights = np.array([0.299, 0.587, 0.114])
        return np.clip(arr @ weights + 0.5, 0, 255).astype(np.uint8)[..., None]
    if channels == 3:
        return np.repeat(arr, 3, axis=-1)
    raise ChannelCountError(path, f"cannot convert to {channels} channels")


def is_grey(image: np.ndarray) -> bool:
    """True when a ``(H, W, C)`` image carries no colour (one channel or identical channels)."""
    return image.shape[-1] == 1 or bool(
        np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    )


def read_mask(path: str | Path, multiclass: bool = False) -> np.ndarray:
    """Read a mask as ``uint8 (H, W)``: {0, 1} for binary, 0..K for ``multiclass``.

    Binary: values {0, v} are taken as is; JPEG noise (all values within ``JPEG_NOISE_MARGIN`` of 0 or of
    the maximum) is thresholded at half the maximum with a :class:`MaskNotice` warning; any other grey
    level raises :class:`NonBinaryMaskError`. Colour masks must have identical channels.
    """
    mask, notice = mask_from_array(read_array(path), path, multiclass)
    folder = str(Path(path).parent)
    if notice and folder not in _NOTICED_FOLDERS:  # one notice per folder, not one per file of a JPEG dataset
        _NOTICED_FOLDERS.add(folder)
        warnings.warn(MaskNotice(f"{path}: {notice} (further notices for {folder} are not shown)"), stacklevel=2)
    return mask


def mask_from_array(arr: np.ndarray, path: str | Path, multiclass: bool = False) -> tuple[np.ndarray, str | None]:
    """:func:`read_mask` on a decoded array; returns ``(mask uint8 (H, W), notice or None)`` instead of
    warning, so callers that collect problems (the input check) get the notice as a value."""
    if arr.ndim == 3:
        if arr.shape[-1] == 4:
            arr = arr[..., :3]
        if not all(np.array_equal(arr[..., 0], arr[..., i]) for i in range(1, arr.shape[-1])):
            raise ChannelCountError(path, f"mask has {arr.shape[-1]} differing channels; expected one")
        arr = arr[..., 0]
    if arr.dtype == bool:
        return arr.astype(np.uint8), None
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise NonBinaryMaskError(path, "mask holds non-integer values")
        arr = arr.astype(np.int64)
    # a histogram is several times faster than np.unique for the usual 8-bit masks
    values = np.flatnonzero(np.bincount(arr.ravel(), minlength=256)) if arr.dtype == np.uint8 else np.unique(arr)
    if values.min() < 0:
        raise NonBinaryMaskError(path, "mask holds negative values")
    if multiclass:
        if values.max() > 255:
            raise NonBinaryMaskError(path, f"label {values.max()} exceeds 255")
        return arr.astype(np.uint8), None
    if len(values) == 2 and values[0] != 0:
        raise NonBinaryMaskError(path, f"two levels {values[0]} and {values[1]}, neither is 0 (background)")
    if len(values) <= 2:
        return (arr > 0).astype(np.uint8), None
    top = int(values.max())
    noisy = values[(values > JPEG_NOISE_MARGIN) & (values < top - JPEG_NOISE_MARGIN)]
    if len(noisy) or top < 128:
        raise NonBinaryMaskError(
            path,
            f"{len(values)} distinct grey levels (e.g. {values[len(values) // 2]}); a binary mask needs two "
            "(use multiclass=True / --multiclass for label maps)",
        )
    return (arr > top // 2).astype(np.uint8), f"JPEG noise in mask thresholded at {top // 2}"


def union_masks(paths: list[str | Path], shape: tuple[int, int], multiclass: bool = False) -> np.ndarray:
    """Read several mask files of one image and merge them (union; max label for multi-class)."""
    out = np.zeros(shape, np.uint8)
    for p in paths:
        m = read_mask(p, multiclass=multiclass)
        if m.shape != shape:
            raise SizeMismatchError(p, f"mask size {m.shape[1]}x{m.shape[0]} != image size {shape[1]}x{shape[0]}")
        np.maximum(out, m, out=out)
    return out


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a ``uint8`` image ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` as PNG, atomically."""
    path = Path(path)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        raise TypeError(f"write_image needs uint8, got {arr.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def write_mask(path: str | Path, mask: np.ndarray) -> Path:
    """Write a binary ``(H, W)`` mask as a 0/255 PNG (multi-class label maps are written as is)."""
    m = np.asarray(mask).astype(np.uint8)
    return write_image(path, m * 255 if m.max() <= 1 else m)
