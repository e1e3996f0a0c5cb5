"""Pixel-space validator: a MONAI ``BasicUNet`` on images, the slower alternative to the latent one."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from monai.networks.nets import BasicUNet

from lesionforge.data.arrays import PairArrays, image_to_tensor, mask_to_tensor
from lesionforge.devices import TrainedHere
from lesionforge.outputs import claim_output
from lesionforge.utils import code_version, seed_everything
from lesionforge.validate import validator as registry
from lesionforge.validate.training import flip_batch, train_loop
from lesionforge.validate.validator import SEGMENTER_DIR, load_validator, register_kind, save_validator_info, val_scores


class PixelSegmenter(ModelMixin, ConfigMixin):
    """Images (B, C, H, W) in [-1, 1] -> lesion logits (B, 1, H, W); H, W divisible by 16."""

    @register_to_config
    def __init__(self, image_channels: int = 3, features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)):
        super().__init__()
        self.net = BasicUNet(spatial_dims=2, in_channels=image_channels, out_channels=1, features=tuple(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion probability (B, 1, H, W) in [0, 1]."""
        return torch.sigmoid(self(x.to(self.device, torch.float32)))


@register_kind("pixel")
def load_pixel_networks(path: Path) -> tuple[PixelSegmenter, None]:
    return PixelSegmenter.from_pretrained(path / SEGMENTER_DIR), None


class PixelSegmenterConfig(TrainedHere):
    """Pixel validator settings (the packaged ``validator-*.yaml`` presets with ``kind: pixel``)."""

    kind: Literal["pixel"] = "pixel"
    resolution: int = 64
    image_channels: int = 3
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16)
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    checkpoint_every: int = 250
    seed: int = 0


def train_pixel_segmenter(
    cfg: PixelSegmenterConfig, train: PairArrays, out_dir: str | Path, val: PairArrays | None = None,
    resume: bool = True, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Train a :class:`PixelSegmenter` (Dice + BCE, random flips) on the labelled images of ``train``;
    write a validator folder (``segmenter/`` + ``validator.json`` with real-``val`` scores). Returns it."""
    out_dir = claim_output(out_dir, "validator run", overwrite=overwrite, resume=resume)
    if resume and registry.finished_validator(out_dir, cfg.model_dump(mode="json")):
        return out_dir
    seed_everything(cfg.seed)
    labelled = train.subset(np.flatnonzero(train.has_mask))
    x_all = image_to_tensor(labelled.images)
    m_all = mask_to_tensor((labelled.masks > 0).astype(np.uint8))
    model = PixelSegmenter(image_channels=int(x_all.shape[1]), features=cfg.features)

    def sample_batch(rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(rng.integers(0, len(x_all), cfg.batch_size))
        return flip_batch(x_all[idx], m_all[idx], rng)

    loss = train_loop(model, lambda m, b: m(b[0]), sample_batch, cfg.steps, cfg.lr, out_dir, cfg.seed,
                      cfg.checkpoint_every, resume, "Training pixel segmenter", progress, cfg.device)
    model.save_pretrained(out_dir / SEGMENTER_DIR, safe_serialization=True)
    info = {"kind": "pixel", "resolution": int(train.images.shape[1]), "image_channels": int(x_all.shape[1]),
            "final_train_loss": loss, "n_train": len(labelled), "config": cfg.model_dump(mode="json"),
            "code_version": code_version(), "seed": cfg.seed}
    save_validator_info(out_dir, info)
    if val is not None:
        save_validator_info(out_dir, {**info, **val_scores(load_validator(out_dir), val)})
    return out_dir
