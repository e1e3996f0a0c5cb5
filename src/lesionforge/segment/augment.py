"""Standard segmentation augmentation as MONAI dictionary transforms, applied per batch on the fly.

Items are dicts with ``image`` float (C, H, W) in [-1, 1] and ``mask`` float (1, H, W) in {0, 1}. Spatial
transforms move image and mask together (mask with nearest-neighbour sampling); intensity transforms touch the
image only. Each batch reseeds the transform chain from one integer, so a resumed run augments exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from lesionforge.segment.config import AugmentConfig

KEYS = ("image", "mask")


def build_augmentation(cfg: AugmentConfig, size: int) -> Compose:
    """The transform chain for square images of side ``size``: flips, 90° rotations, scale/shift affine,
    brightness / contrast / colour / gamma jitter and Gaussian noise."""
    shift = cfg.translate_fraction * size
    return Compose([
        RandFlipd(KEYS, prob=cfg.flip_prob, spatial_axis=0),
        RandFlipd(KEYS, prob=cfg.flip_prob, spatial_axis=1),
        RandRotate90d(KEYS, prob=cfg.rotate90_prob, max_k=3),
        RandAffined(
            KEYS, prob=cfg.affine_prob, scale_range=(cfg.scale_range, cfg.scale_range),
            translate_range=(shift, shift), mode=("bilinear", "nearest"), padding_mode="reflection",
            spatial_size=(size, size), cache_grid=True,
        ),
        RandShiftIntensityd("image", offsets=cfg.brightness, prob=cfg.intensity_prob),
        RandScaleIntensityd("image", factors=cfg.contrast, prob=cfg.intensity_prob),
        RandScaleIntensityd("image", factors=cfg.colour, prob=cfg.intensity_prob, channel_wise=True),
        RandAdjustContrastd("image", gamma=cfg.gamma, prob=cfg.intensity_prob),
        RandGaussianNoised("image", prob=cfg.noise_prob, std=cfg.noise_std),
    ])


def augment_batch(
    transform: Compose, images: torch.Tensor, masks: torch.Tensor, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch: ``images`` (B, C, H, W) in [-1, 1], ``masks`` (B, 1, H, W) in {0, 1}.

    Each sample gets its own random draw; ``seed`` fixes all of them. Returns new tensors of the same shapes,
    images clipped back to [-1, 1].
    """
    transform.set_random_state(seed=seed % 2**32)
    tracked, threads = get_track_meta(), torch.get_num_threads()
    set_track_meta(False)  # plain tensors: metadata bookkeeping would cost more than the transforms at 64 px
    torch.set_num_threads(1)  # per-image ops are tiny; thread hand-offs made them 10x slower on 2 cores
    try:
        items = [transform({"image": img, "mask": m}) for img, m in zip(images, masks, strict=True)]
    finally:
        set_track_meta(tracked)
        torch.set_num_threads(threads)
    out_img = torch.stack([torch.as_tensor(d["image"], dtype=torch.float32) for d in items]).clamp_(-1, 1)
    out_mask = torch.stack([torch.as_tensor(d["mask"], dtype=torch.float32) for d in items])
    return out_img, out_mask
