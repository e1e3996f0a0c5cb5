"""A dataset preprocessed to one resolution, packed into one ``.npz`` small enough to carry to another machine
(e.g. the GPU machine, which gets at most 64 MiB of files besides the working tree).

Images are stored as JPEG (quality 95) bytes in one uint8 buffer with offsets, masks bit-packed: about a
tenth of the raw arrays; or, ``lossless``, as the arrays themselves (zip-compressed), for small images where the
exact pixels matter more than the size (a cpu-profile sweep run elsewhere reads what the CPU sweep reads).
No pickled objects: read with ``allow_pickle=False``. An experiment config reads one
when its ``dataset.root`` (or ``backgrounds_root``) is such a ``.npz`` file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lesionforge.data.arrays import PairArrays
from lesionforge.errors import DataError
from lesionforge.utils import atomic_path

JPEG_QUALITY = 95


def save_packed(path: str | Path, arrays: PairArrays, lossless: bool = False) -> Path:
    """Write ``arrays`` (uint8 images (N, H, W, C), masks (N, H, W)) to ``path`` atomically."""
    chunks = []
    for img in [] if lossless else arrays.images:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, "JPEG", quality=JPEG_QUALITY)
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(c) for c in chunks])
    images = {"pixels": arrays.images} if lossless else {"jpeg": np.concatenate(chunks), "offsets": offsets}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(
            f, **images, masks=np.packbits(arrays.masks > 0, axis=-1),
            mask_values=np.array([int(arrays.masks.max(initial=0))]), shape=np.array(arrays.images.shape),
            has_mask=arrays.has_mask, ids=np.array(arrays.ids), classes=np.array([c or "" for c in arrays.classes]),
        )
    return Path(path)


def load_packed(path: str | Path) -> PairArrays:
    """Read a file written by :func:`save_packed`; a foreign or damaged file is a :class:`DataError`."""
    try:
        z = np.load(path, allow_pickle=False)
        n, h, w, c = (int(v) for v in z["shape"])
        if "pixels" in z.files:
            images = z["pixels"]
        else:
            jpeg, offsets = z["jpeg"], z["offsets"]
            images = np.stack([_decode(jpeg[offsets[i]:offsets[i + 1]], c) for i in range(n)])
        masks = np.unpackbits(z["masks"], axis=-1, count=w).astype(np.uint8) * np.uint8(max(1, z["mask_values"][0]))
        ids, classes = [str(s) for s in z["ids"]], [None if s == "" else str(s) for s in z["classes"]]
        return PairArrays(images.reshape(n, h, w, c), masks, z["has_mask"].astype(bool), ids, classes)
    except (OSError, KeyError, ValueError) as e:
        raise DataError(path, f"not a packed dataset written by lesionforge ({e})") from e


def _decode(buf: np.ndarray, channels: int) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(buf.tobytes())))
    return img[..., None] if channels == 1 and img.ndim == 2 else img
