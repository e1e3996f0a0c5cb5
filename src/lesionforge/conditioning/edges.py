"""Edge maps for edge-guided generation (EMIT-Diff): image edges plus the boundary of the lesion mask.

The generator sees where the anatomy's edges and the lesion outline are, so a new image made from the edge
map keeps the real mask a correct label.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from skimage.segmentation import find_boundaries

from lesionforge.data.arrays import tensor_to_image

#: Canny thresholds are ``(1 -/+ CANNY_SIGMA) * median grey level`` (the usual automatic Canny rule).
CANNY_SIGMA = 0.33


def image_edges(image: np.ndarray, blur_sigma: float = 1.0) -> np.ndarray:
    """Canny edges of a lightly blurred grey version of ``image``.

    ``image`` uint8 (H, W, C) or (H, W). Returns bool (H, W). Thresholds follow the median intensity, so
    dark ultrasound and bright endoscopy frames both get a sensible edge density without tuning.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(_rgb(image), cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(np.ascontiguousarray(grey, dtype=np.uint8), (0, 0), blur_sigma)
    median = float(np.median(grey))
    low = int(max(0.0, (1.0 - CANNY_SIGMA) * median))
    high = int(min(255.0, (1.0 + CANNY_SIGMA) * median))
    # an almost uniform image has median-based thresholds near zero: keep a floor so noise is not an edge
    high = max(high, low + 10)
    return cv2.Canny(grey, low, high, L2gradient=True) > 0


def mask_boundary(mask: np.ndarray) -> np.ndarray:
    """Inner boundary pixels of a binary mask (H, W) -> bool (H, W); empty for an empty mask."""
    return find_boundaries(np.asarray(mask) > 0, mode="inner")


def edge_map(image: np.ndarray, mask: np.ndarray | None = None, blur_sigma: float = 1.0) -> np.ndarray:
    """EMIT-Diff conditioning edge map of one sample.

    ``image`` uint8 (H, W, C) (or (H, W)); ``mask`` (H, W) binary or None. Returns float32 (H, W) in
    {0, 1} (a subset of [0, 1]): 1 on Canny image edges and on the mask boundary.
    """
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"edge_map: mask shape {mask.shape[:2]} differs from image shape {image.shape[:2]}")
    edges = image_edges(image, blur_sigma)
    if mask is not None:
        edges |= mask_boundary(mask)
    return edges.astype(np.float32)


def edge_maps(images: torch.Tensor, masks: torch.Tensor | None = None, blur_sigma: float = 1.0) -> torch.Tensor:
    """Batched :func:`edge_map` for tensors.

    ``images`` float (B, C, H, W) in [-1, 1]; ``masks`` float (B, 1, H, W) in {0, 1} or None.
    Returns float32 (B, 1, H, W) in {0, 1} on the device of ``images``.
    """
    arrays = tensor_to_image(images)
    mask_np = None if masks is None else (masks[:, 0] > 0.5).cpu().numpy()
    out = [
        edge_map(img, None if mask_np is None else mask_np[i], blur_sigma) for i, img in enumerate(arrays)
    ]
    return torch.from_numpy(np.stack(out)).unsqueeze(1).to(images.device)


def _rgb(image: np.ndarray) -> np.ndarray:
    """Grey-to-colour conversion wants 3 channels: drop alpha, repeat a single channel."""
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])
