"""Non-leaking augmentation of a generator's training pairs (the idea of EDM's ``augment_pipe``, Karras et al.
2022): with probability ``p`` a pair is flipped, rotated by a multiple of 90 degrees and/or zoomed in, its mask
following, and a vector saying which is returned with it. The network sees that vector as extra constant input
channels (:class:`~lesionforge.generate.models.LesionGenerator`); sampling gives it zeros ("not augmented"), so
the model learns from 4-8x more distinct images while its samples keep the data's orientation and scale.

Written here because diffusers and MONAI augment without reporting the transform drawn, and the condition
vector is the point.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lesionforge.generate.config import AugmentSettings

#: Condition vector: horizontal flip, vertical flip, rotation by 90 / 180 / 270 degrees (one-hot), zoom amount.
AUG_DIMS = 6


def augment_pairs(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator, settings: AugmentSettings
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment uint8 pairs ``images`` (B, H, W, C), ``masks`` (B, H, W) -> (images, masks, condition (B, 6)
    float32). A sample left as it is has an all-zero condition, the one sampling uses."""
    images, masks = images.copy(), masks.copy()
    cond = np.zeros((len(images), AUG_DIMS), np.float32)
    for i in range(len(images)):
        if rng.random() >= settings.p:
            continue
        img, m = images[i], masks[i]
        if settings.flips:
            if rng.random() < 0.5:
                img, m, cond[i, 0] = img[:, ::-1], m[:, ::-1], 1.0
            if rng.random() < 0.5:
                img, m, cond[i, 1] = img[::-1], m[::-1], 1.0
        if settings.rot90:
            k = int(rng.integers(4))
            img, m = np.rot90(img, k), np.rot90(m, k)
            if k:
                cond[i, 1 + k] = 1.0
        if settings.zoom > 0:
            amount = float(rng.random())
            img, m = _zoom(img, m, 1.0 + amount * settings.zoom, rng)
            cond[i, 5] = amount
        images[i], masks[i] = img, m
    return images, masks, cond


def _zoom(image: np.ndarray, mask: np.ndarray, factor: float, rng: np.random.Generator
          ) -> tuple[np.ndarray, np.ndarray]:
    """A random square crop of side ``H / factor`` resized back to H (image bilinear, mask nearest)."""
    h, w = mask.shape
    ch, cw = max(1, round(h / factor)), max(1, round(w / factor))
    y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
    crop = torch.from_numpy(np.ascontiguousarray(image[y:y + ch, x:x + cw])).permute(2, 0, 1)[None].float()
    img = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    mcrop = torch.from_numpy(np.ascontiguousarray(mask[y:y + ch, x:x + cw]))[None, None].float()
    m = F.interpolate(mcrop, size=(h, w), mode="nearest")[0, 0]
    return img.round().clamp(0, 255).to(torch.uint8).numpy(), m.to(torch.uint8).numpy()


def condition_maps(cond: torch.Tensor | None, batch: int, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The condition vectors (B, 6) as constant maps (B, 6, h, w) on ``like``'s device and dtype; None (sampling)
    gives zeros: "not augmented"."""
    if cond is None:
        return like.new_zeros((batch, AUG_DIMS, *size))
    return cond.to(like.device, like.dtype)[:, :, None, None].expand(batch, AUG_DIMS, *size)
