"""The generator network: one wrapper over diffusers UNets for every generator kind.

Channel layouts (``C`` = image channels, or latent channels ``c`` in latent space; masks are {0, 1} maps
scaled to [-1, 1]; all spatial conditions are on the grid of ``x``):

===========  ======================  ==========================================  ==========
kind         x (denoised)            spatial conditions (concatenated to x_t)    UNet in
===========  ======================  ==========================================  ==========
mask2image   image (C)               mask (1)                                    C + 1
joint        image (C) + mask (1)    none                                        C + 1
edge-text    image (C)               edge map (1), mask (1)                      C + 2
inpaint      image (C)               masked background (C, zeros in mask), mask  2C + 1
===========  ======================  ==========================================  ==========

Text (MiniLM states, ``(B, L, 384)``) enters by cross-attention of a ``UNet2DConditionModel`` whose
``encoder_hid_dim`` projects 384 -> ``cross_attention_dim``; class labels by ``num_class_embeds`` with one
extra "null" class used for condition dropout and classifier-free guidance. With a ControlNet
(pretrained base, frozen) the spatial conditions go to the ControlNet instead of the UNet input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from diffusers import ControlNetModel, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from torch import nn

from lesionforge.errors import CheckpointError
from lesionforge.generate.augment import condition_maps
from lesionforge.generate.config import GeneratorConfig
from lesionforge.utils import write_json_atomic

META_FILE = "lesionforge.json"


@dataclass(frozen=True)
class ChannelLayout:
    """Channel counts of the denoised tensor ``x`` and of the spatial conditions, on one grid."""

    x: int
    spatial: int


def channel_layout(kind: str, image_channels: int, latent_channels: int | None = None) -> ChannelLayout:
    """Layout for ``kind``; ``latent_channels`` replaces the image channels in latent space."""
    c = latent_channels or image_channels
    return {
        "mask2image": ChannelLayout(c, 1),
        "joint": ChannelLayout(c + 1, 0),
        "edge-text": ChannelLayout(c, 2),
        "inpaint": ChannelLayout(c, c + 1),
    }[kind]


@dataclass
class Conditions:
    """Inputs besides ``x_t``: ``spatial`` (B, S, H, W) in [-1, 1]; ``text`` (B, L, D) encoder states with
    ``text_mask`` (B, L) {0, 1}; ``class_labels`` (B,) long (index ``num_classes`` = null class); ``augment``
    (B, 6) the training augmentation drawn (``generate.augment``; None: not augmented, as at sampling);
    ``x_weight`` (B, x, 1, 1), training only: loss weight per channel of ``x`` (0 where the target is unknown,
    e.g. the mask channel of ``joint`` pretrained on images without masks)."""

    spatial: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    class_labels: torch.Tensor | None = None
    augment: torch.Tensor | None = None
    x_weight: torch.Tensor | None = None

    def cat(self, other: Conditions) -> Conditions:
        """Stack two condition batches along the batch axis (cond + uncond in one pass)."""

        def c(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else torch.cat([a, b])

        return Conditions(c(self.spatial, other.spatial), c(self.text, other.text),
                          c(self.text_mask, other.text_mask), c(self.class_labels, other.class_labels),
                          c(self.augment, other.augment), c(self.x_weight, other.x_weight))

    def rows(self, index: torch.Tensor) -> Conditions:
        """The conditions of batch rows ``index`` (long (n,), repeats allowed)."""

        def r(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else a[index.to(a.device)]

        return Conditions(r(self.spatial), r(self.text), r(self.text_mask), r(self.class_labels), r(self.augment),
                          r(self.x_weight))

    def to(self, device: torch.device | str) -> Conditions:
        def m(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else a.to(device)

        return Conditions(m(self.spatial), m(self.text), m(self.text_mask), m(self.class_labels), m(self.augment),
                          m(self.x_weight))

    def nulled(self, null_text: torch.Tensor | None, null_mask: torch.Tensor | None, null_class: int,
               mask_channel: int | None = None) -> Conditions:
        """The unconditional twin: prompt "" states and the null class; spatial conditions stay, except spatial
        channel ``mask_channel`` (``generate.config.mask_channel``) when given, set to "mask unknown" (0) as well.
        Nothing to null returns ``self`` itself (the sampler then skips guidance)."""
        if self.text is None and self.class_labels is None and mask_channel is None:
            return self
        b = len(next(a for a in (self.text, self.class_labels, self.spatial) if a is not None))
        text = None if self.text is None else null_text.expand(b, *null_text.shape[1:])
        mask = None if self.text_mask is None else null_mask.expand(b, *null_mask.shape[1:])
        labels = None if self.class_labels is None else torch.full_like(self.class_labels, null_class)
        spatial = self.spatial if mask_channel is None else unknown_mask(self.spatial, mask_channel)
        return replace(self, spatial=spatial, text=text, text_mask=mask, class_labels=labels)


def unknown_mask(spatial: torch.Tensor, channel: int, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``spatial`` with its mask ``channel`` set to 0 (in ``rows``, default all): "mask unknown", a value no real
    mask (-1 or +1) takes. Generators pretrained on images without masks learn it (``trainbatch._unknown``), so
    it is also the unconditional twin of mask guidance."""
    out = spatial.clone()
    out[slice(None) if rows is None else rows, channel] = 0.0
    return out


