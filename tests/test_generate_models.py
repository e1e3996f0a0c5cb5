"""Generator network: channel layouts, classifier-free guidance, save/load round trip."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from test_generate_common import tiny_cfg

from lesionforge.errors import ConfigError
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import mask_channel
from lesionforge.generate.models import Conditions, LesionGenerator, channel_layout
from lesionforge.generate.sampler import guided_prediction


@pytest.mark.parametrize(("kind", "x", "spatial"), [("mask2image", 3, 1), ("joint", 4, 0), ("edge-text", 3, 2),
                                                    ("inpaint", 3, 4)])
def test_channel_layout_and_forward_shape(kind, x, spatial):
    layout = channel_layout(kind, 3)
    assert (layout.x, layout.spatial) == (x, spatial)
    gen = build_generator(tiny_cfg(kind))
    assert gen.unet.config.in_channels == x + spatial and gen.unet.config.out_channels == x
    cond = Conditions(torch.zeros(2, spatial, 32, 32) if spatial else None)
    out = gen(torch.randn(2, x, 32, 32), torch.tensor([1, 500]), cond)
    assert out.shape == (2, x, 32, 32)


def test_latent_layout_uses_latent_channels():
    assert channel_layout("inpaint", 3, latent_channels=4).spatial == 5
    with pytest.raises(ConfigError, match="pixel space only"):
        tiny_cfg("joint", space="latent", autoencoder="x")


def _text_cond(b: int = 2) -> Conditions:
    g = torch.Generator().manual_seed(0)
    return Conditions(torch.zeros(b, 1, 32, 32), torch.randn(b, 5, 384, generator=g), torch.ones(b, 5),
                      torch.tensor([0, 1][:b]))


def test_classifier_free_guidance_scale_one_is_conditional_exactly():
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image", text=True, classes=["benign", "malignant"])).eval()
    cond = _text_cond()
    uncond = cond.nulled(torch.zeros(1, 5, 384), torch.ones(1, 5), null_class=2)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        c, u = gen(x, t, cond), gen(x, t, uncond)
        assert torch.equal(guided_prediction(gen, x, t, cond, uncond, 1.0), c)
        guided = guided_prediction(gen, x, t, cond, uncond, 3.0)
    assert not torch.allclose(c, u)  # the null condition really changes the prediction
    torch.testing.assert_close(guided, u + 3.0 * (c - u), atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("edge-text", text=True)).eval()
    gen.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "lesionforge.json").read_text(encoding="utf-8"))
    assert meta["kind"] == "edge-text" and meta["x_channels"] == 3 and meta["spatial_channels"] == 2
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert isinstance(UNet2DConditionModel.from_pretrained(tmp_path / "unet"), UNet2DConditionModel)
    back = LesionGenerator.from_pretrained(tmp_path)
    cond = Conditions(torch.randn(2, 2, 32, 32), torch.randn(2, 5, 384), torch.ones(2, 5))
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([3, 900])
    with torch.no_grad():
        assert torch.equal(gen(x, t, cond), back(x, t, cond))


def test_pixel_model_is_plain_diffusers(tmp_path):
    build_generator(tiny_cfg("joint")).save_pretrained(tmp_path)
    assert UNet2DModel.from_pretrained(tmp_path / "unet").config.in_channels == 4


def test_nulled_mask_channel_is_mask_unknown_and_nothing_to_null_is_self():
    spatial = torch.stack([torch.full((32, 32), -1.0), torch.ones(32, 32)])[None].repeat(2, 1, 1, 1)  # edges, mask
    cond = Conditions(spatial)
    assert cond.nulled(None, None, 0) is cond  # no prompt, no class, no mask guidance: nothing to guide by
    twin = cond.nulled(None, None, 0, mask_channel=mask_channel("edge-text"))
    assert torch.equal(twin.spatial[:, 0], spatial[:, 0]) and torch.equal(twin.spatial[:, 1], torch.zeros(2, 32, 32))
    assert torch.equal(cond.spatial, spatial)  # the conditions themselves are untouched
    assert mask_channel("mask2image") == 0
    assert mask_channel("inpaint") is None and mask_channel("joint") is None


def test_mask_guidance_only_after_pretraining_without_masks():
    assert tiny_cfg("mask2image", pretrain_steps=2).learns_unknown_mask
    assert tiny_cfg("edge-text", pretrain_steps=2).learns_unknown_mask
    assert not tiny_cfg("mask2image").learns_unknown_mask
    assert not tiny_cfg("inpaint", pretrain_steps=2).learns_unknown_mask


def test_guidance_scale_map_guides_only_where_it_is_not_one():
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image", pretrain_steps=2)).eval()
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 8:20, 8:20] = 1.0
    cond = Conditions(mask * 2 - 1)
    uncond = cond.nulled(None, None, 0, mask_channel=0)
    scale = 1.0 + 2.0 * mask  # 3 on the mask, 1 elsewhere
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        c, u = gen(x, t, cond), gen(x, t, uncond)
        guided = guided_prediction(gen, x, t, cond, uncond, scale)
    assert not torch.allclose(c, u)
    inside = mask.expand_as(c) > 0
    torch.testing.assert_close(guided[~inside], c[~inside], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[inside], (u + 3.0 * (c - u))[inside], atol=1e-5, rtol=1e-4)
