"""MONAI 2D segmentation networks built by name; every one outputs one logit channel (lesion)."""

from __future__ import annotations

from typing import Any

from monai.networks import nets
from torch import nn

from lesionforge.errors import ConfigError

NETWORKS = ("BasicUNet", "UNet", "AttentionUnet", "SegResNet", "UNETR", "SwinUNETR")


def build_network(
    name: str, in_channels: int, features: tuple[int, ...], resolution: int, **kwargs: Any
) -> nn.Module:
    """A MONAI network (``spatial_dims=2``) mapping (B, in_channels, H, W) to logits (B, 1, H, W).

    ``features`` sets the width: BasicUNet takes all six; UNet/AttentionUnet use them as channels per level
    (stride 2 between levels); SegResNet, UNETR and SwinUNETR take ``features[0]`` as their base width.
    ``kwargs`` go to the constructor unchanged (e.g. ``hidden_size`` for UNETR, ``depths`` for SwinUNETR).
    """
    common = {"spatial_dims": 2, "in_channels": in_channels, "out_channels": 1}
    if name == "BasicUNet":
        if len(features) != 6:
            raise ConfigError(f"BasicUNet needs 6 features, got {features}")
        return nets.BasicUNet(features=features, **common, **kwargs)
    if name in ("UNet", "AttentionUnet"):
        levels = features[:-1] if len(features) == 6 else features  # BasicUNet's last entry is its head width
        cls = nets.UNet if name == "UNet" else nets.AttentionUnet
        opts = {"num_res_units": 2} if name == "UNet" else {}
        return cls(channels=levels, strides=(2,) * (len(levels) - 1), **common, **{**opts, **kwargs})
    if name == "SegResNet":
        return nets.SegResNet(init_filters=features[0], **common, **{"num_groups": min(8, features[0]), **kwargs})
    if name == "UNETR":
        opts = {"feature_size": features[0], "hidden_size": 256, "mlp_dim": 512, "num_heads": 8}
        return nets.UNETR(img_size=resolution, **common, **{**opts, **kwargs})
    if name == "SwinUNETR":
        # feature_size must be divisible by 12 (MONAI); the smallest multiple at or above features[0]
        opts = {"feature_size": max(12, -(-features[0] // 12) * 12), "window_size": 4}
        return nets.SwinUNETR(**common, **{**opts, **kwargs})
    raise ConfigError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
