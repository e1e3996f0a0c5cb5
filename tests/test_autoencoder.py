"""Latent codec: round trip shapes and ranges, scale factor stored and restored, pretrained VAE folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lesionforge.data.arrays import PairArrays, image_to_tensor
from lesionforge.errors import CheckpointError
from lesionforge.generate.autoencoder import AutoencoderConfig, LatentCodec, build_autoencoder, train_autoencoder

TINY = dict(resolution=32, block_out_channels=(8, 16, 16), norm_num_groups=8, mid_block_attention=False,
            batch_size=2, lr=2e-3)


def _pairs(demo, idx) -> PairArrays:
    idx = list(idx)
    return PairArrays(demo.images[idx], demo.masks[idx], np.ones(len(idx), bool), [demo.ids[i] for i in idx],
                      [None] * len(idx))


def test_round_trip_shapes_and_range(demo_arrays):
    torch.manual_seed(0)
    codec = LatentCodec(build_autoencoder(AutoencoderConfig(**TINY)))
    x = image_to_tensor(demo_arrays.images[:2])
    z = codec.encode(x)
    assert z.shape == (2, 4, 8, 8)
    assert codec.downsample_factor == 4 and codec.latent_channels == 4
    assert torch.equal(z, codec.encode(x))  # deterministic: the posterior mean, no sampling
    rec = codec.decode(z)
    assert rec.shape == x.shape and rec.min() >= -1 and rec.max() <= 1
    with pytest.raises(ValueError, match="divisible by 4"):
        codec.encode(x[..., :30, :30])


def test_train_stores_scale_and_resumes(demo_arrays, tmp_path):
    train, val = _pairs(demo_arrays, range(8)), _pairs(demo_arrays, range(8, 12))
    out = train_autoencoder(AutoencoderConfig(**TINY, steps=2, checkpoint_every=1), train, tmp_path / "ae", val=val)
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["val"]["psnr"] > 0 and 0 < metrics["val"]["ssim"] <= 1 and metrics["val"]["n"] == 4
    codec = LatentCodec.from_pretrained(out)
    assert codec.scaling_factor == pytest.approx(metrics["scaling_factor"]) and codec.scaling_factor != 1.0
    z = codec.encode(image_to_tensor(train.images))
    assert float(z.std()) == pytest.approx(1.0, rel=1e-3)  # unit variance on the training latents
    # resume: a longer run continues from the stored step instead of starting over
    train_autoencoder(AutoencoderConfig(**TINY, steps=3, checkpoint_every=1), train, out, resume=True)
    assert json.loads((out / "train_state" / "step.json").read_text(encoding="utf-8"))["step"] == 3


def test_loads_pretrained_vae_folder(tmp_path, demo_arrays):
    torch.manual_seed(0)
    vae = build_autoencoder(AutoencoderConfig(**TINY))
    vae.register_to_config(scaling_factor=0.18215)
    vae.save_pretrained(tmp_path / "sd" / "vae")  # the layout of a Stable Diffusion checkpoint
    codec = LatentCodec.from_pretrained(tmp_path / "sd")
    assert codec.scaling_factor == pytest.approx(0.18215)
    x = image_to_tensor(demo_arrays.images[:2])
    with torch.no_grad():
        expected = vae.eval().encode(x).latent_dist.mean * 0.18215
    torch.testing.assert_close(codec.encode(x), expected)
    with pytest.raises(CheckpointError, match="no config.json"):
        LatentCodec.from_pretrained(tmp_path)
