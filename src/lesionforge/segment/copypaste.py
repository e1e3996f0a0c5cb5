"""Classical lesion copy-paste, the strong non-diffusion baseline.

A lesion (one 8-connected component of a training mask) is cut from one image with its mask, scaled, rotated
and flipped at random, blended with a feathered (Gaussian-softened) edge onto another training image at a
place where all its pixels fall inside that image's field of view, and the target mask becomes the union.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lesionforge.segment.config import CopyPasteConfig

_EIGHT = np.ones((3, 3), dtype=bool)
_TRIES = 10  # placements tried before giving up on a paste


def field_of_view(image: np.ndarray, threshold: int) -> np.ndarray:
    """bool (H, W): pixels brighter than ``threshold`` in any channel (endoscopy frames have a black border)."""
    return image.max(axis=-1) > threshold


def transformed_lesion(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one random lesion of ``mask`` from ``image`` (uint8 (H, W, C)) and warp it.

    Returns the warped patch float32 (D, D, C) and its hard mask bool (D, D), lesion centred."""
    labels, n = ndimage.label(mask > 0, structure=_EIGHT)
    comp = labels == rng.integers(1, n + 1)
    ys, xs = np.nonzero(comp)
    cy, cx = ys.mean(), xs.mean()
    s = rng.uniform(*scale)
    radius = np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() + 1.5
    side = int(np.ceil(2 * radius * s)) + 3
    rot = cv2.getRotationMatrix2D((float(cx), float(cy)), float(rng.uniform(0, 360)), float(s))
    rot[:, 2] += side / 2 - np.array([cx, cy])  # move the lesion centre to the patch centre
    if rng.random() < 0.5:  # horizontal flip about the patch centre
        rot = np.array([[-1, 0, side - 1], [0, 1, 0]]) @ np.vstack([rot, [0, 0, 1]])
    img = image.astype(np.float32)
    patch = cv2.warpAffine(img, rot, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    soft = cv2.warpAffine(comp.astype(np.float32), rot, (side, side), flags=cv2.INTER_LINEAR)
    return patch.reshape(side, side, -1), soft >= 0.5


def paste_lesion(
    dst_image: np.ndarray, dst_mask: np.ndarray, patch: np.ndarray, hard: np.ndarray, rng: np.random.Generator,
    fov_threshold: int = 12, feather_sigma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Paste a warped lesion (``patch`` float (D, D, C), ``hard`` bool (D, D)) onto ``dst_image`` uint8 (H, W, C).

    The lesion lands where every lesion pixel is inside the image and its field of view. Returns the new image,
    the new mask (union, uint8 (H, W)) and whether a paste happened (False: no valid place found)."""
    h, w = dst_mask.shape
    fov = field_of_view(dst_image, fov_threshold)
    ly, lx = np.nonzero(hard)
    if len(ly) == 0 or not fov.any():
        return dst_image, dst_mask, False
    fy, fx = np.nonzero(fov)
    side = hard.shape[0]
    for _ in range(_TRIES):
        k = rng.integers(len(fy))
        oy, ox = fy[k] - side // 2, fx[k] - side // 2  # patch centre on a random field-of-view pixel
        ty, tx = ly + oy, lx + ox
        if ty.min() < 0 or tx.min() < 0 or ty.max() >= h or tx.max() >= w or not fov[ty, tx].all():
            continue
        return (*_blend(dst_image, dst_mask, patch, hard, oy, ox, feather_sigma), True)
    return dst_image, dst_mask, False


def _blend(dst_image, dst_mask, patch, hard, oy: int, ox: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = dst_mask.shape
    side = hard.shape[0]
    alpha = cv2.GaussianBlur(hard.astype(np.float32), (0, 0), sigma) if sigma > 0 else hard.astype(np.float32)
    # the part of the patch canvas that lies inside the image
    y0, x0, y1, x1 = max(oy, 0), max(ox, 0), min(oy + side, h), min(ox + side, w)
    py, px = slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)
    out = dst_image.astype(np.float32)
    a = alpha[py, px, None]
    out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - a) + patch[py, px] * a
    mask = dst_mask.copy()
    mask[y0:y1, x0:x1] |= hard[py, px].astype(mask.dtype)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), mask


class CopyPaster:
    """Applies copy-paste to batches drawn from one set of training pairs (the lesion donors).

    ``images`` uint8 (N, H, W, C), ``masks`` uint8 (N, H, W)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, cfg: CopyPasteConfig):
        self.images, self.masks, self.cfg = images, masks, cfg
        self.donors = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))

    def __call__(
        self, images: np.ndarray, masks: np.ndarray, index: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Copy-paste onto each sample of a batch with probability ``cfg.prob``; ``index`` are the samples'
        positions in the donor set (a sample never receives its own lesion). Returns new arrays."""
        images, masks = images.copy(), masks.copy()
        for b, i in enumerate(index):
            donors = self.donors[self.donors != i]
            if len(donors) == 0 or rng.random() >= self.cfg.prob:
                continue
            d = rng.choice(donors)
            patch, hard = transformed_lesion(self.images[d], self.masks[d], rng, self.cfg.scale)
            images[b], masks[b], _ = paste_lesion(
                images[b], masks[b], patch, hard, rng, self.cfg.fov_threshold, self.cfg.feather_sigma
            )
        return images, masks
