"""Single-step latent segmenter: predicts the lesion mask at image resolution from a (noisy) latent.

A diffusers ``UNet2DModel`` with its sinusoidal timestep embedding reads ``z_t`` on the latent grid; a
learned upsampling head (transposed convolutions) brings the features to image resolution. One forward
pass, no sampling loop: the filter can score a sample from its latent alone, at any noise level it was
trained on (t = 0 for finished samples).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from diffusers import DDPMScheduler, ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from lesionforge.data.arrays import PairArrays, image_to_tensor, mask_to_tensor
from lesionforge.devices import TrainedHere
from lesionforge.generate.autoencoder import LatentCodec
from lesionforge.outputs import claim_output
from lesionforge.utils import code_version, seed_everything
from lesionforge.validate import validator as registry
from lesionforge.validate.training import train_loop
from lesionforge.validate.validator import SEGMENTER_DIR, load_validator, register_kind, save_validator_info, val_scores


class LatentSegmenter(ModelMixin, ConfigMixin):
    """Latent ``z_t`` (B, c, h, w) + timestep ``t`` -> lesion logits (B, 1, h*f, w*f), in one pass."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        downsample_factor: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        head_channels: int = 16,
    ):
        super().__init__()
        n = len(block_out_channels)
        self.unet = UNet2DModel(
            in_channels=latent_channels, out_channels=head_channels, block_out_channels=tuple(block_out_channels),
            down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
            layers_per_block=layers_per_block, norm_num_groups=norm_num_groups, add_attention=False,
        )
        ups: list[nn.Module] = []
        for _ in range(int(math.log2(downsample_factor))):
            ups += [nn.ConvTranspose2d(head_channels, head_channels, 4, stride=2, padding=1), nn.SiLU()]
        self.head = nn.Sequential(*ups, nn.Conv2d(head_channels, 1, 3, padding=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Logits (B, 1, H, W) at image resolution for latents ``z`` (B, c, h, w) at timesteps ``t``."""
        t = torch.as_tensor(t, device=z.device).long().expand(z.shape[0])
        return self.head(self.unet(z, t).sample)

    @torch.no_grad()
    def predict(self, z: torch.Tensor, t: torch.Tensor | int = 0) -> torch.Tensor:
        """Lesion probability (B, 1, H, W) in [0, 1] from latents (B, c, h, w) at timestep(s) ``t``."""
        return torch.sigmoid(self(z.to(self.device, torch.float32), t))


#: The autoencoder a latent validator folder keeps beside its segmenter (it reads latents of that codec).
CODEC_DIR = "codec"


@register_kind("latent")
def load_latent_networks(path: Path) -> tuple[LatentSegmenter, LatentCodec]:
    return LatentSegmenter.from_pretrained(path / SEGMENTER_DIR), LatentCodec.from_pretrained(path / CODEC_DIR)


class LatentSegmenterConfig(TrainedHere):
    """Latent segmenter settings (the packaged ``validator-*.yaml`` presets with ``kind: latent``)."""

    kind: Literal["latent"] = "latent"
    resolution: int = 64  # images are loaded at this size; must match the codec's training size
    image_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    norm_num_groups: int = 8
    head_channels: int = 16
    num_train_timesteps: int = 1000
    max_timestep: int = 300  # noise levels seen in training: 0..max_timestep
    zero_t_fraction: float = 0.25  # share of batches at t = 0 (finished samples are scored at t = 0)
    eval_timestep: int = 0
    steps: int = 1500
    batch_size: int = 16
    lr: float = 1e-3
    checkpoint_every: int = 250
    seed: int = 0


@torch.no_grad()
def encode_flipped(codec: LatentCodec, arrays: PairArrays, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and masks of ``arrays`` and of their h/v flips (flipping images before encoding keeps the
    latents exact). Returns z (4N, c, h, w) and masks (4N, 1, H, W) in {0, 1}."""
    zs, ms = [], []
    x_all, m_all = image_to_tensor(arrays.images), mask_to_tensor((arrays.masks > 0).astype(np.uint8))
    for dims in ((), (-1,), (-2,), (-1, -2)):
        x = x_all.flip(dims) if dims else x_all
        zs += [codec.encode(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        ms.append(m_all.flip(dims) if dims else m_all)
    return torch.cat(zs), torch.cat(ms)


def train_latent_segmenter(
    cfg: LatentSegmenterConfig, train: PairArrays, codec: LatentCodec, out_dir: str | Path,
    val: PairArrays | None = None, resume: bool = True, overwrite: bool = False, progress: bool = False,
) -> Path:
    """Train a :class:`LatentSegmenter` on latents of the labelled images in ``train``.

    Each batch noises clean latents with ``DDPMScheduler.add_noise`` at t in [0, max_timestep] (t = 0 for
    ``zero_t_fraction`` of the samples); loss Dice + BCE on image-resolution masks. Writes a validator
    folder: ``segmenter/`` (config + safetensors), ``codec/``, ``scheduler/`` and ``validator.json``
    (with per-image Dice on real ``val`` images, used for the automatic filter threshold). Returns it.
    """
    out_dir = claim_output(out_dir, "validator run", overwrite=overwrite, resume=resume)
    if resume and registry.finished_validator(out_dir, cfg.model_dump(mode="json")):
        return out_dir
    seed_everything(cfg.seed)
    labelled = train.subset(np.flatnonzero(train.has_mask))
    z_all, m_all = encode_flipped(codec, labelled)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps)
    model = LatentSegmenter(
        latent_channels=codec.latent_channels, downsample_factor=codec.downsample_factor,
        block_out_channels=cfg.block_out_channels, layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, head_channels=cfg.head_channels,
    )

    def sample_batch(rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = torch.from_numpy(rng.integers(0, len(z_all), cfg.batch_size))
        t = torch.from_numpy(rng.integers(1, cfg.max_timestep + 1, cfg.batch_size))
        t = torch.where(torch.from_numpy(rng.random(cfg.batch_size) < cfg.zero_t_fraction), 0, t)
        noise = torch.from_numpy(rng.standard_normal(z_all[idx].shape).astype(np.float32))
        return scheduler.add_noise(z_all[idx], noise, t), t, m_all[idx]

    loss = train_loop(model, lambda m, b: m(b[0], b[1]), sample_batch, cfg.steps, cfg.lr, out_dir, cfg.seed,
                      cfg.checkpoint_every, resume, "Training latent segmenter", progress, cfg.device)
    model.save_pretrained(out_dir / SEGMENTER_DIR, safe_serialization=True)
    codec.save_pretrained(out_dir / CODEC_DIR)
    scheduler.save_pretrained(out_dir / "scheduler")
    info = {"kind": "latent", "eval_timestep": cfg.eval_timestep, "resolution": int(train.images.shape[1]),
            "image_channels": int(train.images.shape[-1]), "final_train_loss": loss, "n_train": len(labelled),
            "config": cfg.model_dump(mode="json"), "code_version": code_version(), "seed": cfg.seed}
    save_validator_info(out_dir, info)
    if val is not None:
        save_validator_info(out_dir, {**info, **val_scores(load_validator(out_dir), val)})
    return out_dir

