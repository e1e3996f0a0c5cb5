"""Standard segmentation augmentation as MONAI dictionary transforms, applied per batch on the fly.

Items are dicts with ``image`` float (C, H, W) in [-1, 1] and ``mask`` float (1, H, W) in {0, 1}. Spatial
transforms move image and mask together (mask with nearest-neighbour sampling); intensity transforms touch the
image only. Each batch reseeds the transform chain from one integer, so a resumed run augments exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def augment_on_device(
    cfg: AugmentConfig, images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The augmentation of :func:`build_augmentation`, batched on the tensors' device (data held on a GPU).

    Same transforms, order, probabilities and parameter ranges as the MONAI chain (flips of each axis, a 90° turn
    by k in {1, 2, 3}, an affine with per-axis zoom 1 ± ``scale_range`` and shift ± ``translate_fraction`` of the
    side (bilinear image, nearest mask, reflected border), brightness shift, contrast scale, per-channel colour
    scale, MONAI's gamma contrast, Gaussian noise of std U(0, ``noise_std``)), so the same distribution family; not
    the same draws. Written here because MONAI's random transforms take one sample at a time and draw their
    parameters and noise with numpy on the host: on a GPU that is a host round trip per sample and transform.
    All draws come from ``generator`` (on the tensors' device), so a seed fixes the batch. ``images`` (B, C, H, W)
    in [-1, 1], ``masks`` (B, 1, H, W) in {0, 1}, square; returns new tensors, images clipped to [-1, 1].
    """
    b, c = images.shape[:2]
    dev = images.device

    def coin(p: float) -> torch.Tensor:  # (B, 1, 1, 1) bool: the transform applies to this sample
        return (torch.rand(b, generator=generator, device=dev) < p)[:, None, None, None]

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, *shape, generator=generator, device=dev)

    x, y = images, masks
    for axis in (2, 3):  # MONAI spatial_axis 0 and 1 of (C, H, W)
        flip = coin(cfg.flip_prob)
        x, y = torch.where(flip, x.flip(axis), x), torch.where(flip, y.flip(axis), y)
    turn, k = coin(cfg.rotate90_prob), torch.randint(1, 4, (b, 1, 1, 1), generator=generator, device=dev)
    for kk in (1, 2, 3):
        sel = turn & (k == kk)
        x, y = torch.where(sel, x.rot90(kk, (2, 3)), x), torch.where(sel, y.rot90(kk, (2, 3)), y)
    x, y = _random_affine(cfg, x, y, coin(cfg.affine_prob), uniform)
    x = x + torch.where(coin(cfg.intensity_prob), uniform(-cfg.brightness, cfg.brightness, 1, 1, 1), 0.0)
    x = x * torch.where(coin(cfg.intensity_prob), 1 + uniform(-cfg.contrast, cfg.contrast, 1, 1, 1), 1.0)
    x = x * torch.where(coin(cfg.intensity_prob), 1 + uniform(-cfg.colour, cfg.colour, c, 1, 1), 1.0)
    gamma_on, gamma = coin(cfg.intensity_prob), uniform(*cfg.gamma, 1, 1, 1)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    contrast = ((x - lo) / (hi - lo + 1e-7)).clamp(min=0) ** gamma * (hi - lo) + lo  # MONAI's AdjustContrast
    x = torch.where(gamma_on, contrast, x)
    noise_on, std = coin(cfg.noise_prob), uniform(0.0, cfg.noise_std, 1, 1, 1)
    x = x + torch.where(noise_on, std * torch.randn(x.shape, generator=generator, device=dev), 0.0)
    return x.clamp(-1, 1), y


def _random_affine(cfg: AugmentConfig, x: torch.Tensor, y: torch.Tensor, on: torch.Tensor, uniform
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """MONAI's RandAffine with scale and translation only: output pixel p (from the centre) reads the input at
    S p + t, S = diag(1 + U(-s, s)) per axis, t = U(-shift, shift) pixels per axis."""
    size = x.shape[-1]
    zoom = 1 + uniform(-cfg.scale_range, cfg.scale_range, 2)
    shift = uniform(-cfg.translate_fraction * size, cfg.translate_fraction * size, 2) * (2 / size)  # normalised
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = zoom[:, 1], zoom[:, 0], shift.flip(1)  # (x, y) order
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    warped_y = F.grid_sample(y, grid, mode="nearest", padding_mode="reflection", align_corners=False)
    return torch.where(on, warped, x), torch.where(on, warped_y, y)
