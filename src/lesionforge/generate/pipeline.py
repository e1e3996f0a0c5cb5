"""The sampling pipeline, in the diffusers manner: ``LesionPipeline(unet, scheduler, text_encoder, vae)`` draws
one batch of labelled pairs from their conditions, ``pipe(masks, images, prompts, classes, seeds=...,
sampling=SamplingConfig(...))``. It knows nothing of files: :func:`~lesionforge.generate.synthesize.synthesize`
plans the conditions of each sample and writes what the pipeline returns.

Example::

    pipe = LesionPipeline.from_pretrained("runs/generator")
    out = pipe(masks=masks, seeds=[sample_seed(0, i) for i in range(len(masks))],
               sampling=SamplingConfig(steps=10))
    out.images, out.masks  # uint8 (B, H, W, C), uint8 (B, H, W)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, SchedulerMixin
from diffusers.utils import BaseOutput

from lesionforge.data.arrays import image_to_tensor, mask_to_tensor, tensor_to_image
from lesionforge.devices import resolve_device
from lesionforge.errors import ConfigError
from lesionforge.generate.batches import build_spatial, decode_samples, dilate_masks, encode, latent_mask
from lesionforge.generate.config import SamplingConfig, mask_channel
from lesionforge.generate.models import Conditions, LesionGenerator, read_meta
from lesionforge.generate.sampler import InpaintGuide, sample
from lesionforge.generate.textcond import TextConditioner


@dataclass
class LesionPipelineOutput(BaseOutput):
    """One drawn batch: ``images`` uint8 (B, H, W, C), their label ``masks`` uint8 (B, H, W) {0, 1} (the given
    masks, or for ``joint`` the drawn mask channel cleaned), ``mask_cleaning`` (``joint``: what the cleaning
    did per sample, else None) and the ``sampling`` settings used, every field set."""

    images: np.ndarray
    masks: np.ndarray
    mask_cleaning: list[dict] | None
    sampling: SamplingConfig


class LesionPipeline(DiffusionPipeline):
    """A trained generator ready to draw: ``unet`` (the :class:`LesionGenerator` denoiser: diffusers UNet, its
    ControlNet if any, and the kind's channel layout), ``scheduler`` (its training noise schedule, from which
    each sampler's scheduler is built), ``text_encoder`` (MiniLM, for text-conditioned kinds; None: the
    default one when the generator takes text) and ``vae`` (the :class:`LatentCodec` of a latent-space
    generator, else None). A ``DiffusionPipeline``: ``pipe.to(device)``, ``pipe.device``, ``pipe.components``.
    """

    def __init__(self, unet: LesionGenerator, scheduler: SchedulerMixin, text_encoder=None, vae=None):
        super().__init__()
        if text_encoder is None and unet.cfg.uses_text:
            from lesionforge.conditioning.text import default_text_encoder

            text_encoder = default_text_encoder()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, vae=vae)
        # encodes prompts and class labels (and their null twins for guidance); no prompts are chosen here
        self.text = TextConditioner(unet.cfg, None, text_encoder)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, vae=None, text_encoder=None,
                        device: str | torch.device | None = None) -> LesionPipeline:
        """The pipeline of a generator folder (``LesionGenerator.save_pretrained``); a latent-space generator's
        autoencoder is loaded from the folder its metadata names unless ``vae`` is given. ``device``: see
        :func:`~lesionforge.devices.resolve_device` (default CUDA when available, as the trainers)."""
        meta = read_meta(path)
        device = resolve_device(device)
        unet = LesionGenerator.from_pretrained(path).to(device)
        if vae is None and meta["space"] == "latent":
            from lesionforge.generate.autoencoder import LatentCodec

            vae = LatentCodec.from_pretrained(meta["autoencoder"], device=device)
        return cls(unet, unet.noise_scheduler(), text_encoder, vae)

    @torch.no_grad()
    def __call__(
        self,
        masks: np.ndarray | None = None,
        images: np.ndarray | None = None,
        prompts: list[str | None] | None = None,
        classes: list[str | None] | None = None,
        *,
        seeds: list[int],
        sampling: SamplingConfig | None = None,
        strength: float = 1.0,
    ) -> LesionPipelineOutput:
        """Draw ``len(seeds)`` pairs, sample ``k`` from its own noise ``seeds[k]`` (same seed, same pair,
        whatever the batch). Conditions by kind: ``masks`` uint8 (B, H, W) the labels (``mask2image``,
        ``inpaint``, ``edge-text``); ``images`` uint8 (B, H, W, C) the lesion-free backgrounds painted into
        (``inpaint``: outside the mask every pixel is kept bit for bit) or the real images whose edges guide
        (``edge-text``); ``prompts`` and ``classes`` for text / class conditioned generators; ``joint`` needs
        none. ``sampling``: None fields take the generator's own settings. ``strength`` < 1 (``inpaint``): the
        region starts from ``images``' own content there noised to that share of the schedule (SDEdit), so a
        lesion already in the image (a real one pasted onto the background) is re-drawn, not painted from noise."""
        gen, codec = self.unet, self.vae
        kind, b = gen.cfg.kind, len(seeds)
        sampling = (sampling or SamplingConfig()).resolved(gen.cfg)
        if kind != "joint" and (masks is None or len(masks) != b):
            raise ConfigError(f"kind {kind!r} draws from masks: give one per seed ({b})")
        if kind in ("inpaint", "edge-text") and (images is None or len(images) != b):
            raise ConfigError(f"kind {kind!r} needs an image per seed ({b})")
        if strength != 1.0 and kind != "inpaint":
            raise ConfigError(f"strength re-draws what an inpainting region holds; kind {kind!r} has no region")
        prompts, classes = prompts or [None] * b, classes or [None] * b
        cond, uncond, guide, grid = self._conditions(masks, images, prompts, classes, sampling.mask_guidance)
        scale = sampling.guidance_scale
        if sampling.guidance_region is not None and scale != 1.0:  # guidance near the label only
            near = mask_to_tensor(dilate_masks(masks, sampling.guidance_region))
            scale = 1.0 + (scale - 1.0) * latent_mask(near, 1 if codec is None else codec.downsample_factor)
        x0 = sample(gen, cond, list(seeds), sampler=sampling.sampler, steps=sampling.steps,
                    guidance_scale=scale, uncond=uncond, inpaint=guide,
                    repaint_jumps=sampling.repaint_jumps, grid=grid, eta=sampling.eta,
                    init=None if guide is None else guide.known, strength=strength)
        decoded, prob = decode_samples(kind, x0, codec)
        out = tensor_to_image(decoded)
        cleaning = None
        if kind == "inpaint":  # exact paste-back: outside the label mask every pixel is the background's own
            out = np.where(masks[..., None] > 0, out, images)
        if kind == "joint":
            from lesionforge.conditioning.masks import clean_generated_mask

            cleaned = [clean_generated_mask(prob[k, 0].cpu().numpy()) for k in range(b)]
            masks, cleaning = np.stack([m for m, _ in cleaned]), [c for _, c in cleaned]
        return LesionPipelineOutput(images=out, masks=masks, mask_cleaning=cleaning, sampling=sampling)

    def _conditions(self, masks, images, prompts, classes, mask_guidance: bool = False):
        """Batched ``(cond, uncond, inpaint guide, grid)``; ``mask_guidance``: the uncond twin's mask is unknown."""
        gen, codec, kind = self.unet, self.vae, self.unet.cfg.kind
        t, tm, labels = self.text.encode(list(prompts), list(classes))
        spatial = guide = None
        side = gen.cfg.resolution // (codec.downsample_factor if codec is not None else 1)
        if kind != "joint":
            region = dilate_masks(masks, gen.cfg.inpaint_dilate) if kind == "inpaint" else masks
            x = image_to_tensor(images) if images is not None else None
            m = mask_to_tensor(region)
            spatial = build_spatial(kind, x, m, codec)
            if kind == "inpaint":
                known = x if codec is None else encode(codec, x)
                factor = 1 if codec is None else codec.downsample_factor
                guide = InpaintGuide(known=known, region=latent_mask(m, factor))
        cond = Conditions(spatial, t, tm, labels)
        null_t, null_m, null_c = self.text.null()
        uncond = cond.nulled(null_t, null_m, null_c, mask_channel(kind) if mask_guidance else None)
        return cond, uncond, guide, (side, side)
