"""A new generator for a config: built from scratch, or started from a local base checkpoint
(:mod:`lesionforge.generate.pretrained`)."""

from __future__ import annotations

from diffusers import UNet2DConditionModel, UNet2DModel

from lesionforge.generate.augment import AUG_DIMS
from lesionforge.generate.config import GeneratorConfig
from lesionforge.generate.models import LesionGenerator, channel_layout
from lesionforge.generate.pretrained import generator_from_base


def build_generator(cfg: GeneratorConfig, latent_channels: int | None = None, downsample: int = 1) -> LesionGenerator:
    """A freshly initialised generator (or one started from ``cfg.pretrained``, see :mod:`.pretrained`)."""
    layout = channel_layout(cfg.kind, cfg.image_channels, latent_channels)
    if cfg.pretrained is not None:
        return generator_from_base(cfg, layout)
    size = cfg.resolution // downsample
    extra = AUG_DIMS if cfg.augment is not None else 0  # the augmentation condition's constant channels
    common = dict(
        sample_size=size, in_channels=layout.x + layout.spatial + extra, out_channels=layout.x,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, num_class_embeds=len(cfg.classes) + 1 if cfg.classes else None,
    )
    att = cfg.attention()
    if cfg.text:
        unet = UNet2DConditionModel(
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in att),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(att)),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=cfg.cross_attention_dim,
            encoder_hid_dim=cfg.text_dim, encoder_hid_dim_type="text_proj",
            attention_head_dim=cfg.attention_head_dim, **common,
        )
    else:
        unet = UNet2DModel(
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in att),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(att)),
            attention_head_dim=cfg.attention_head_dim, **common,
        )
    return LesionGenerator(cfg, unet, layout)
