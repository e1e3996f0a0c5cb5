"""Start ``inpaint`` or ``edge-text`` from a local diffusers checkpoint (a Stable-Diffusion-like
``UNet2DConditionModel``, e.g. one a user downloaded elsewhere); nothing is fetched from the network.

Two ways in:

- adapt (default): the base UNet trains as a whole; its ``conv_in`` is widened to take the spatial
  conditions (new input channels start at zero, so at step 0 the model is exactly the base, as in
  Stable-Diffusion inpainting). A base that already has ``x + spatial`` input channels (an SD-inpainting
  UNet in latent space: 4 + 4 + 1) is used as it is.
- ``controlnet: true``: the base is frozen and a ``ControlNetModel.from_unet`` copy reads the spatial
  conditions (edge map + mask) and adds residuals to it.

MiniLM states are 384-d; when the base was trained with another text encoder a ``text_proj`` projection
(``encoder_hid_dim: 384``) is added and trained, and likewise a class embedding if classes are configured.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from lesionforge.errors import CheckpointError
from lesionforge.generate.config import GeneratorConfig
from lesionforge.generate.models import ChannelLayout, LesionGenerator

#: Width of the ControlNet condition embedding: a single block keeps the spatial grid (no downsampling),
#: because our conditions are already on the grid of ``x``.
CONTROLNET_EMBED = (16,)


def load_base_unet(path: str | Path) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` from a folder holding it directly or in ``unet/`` (a pipeline folder)."""
    path = Path(path)
    folder = path / "unet" if (path / "unet" / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{path}: no diffusers UNet here (expected config.json or unet/config.json)")
    try:
        return UNet2DConditionModel.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{folder}: cannot load as UNet2DConditionModel ({e})") from e


def generator_from_base(cfg: GeneratorConfig, layout: ChannelLayout) -> LesionGenerator:
    """Build the generator of ``cfg`` (``cfg.pretrained`` set) around the local base UNet."""
    base = load_base_unet(cfg.pretrained)
    if base.config.out_channels != layout.x:
        raise CheckpointError(f"{cfg.pretrained}: base outputs {base.config.out_channels} channels, "
                              f"{cfg.kind} in {cfg.space} space needs {layout.x}")
    want_in = layout.x if cfg.controlnet else layout.x + layout.spatial
    unet = _with_text_and_classes(base, cfg, want_in)
    controlnet = None
    if cfg.controlnet:
        controlnet = ControlNetModel.from_unet(unet, conditioning_channels=layout.spatial,
                                               conditioning_embedding_out_channels=CONTROLNET_EMBED)
        unet.requires_grad_(False)
        if controlnet.encoder_hid_proj is not None:  # unused: the ControlNet reads the UNet's projected states
            controlnet.encoder_hid_proj.requires_grad_(False)
        for name in _new_modules(base, cfg):  # modules the base never learnt must train even when it is frozen
            getattr(unet, name).requires_grad_(True)
    return LesionGenerator(cfg, unet, layout, controlnet)


def _new_modules(base: UNet2DConditionModel, cfg: GeneratorConfig) -> list[str]:
    names = []
    if base.config.encoder_hid_dim != cfg.text_dim:
        names.append("encoder_hid_proj")
    if cfg.classes and base.config.num_class_embeds != len(cfg.classes) + 1:
        names.append("class_embedding")
    return names


def _with_text_and_classes(base: UNet2DConditionModel, cfg: GeneratorConfig, in_channels: int) -> UNet2DConditionModel:
    """Copy of ``base`` with ``in_channels`` inputs, a 384-d text projection and the configured classes."""
    if base.config.in_channels not in (base.config.out_channels, in_channels):
        raise CheckpointError(f"{cfg.pretrained}: base takes {base.config.in_channels} input channels; "
                              f"expected {base.config.out_channels} or {in_channels}")
    config = dict(base.config)
    config.update(in_channels=in_channels, encoder_hid_dim=cfg.text_dim, encoder_hid_dim_type="text_proj",
                  num_class_embeds=len(cfg.classes) + 1 if cfg.classes else base.config.num_class_embeds)
    unet = UNet2DConditionModel.from_config(config)
    new = tuple(f"{n}." for n in _new_modules(base, cfg))
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(new)}
    if base.config.in_channels != in_channels:
        state["conv_in.weight"] = _widen(state["conv_in.weight"], in_channels)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith(new) for k in missing):
        raise CheckpointError(f"{cfg.pretrained}: weights do not fit (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    return unet


def _widen(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """conv_in weight (O, I, k, k) -> (O, in_channels, k, k); the new input channels start at zero."""
    out = torch.zeros(weight.shape[0], in_channels, *weight.shape[2:], dtype=weight.dtype)
    out[:, : weight.shape[1]] = weight
    return out
