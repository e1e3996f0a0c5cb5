"""Shared helpers of the generator tests (tiny configs, demo arrays, a fake latent codec). No tests here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from lesionforge.data.arrays import PairArrays
from lesionforge.generate import trainer
from lesionforge.generate.config import GeneratorConfig


def tiny_cfg(kind: str, **kw) -> GeneratorConfig:
    """A ~0.2 M-parameter generator at 32 px that trains a step in well under 0.1 s on one CPU core."""
    base = dict(kind=kind, resolution=32, block_out_channels=[16, 32], attention_levels=[False, False],
                norm_num_groups=8, steps=6, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=3,
                sample_every=0, sample_steps=4, cross_attention_dim=16, attention_head_dim=8)
    base.update(kw)
    return GeneratorConfig(**base)


def pairs(demo_arrays, lesion_only: bool = False) -> PairArrays:
    """The demo fixture as PairArrays (optionally the lesion pairs only)."""
    keep = np.flatnonzero(demo_arrays.masks.reshape(len(demo_arrays.masks), -1).any(1)) if lesion_only \
        else np.arange(len(demo_arrays.masks))
    return PairArrays(demo_arrays.images[keep], demo_arrays.masks[keep], np.ones(len(keep), bool),
                      [demo_arrays.ids[i] for i in keep], [None] * len(keep))


def normals(demo_arrays) -> PairArrays:
    """The lesion-free demo images, image-only."""
    keep = np.flatnonzero(~demo_arrays.masks.reshape(len(demo_arrays.masks), -1).any(1))
    return PairArrays(demo_arrays.images[keep], demo_arrays.masks[keep], np.zeros(len(keep), bool),
                      [demo_arrays.ids[i] for i in keep], [None] * len(keep))


class TinyCodec:
    """The LatentCodec interface around an untrained tiny diffusers AutoencoderKL (4x downsampling)."""

    def __init__(self):
        from diffusers import AutoencoderKL

        torch.manual_seed(0)
        self.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16, 16),
                                 down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                                 layers_per_block=1, norm_num_groups=8).eval()
        self.latent_channels, self.downsample_factor = 4, 4

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mode()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z).sample


@contextmanager
def killed_after_a_checkpoint(monkeypatch) -> Iterator[None]:
    """Generator training inside the block stops (KeyboardInterrupt) right after it writes its first checkpoint,
    as a killed job would; afterwards checkpoints are saved normally again."""
    real_save = trainer.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(trainer, "save_checkpoint", real_save)
