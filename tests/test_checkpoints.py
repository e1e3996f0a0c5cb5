"""One checkpoint format (lesionforge.checkpoints), and every older format existing run folders hold still reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_generate_common import killed_after_a_checkpoint, pairs, tiny_cfg

from lesionforge.checkpoints import load_tensor_state, load_torch_state, save_tensor_state
from lesionforge.data.arrays import PairArrays
from lesionforge.errors import CheckpointError
from lesionforge.generate.autoencoder import AutoencoderConfig, train_autoencoder
from lesionforge.generate.trainer import train_generator
from lesionforge.quality.features import load_extractor, train_segmentation_encoder
from lesionforge.segment.config import SegmentConfig
from lesionforge.segment.model_io import load_segmenter
from lesionforge.segment.networks import build_network
from lesionforge.train_state import TRAIN_STATE, load_train_state


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tensor_state_round_trip(tmp_path):
    state = {"decay": 0.99, "step": 3, "warmup": True, "shadow_params": [torch.ones(2), torch.zeros(3, 1)],
             "scale": torch.tensor([2.0])}
    save_tensor_state(state, tmp_path / "ema")
    back = load_tensor_state(tmp_path / "ema")
    assert {k: v for k, v in back.items() if k not in ("shadow_params", "scale")} == {
        "decay": 0.99, "step": 3, "warmup": True}
    assert all(torch.equal(a, b) for a, b in zip(back["shadow_params"], state["shadow_params"], strict=True))
    assert torch.equal(back["scale"], state["scale"])


def test_a_segmenter_folder_written_by_older_code_loads(tmp_path):
    """Older segmenter folders: weights written with safetensors' save_file (no metadata) + segmenter.json."""
    cfg = SegmentConfig(features=(8, 8, 16, 16, 32, 8), resolution=32)
    net = build_network(cfg.network, 3, cfg.features, cfg.resolution)
    folder = tmp_path / "old"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "segmenter.json").write_text(json.dumps({"in_channels": 3, "config": cfg.model_dump(mode="json")}),
                                           encoding="utf-8")
    assert _same(load_segmenter(folder).state_dict(), net.state_dict())
    (folder / "segmenter.json").unlink()
    with pytest.raises(CheckpointError, match="not a segmenter checkpoint"):
        load_segmenter(folder)


def test_a_train_state_written_by_older_code_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = tmp_path / TRAIN_STATE
    state.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(state / "model.safetensors"))
    torch.save({"opt": {}}, state / "optim.pt")
    (state / "step.json").write_text('{"step": 5}', encoding="utf-8")
    fresh = torch.nn.Linear(3, 2)
    assert load_train_state(tmp_path, "model", fresh) == (5, {"opt": {}})
    assert _same(fresh.state_dict(), model.state_dict())


def test_a_generator_checkpoint_with_legacy_ema_pt_resumes_identically(demo_arrays, tmp_path, monkeypatch):
    cfg = tiny_cfg("mask2image", steps=4, checkpoint_every=2)
    data = pairs(demo_arrays)
    straight = train_generator(cfg, data, tmp_path / "straight", progress=False)
    assert (straight / "checkpoint-4" / "ema.safetensors").is_file()
    assert not (straight / "checkpoint-4" / "ema.pt").exists()

    with killed_after_a_checkpoint(monkeypatch):
        train_generator(cfg, data, tmp_path / "old", progress=False)
    ckpt = tmp_path / "old" / "checkpoint-2"  # rewritten as an older version wrote it: EMA in a torch.save blob
    torch.save(load_tensor_state(ckpt / "ema"), ckpt / "ema.pt")
    (ckpt / "ema.safetensors").unlink()
    (ckpt / "ema.json").unlink()
    resumed = train_generator(cfg, data, tmp_path / "old", progress=False)
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert _same(load_file(straight / weights), load_file(resumed / weights))  # final EMA weights


def test_an_autoencoder_state_with_the_discriminator_in_optim_pt_resumes(demo_arrays, tmp_path):
    cfg = dict(resolution=32, block_out_channels=(8, 16), norm_num_groups=8, mid_block_attention=False,
               batch_size=2, lr=2e-3, adversarial_weight=0.5, adversarial_start=0, checkpoint_every=1)
    train = PairArrays(demo_arrays.images[:6], demo_arrays.masks[:6], np.ones(6, bool), demo_arrays.ids[:6],
                       [None] * 6)
    new = train_autoencoder(AutoencoderConfig(**cfg, steps=2), train, tmp_path / "new")
    assert (new / TRAIN_STATE / "disc.safetensors").is_file()
    old = tmp_path / "old"
    shutil.copytree(new, old)
    optim = load_torch_state(old / TRAIN_STATE / "optim.pt")  # as an older version wrote it
    optim["disc"] = load_file(old / TRAIN_STATE / "disc.safetensors")
    torch.save(optim, old / TRAIN_STATE / "optim.pt")
    (old / TRAIN_STATE / "disc.safetensors").unlink()
    for folder in (new, old):
        train_autoencoder(AutoencoderConfig(**cfg, steps=3), train, folder, resume=True)
    state = f"{TRAIN_STATE}/vae.safetensors"
    assert _same(load_file(new / state), load_file(old / state))


def test_a_seg_encoder_run_with_legacy_train_state_pt_resumes_to_the_same_weights(demo_arrays, tmp_path,
                                                                                  monkeypatch):
    from test_quality_features import interrupted_seg_encoder

    train = PairArrays(demo_arrays.images[:12], demo_arrays.masks[:12], np.ones(12, bool), demo_arrays.ids[:12],
                       [None] * 12)
    opts = dict(features=(8, 8, 16, 16, 32, 8), steps=4, batch_size=4, checkpoint_every=2)
    whole = train_segmentation_encoder(train, tmp_path / "whole", **opts)
    interrupted_seg_encoder(train, tmp_path / "cut", monkeypatch, **opts)
    cut = tmp_path / "cut"
    optim = load_torch_state(cut / TRAIN_STATE / "optim.pt")  # rewritten as train_state.pt, the older format
    torch.save({"step": 2, "cfg": optim["cfg"], "model": load_file(cut / TRAIN_STATE / "model.safetensors"),
                "opt": optim["opt"], "rng": optim["rng"]}, cut / "train_state.pt")
    shutil.rmtree(cut / TRAIN_STATE)
    train_segmentation_encoder(train, cut, **opts, resume=True)
    assert not (cut / "train_state.pt").exists() and not (cut / TRAIN_STATE).exists()
    assert load_extractor(cut).checkpoint_hash == load_extractor(whole).checkpoint_hash
