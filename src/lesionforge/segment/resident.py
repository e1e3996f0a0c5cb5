"""Segmentation batches from data held on the training device (a GPU): the real and synthetic pairs are copied
there once, as uint8 tensors; each step indexes them there, copy-pastes (:class:`DeviceCopyPaster`) and
augments (:func:`augment_on_device`) on the device, so no image crosses from the host per step.

The same interface as the host path (``segment.train._HostBatches``), the same batch plans, copy-paste draws and
stream seeds; the copy-paste warp and the augmentation draws differ from the CPU code (see those functions), so
a run is reproducible for a seed on its device but not bit-equal to a host-path run.
"""

from __future__ import annotations

import numpy as np
import torch

from lesionforge.data.arrays import PairArrays
from lesionforge.segment.augment import augment_on_device
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.copypaste import DeviceCopyPaster
from lesionforge.segment.mixing import STREAM_AUGMENT, STREAM_COPY_PASTE, step_rng


def _hold(arrays: PairArrays, device: torch.device, marked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and masks as uint8 tensors on ``device``; masks binary unless ``marked`` (they then carry the pixels
    the loss leaves out, see segment/losses.py, and are held as they are)."""
    masks = arrays.masks if marked else (arrays.masks > 0).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arrays.images)).to(device), torch.from_numpy(masks).to(device)


class DeviceBatches:
    """Batch tensors held on ``device``: images uint8 (B, H, W, C), masks uint8 (B, H, W) in {0, 1} until
    :meth:`tensors` makes the network's float inputs."""

    def __init__(self, cfg: SegmentConfig, train: PairArrays, synthetic: PairArrays | None, device: torch.device,
                 marked: bool = False, donors: tuple[np.ndarray, np.ndarray] | None = None):
        self.cfg, self.device = cfg, device
        self.images, self.masks = _hold(train, device)
        self.syn_images, self.syn_masks = (None, None) if synthetic is None else _hold(synthetic, device, marked)
        self.paster = None
        if cfg.copy_paste.enabled:
            self.paster = DeviceCopyPaster(train.images, train.masks, cfg.copy_paste, device,
                                           on_device=(self.images, self.masks), extra=donors)

    def _index(self, idx: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(idx, dtype=torch.long).to(self.device)

    def real(self, idx: np.ndarray, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(idx)
        images, masks = self.images[i], self.masks[i]
        if self.paster is not None and len(idx):
            images, masks = self.paster(images, masks, idx, step_rng(self.cfg.seed, step, STREAM_COPY_PASTE))
        return images, masks

    def with_synthetic(self, images: torch.Tensor, masks: torch.Tensor, idx: np.ndarray
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        i = self._index(idx)
        return torch.cat([images, self.syn_images[i]]), torch.cat([masks, self.syn_masks[i]])

    def twins(self, images: torch.Tensor, masks: torch.Tensor, twin: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        has = self._index(np.flatnonzero(twin >= 0))
        src = self._index(twin[twin >= 0])
        twin_img, twin_mask = images.clone(), masks.clone()  # no twin: the real pair stands in for it
        twin_img[has], twin_mask[has] = self.syn_images[src], self.syn_masks[src]
        return twin_img, twin_mask

    def tensors(self, images: torch.Tensor, masks: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> (x float (B, C, H, W) in [-1, 1], y float (B, 1, H, W)), augmented on the device with a
        generator seeded by (seed, step) as the host path seeds MONAI."""
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        y = masks[:, None].float()
        if self.cfg.augment.enabled:
            seed = int(step_rng(self.cfg.seed, step, STREAM_AUGMENT).integers(2**31))
            x, y = augment_on_device(self.cfg.augment, x, y, torch.Generator(self.device).manual_seed(seed))
        return x.contiguous(), y.contiguous()
