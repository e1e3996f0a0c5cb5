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


def augment_pairs(images, masks, rng: np.random.Generator, settings: AugmentSettings):
    """Augment uint8 pairs ``images`` (B, H, W, C), ``masks`` (B, H, W) -> (images, masks, condition (B, 6)
    float32). A sample left as it is has an all-zero condition, the one sampling uses. numpy arrays or tensors
    (held on a GPU, see :class:`~lesionforge.generate.trainbatch.BatchMaker`): the same draws, the same result."""
    h, w = masks.shape[1:]
    plans = [_draw(rng, settings, h, w) for _ in range(len(images))]
    cond = np.zeros((len(images), AUG_DIMS), np.float32)
    on_host = isinstance(images, np.ndarray)
    images, masks = (images.copy(), masks.copy()) if on_host else (images.clone(), masks.clone())
    for i, plan in enumerate(plans):
        if plan is None:
            continue
        hflip, vflip, k, zoom = plan
        img, m = images[i], masks[i]
        if hflip:
            img, m, cond[i, 0] = _flip(img, 1), _flip(m, 1), 1.0
        if vflip:
            img, m, cond[i, 1] = _flip(img, 0), _flip(m, 0), 1.0
        if k:
            img, m, cond[i, 1 + k] = _rot90(img, k), _rot90(m, k), 1.0
        if zoom is not None:
            img, m = _zoom(img, m, *zoom[1:])
            cond[i, 5] = zoom[0]
        images[i], masks[i] = img, m
    return images, masks, cond


def _draw(rng: np.random.Generator, settings: AugmentSettings, h: int, w: int):
    """One sample's transform (None: left as it is), its draws in a fixed order: apply?, flips, turn, zoom."""
    if rng.random() >= settings.p:
        return None
    hflip = vflip = False
    k, zoom = 0, None
    if settings.flips:
        hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    if settings.rot90:
        k = int(rng.integers(4))
        h, w = (w, h) if k % 2 else (h, w)
    if settings.zoom > 0:
        amount = float(rng.random())
        factor = 1.0 + amount * settings.zoom
        ch, cw = max(1, round(h / factor)), max(1, round(w / factor))  # a random crop of side H / factor
        zoom = (amount, int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1)), ch, cw)
    return hflip, vflip, k, zoom


def _flip(a, axis: int):
    return np.flip(a, axis) if isinstance(a, np.ndarray) else a.flip(axis)


def _rot90(a, k: int):
    return np.rot90(a, k) if isinstance(a, np.ndarray) else a.rot90(k, (0, 1))


def _zoom(image, mask, y: int, x: int, ch: int, cw: int):
    """The crop at (y, x) of ``ch`` x ``cw`` resized back to the full size (image bilinear, mask nearest)."""
    h, w = mask.shape
    on_host = isinstance(image, np.ndarray)
    as_tensor = (lambda a: torch.from_numpy(np.ascontiguousarray(a))) if on_host else (lambda a: a.contiguous())
    crop = as_tensor(image[y:y + ch, x:x + cw]).permute(2, 0, 1)[None].float()
    img = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    mcrop = as_tensor(mask[y:y + ch, x:x + cw])[None, None].float()
    m = F.interpolate(mcrop, size=(h, w), mode="nearest")[0, 0]
    img, m = img.round().clamp(0, 255).to(torch.uint8), m.to(torch.uint8)
    return (img.numpy(), m.numpy()) if on_host else (img, m)


def condition_maps(cond: torch.Tensor | None, batch: int, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """The condition vectors (B, 6) as constant maps (B, 6, h, w) on ``like``'s device and dtype; None (sampling)
    gives zeros: "not augmented"."""
    if cond is None:
        return like.new_zeros((batch, AUG_DIMS, *size))
    return cond.to(like.device, like.dtype)[:, :, None, None].expand(batch, AUG_DIMS, *size)
