"""Turn (image, mask) pairs into the denoised tensor ``x0`` and the spatial conditions of each kind.

Shared by training and synthesis so a condition is built the same way in both (layouts: ``models.py``).
In latent space images (and the inpainting background) are encoded by the codec and masks/edges are
area-resized to the latent grid.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from lesionforge.data.arrays import image_to_tensor, mask_to_tensor


class Codec(Protocol):
    """What the generators need of a latent autoencoder (``generate.autoencoder.LatentCodec``)."""

    latent_channels: int
    downsample_factor: int

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


def to_signed(mask: torch.Tensor) -> torch.Tensor:
    """{0, 1} -> {-1, 1}: masks and edges enter the network on the same scale as images."""
    return mask * 2 - 1


def dilate_masks(masks, pixels: int):
    """Dilate uint8 masks (N, H, W) by ``pixels`` with a cross structuring element (uint8 result); a tensor
    (data held on a GPU) is dilated on its device, to the same pixels as scipy's (zero border)."""
    if pixels <= 0:
        return masks
    if not isinstance(masks, np.ndarray):
        m = masks[:, None] > 0
        for _ in range(pixels):  # one step of a cross: the pixel or one of its 4 neighbours
            p = F.pad(m, (1, 1, 1, 1))
            m = m | p[..., :-2, 1:-1] | p[..., 2:, 1:-1] | p[..., 1:-1, :-2] | p[..., 1:-1, 2:]
        return m[:, 0].to(torch.uint8)
    return np.stack([ndimage.binary_dilation(m > 0, iterations=pixels) for m in masks]).astype(np.uint8)


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} -> (B, 1, H/f, W/f): a latent cell is 'generate' if any of its pixels is."""
    return mask if factor == 1 else F.max_pool2d(mask, factor)


def encode(codec: Codec, x: torch.Tensor) -> torch.Tensor:
    """Latents of ``x`` on the device of ``x`` (the codec may live on the GPU; conditions are built on CPU)."""
    return codec.encode(x).to(x.device)


def build_inputs(
    kind: str, images: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, codec: Codec | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``images`` uint8 (B, H, W, C), ``masks`` uint8 (B, H, W) (numpy, or tensors on their device) ->
    ``(x0, spatial)``.

    ``x0`` (B, x, h, w) in [-1, 1] (or latents); ``spatial`` (B, S, h, w) or None for ``joint``. For
    ``inpaint`` ``images`` is the target and the background is the same image with ``masks`` zeroed.
    """
    x = image_to_tensor(images)
    m = mask_to_tensor(masks)
    x0 = x if codec is None else encode(codec, x)
    if kind == "joint":
        return torch.cat([x0, to_signed(m)], dim=1), None
    return x0, build_spatial(kind, x, m, codec)


def build_spatial(kind: str, images: torch.Tensor, masks: torch.Tensor, codec: Codec | None = None) -> torch.Tensor:
    """Spatial conditions from ``images`` (B, C, H, W) [-1, 1] (for ``inpaint``: the background) and
    ``masks`` (B, 1, H, W) {0, 1}; returned on the grid of ``x`` (latent grid when ``codec``)."""
    factor = 1 if codec is None else codec.downsample_factor

    def grid(t: torch.Tensor) -> torch.Tensor:
        return t if factor == 1 else F.interpolate(t, scale_factor=1 / factor, mode="area")

    if kind == "mask2image":
        return to_signed(grid(masks))
    if kind == "edge-text":
        from lesionforge.conditioning.edges import edge_maps

        return torch.cat([to_signed(grid(edge_maps(images, masks))), to_signed(grid(masks))], dim=1)
    if kind == "inpaint":
        masked = images * (1 - masks)  # zeros (mid grey) inside the mask: the model must not see the lesion
        masked = masked if codec is None else encode(codec, masked)
        return torch.cat([masked, to_signed(latent_mask(masks, factor))], dim=1)
    raise ValueError(f"kind {kind!r} has no spatial conditions")


def flip_pairs(images, masks, rng: np.random.Generator):
    """Random horizontal and vertical flips per sample; the mask follows its image (edges are computed after).
    numpy arrays, or tensors (held on a GPU) flipped on their device with the same draws."""
    flips = np.array([(rng.random() < 0.5, rng.random() < 0.5) for _ in range(len(images))], bool).reshape(-1, 2)
    if not isinstance(images, np.ndarray):
        h, v = (torch.as_tensor(flips[:, j]).to(images.device)[:, None, None] for j in (0, 1))
        images = torch.where(h[..., None], images.flip(2), images)
        masks = torch.where(h, masks.flip(2), masks)
        return torch.where(v[..., None], images.flip(1), images), torch.where(v, masks.flip(1), masks)
    images, masks = images.copy(), masks.copy()
    for i, (h, v) in enumerate(flips):
        if h:
            images[i], masks[i] = images[i, :, ::-1], masks[i, :, ::-1]
        if v:
            images[i], masks[i] = images[i, ::-1], masks[i, ::-1]
    return images, masks


def decode_samples(kind: str, x0: torch.Tensor, codec: Codec | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampler output ``x0`` -> ``(images (B, C, H, W) in [-1, 1], mask probability (B, 1, H, W) in [0, 1]
    for ``joint``, else None)``; latents are decoded by ``codec``."""
    mask = None
    if kind == "joint":
        x0, mask = x0[:, :-1], ((x0[:, -1:] + 1) / 2).clamp(0, 1)
    images = x0 if codec is None else codec.decode(x0)
    return images.clamp(-1, 1), mask