class LesionGenerator(nn.Module):
    """A denoiser ``(x_t, t, Conditions) -> prediction`` (epsilon or v, shape of ``x_t``) for one kind."""

    def __init__(self, cfg: GeneratorConfig, unet: UNet2DModel | UNet2DConditionModel,
                 layout: ChannelLayout, controlnet: ControlNetModel | None = None):
        super().__init__()
        self.cfg = cfg
        self.layout = layout
        self.unet = unet
        self.controlnet = controlnet

    @property
    def device(self) -> torch.device:
        """Where the weights are (what ``diffusers.DiffusionPipeline`` asks its modules)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def num_classes(self) -> int:
        return len(self.cfg.classes)

    @property
    def has_text(self) -> bool:
        return isinstance(self.unet, UNet2DConditionModel)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters that train: all of them, or with a frozen pretrained base the ControlNet and the
        modules the base did not have (text projection, class embedding)."""
        return [p for p in self.parameters() if p.requires_grad]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """``x_t`` (B, x, H, W), ``t`` (B,) long -> prediction (B, x, H, W)."""
        labels = cond.class_labels if self.num_classes else None
        if self.controlnet is not None:
            # ControlNetModel.forward neither applies its text projection nor takes a cross-attention mask:
            # it gets the UNet's projected MiniLM states and attends to the padding tokens too
            proj = self.unet.encoder_hid_proj
            ctx = cond.text if proj is None else proj(cond.text)
            down, mid = self.controlnet(x_t, t, encoder_hidden_states=ctx, controlnet_cond=cond.spatial,
                                        class_labels=labels, return_dict=False)
            return self.unet(x_t, t, encoder_hidden_states=cond.text, class_labels=labels,
                             encoder_attention_mask=cond.text_mask, down_block_additional_residuals=down,
                             mid_block_additional_residual=mid).sample
        inp = x_t if self.layout.spatial == 0 else torch.cat([x_t, cond.spatial.to(x_t.dtype)], dim=1)
        if self.cfg.augment is not None:  # which augmentation was drawn, as constant maps (zeros: none)
            inp = torch.cat([inp, condition_maps(cond.augment, len(x_t), x_t.shape[-2:], x_t)], dim=1)
        if self.has_text:
            return self.unet(inp, t, encoder_hidden_states=cond.text, class_labels=labels,
                             encoder_attention_mask=cond.text_mask).sample
        return self.unet(inp, t, class_labels=labels).sample

    def noise_scheduler(self) -> DDPMScheduler:
        """The training noise schedule (samplers are built from its config)."""
        return DDPMScheduler(num_train_timesteps=self.cfg.num_train_timesteps, beta_schedule=self.cfg.beta_schedule,
                             prediction_type=self.cfg.prediction_type, clip_sample=False)

    def save_pretrained(self, out_dir: str | Path, extra: dict | None = None) -> Path:
        """Write ``unet/`` (and ``controlnet/``) in diffusers layout with safetensors, ``scheduler/`` and
        ``lesionforge.json`` (kind, layout, config, ``extra`` such as the autoencoder path)."""
        out_dir = Path(out_dir)
        self.unet.save_pretrained(out_dir / "unet", safe_serialization=True)
        if self.controlnet is not None:
            self.controlnet.save_pretrained(out_dir / "controlnet", safe_serialization=True)
        self.noise_scheduler().save_pretrained(out_dir / "scheduler")
        meta = {
            "kind": self.cfg.kind, "x_channels": self.layout.x, "spatial_channels": self.layout.spatial,
            "image_channels": self.cfg.image_channels, "resolution": self.cfg.resolution, "space": self.cfg.space,
            "prediction_type": self.cfg.prediction_type, "text": self.has_text, "classes": self.cfg.classes,
            "unet_class": type(self.unet).__name__, "controlnet": self.controlnet is not None,
            "scheduler": {k: v for k, v in self.noise_scheduler().config.items() if not k.startswith("_")},
            "config": self.cfg.model_dump(mode="json"), **(extra or {}),
        }
        write_json_atomic(out_dir / META_FILE, meta)
        return out_dir

    @classmethod
    def from_pretrained(cls, path: str | Path) -> LesionGenerator:
        """Load a folder written by :meth:`save_pretrained`."""
        path = Path(path)
        meta = read_meta(path)
        cfg = GeneratorConfig.model_validate(meta["config"])
        unet_cls = UNet2DConditionModel if meta["unet_class"] == "UNet2DConditionModel" else UNet2DModel
        unet = unet_cls.from_pretrained(path / "unet")
        controlnet = ControlNetModel.from_pretrained(path / "controlnet") if meta["controlnet"] else None
        gen = cls(cfg, unet, ChannelLayout(meta["x_channels"], meta["spatial_channels"]), controlnet)
        return gen.eval()


def read_meta(path: str | Path) -> dict:
    """The ``lesionforge.json`` of a generator folder; :class:`CheckpointError` if absent or broken."""
    f = Path(path) / META_FILE
    if not f.is_file():
        raise CheckpointError(f"{path}: not a generator folder (no {META_FILE})")
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from e
