"""Local pretrained bases: a tiny Stable-Diffusion-like UNet saved by the test is adapted (inpaint) or
frozen under a ControlNet (edge-text)."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from test_generate_common import pairs, tiny_cfg

from lesionforge.errors import CheckpointError
from lesionforge.generate.build import build_generator
from lesionforge.generate.models import Conditions, LesionGenerator
from lesionforge.generate.trainer import train_generator


@pytest.fixture
def base_dir(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                norm_num_groups=8, cross_attention_dim=24, attention_head_dim=8)
    unet.save_pretrained(tmp_path / "base" / "unet")  # a pipeline-style folder
    return tmp_path / "base"


def test_inpaint_adapts_a_local_base(base_dir):
    gen = build_generator(tiny_cfg("inpaint", pretrained=str(base_dir))).eval()
    base = UNet2DConditionModel.from_pretrained(base_dir / "unet").state_dict()
    mine = gen.unet.state_dict()
    assert gen.unet.config.in_channels == 3 + 4 and "encoder_hid_proj.weight" in mine
    assert all(torch.equal(base[k], mine[k]) for k in base if k != "conv_in.weight")
    assert torch.equal(mine["conv_in.weight"][:, :3], base["conv_in.weight"])
    assert not mine["conv_in.weight"][:, 3:].any()  # new condition channels start at zero
    x, t, text = torch.randn(1, 3, 32, 32), torch.tensor([500]), torch.randn(1, 4, 384)
    with torch.no_grad():  # hence at step 0 the spatial conditions do not change the output yet
        a = gen(x, t, Conditions(torch.zeros(1, 4, 32, 32), text))
        b = gen(x, t, Conditions(torch.ones(1, 4, 32, 32), text))
    assert torch.equal(a, b)


def test_edge_text_controlnet_trains_with_frozen_base(base_dir, demo_arrays, tmp_path):
    cfg = tiny_cfg("edge-text", pretrained=str(base_dir), controlnet=True, steps=2, checkpoint_every=2,
                   dataset="kvasir-seg")
    out = train_generator(cfg, pairs(demo_arrays, lesion_only=True), tmp_path / "g", progress=False)
    gen = LesionGenerator.from_pretrained(out)
    assert gen.controlnet is not None and gen.controlnet.config.conditioning_channels == 2
    base = UNet2DConditionModel.from_pretrained(base_dir / "unet").state_dict()
    mine = gen.unet.state_dict()
    assert all(torch.equal(base[k], mine[k]) for k in base)  # the base stayed frozen
    fresh = build_generator(cfg)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.controlnet.parameters(), gen.controlnet.parameters(),
                                                     strict=True))  # the ControlNet learnt


def test_incompatible_base_is_a_clear_error(base_dir):
    with pytest.raises(CheckpointError, match="needs 1|outputs 3"):
        build_generator(tiny_cfg("inpaint", pretrained=str(base_dir), image_channels=1))
    with pytest.raises(CheckpointError, match="no diffusers UNet"):
        build_generator(tiny_cfg("inpaint", pretrained=str(base_dir / "missing")))
