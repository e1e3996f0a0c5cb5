"""Images for the review pages: a sample with its mask drawn as an outline, re-encoded as a fresh PNG
(so no file name, metadata chunk or original size reaches a blinded rater)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries

from lesionforge.data.arrays import load_sample
from lesionforge.data.manifest import Sample

OUTLINE_RGB = (255, 40, 40)


def sample_png(sample: Sample, outline: bool = True, size: int | None = None, min_side: int = 192) -> bytes:
    """PNG bytes of ``sample``'s image (RGB), its mask's outline in red when ``outline``, resized to
    ``size`` x ``size`` when given, else enlarged by a whole factor when smaller than ``min_side`` (masks by
    nearest neighbour, so the outline stays a thin line)."""
    image, mask = load_sample(sample, channels=3)
    h, w = image.shape[:2]
    if size is None and max(h, w) < min_side:
        factor = -(-min_side // max(h, w))
        size_hw = (h * factor, w * factor)
    else:
        size_hw = (size, size) if size is not None else (h, w)
    if size_hw != (h, w):
        image = np.asarray(Image.fromarray(image).resize(size_hw[::-1], Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize(size_hw[::-1], Image.NEAREST))
    if outline and mask.any():
        image = image.copy()
        image[find_boundaries(mask > 0, mode="inner")] = OUTLINE_RGB
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
