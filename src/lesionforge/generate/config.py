"""Settings of a generator: model size, diffusion schedule, training and default sampling options.

Presets are the packaged ``generator-<kind>-<dataset>-<profile>.yaml`` (:mod:`lesionforge.presets`), read with
:func:`load_generator_config`.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from lesionforge.config import LaterFields, StrictModel, resolve_preset, validate_config
from lesionforge.devices import TrainedHere
from lesionforge.errors import ConfigError

Kind = Literal["mask2image", "joint", "edge-text", "inpaint"]


def mask_channel(kind: str) -> int | None:
    """Index of the label mask among the spatial conditions of ``kind`` (``generate.models`` has the channel
    table), None where the mask is not a condition (``joint``) or defines where to paint (``inpaint``: nothing to
    guide by)."""
    return {"mask2image": 0, "edge-text": 1}.get(kind)
SamplerName = Literal["ddim", "dpm++", "sde-dpm++", "ddpm"]
#: Samplers that keep a multistep history (no RePaint jumps: a jump back would reuse a stale history).
MULTISTEP_SAMPLERS = ("dpm++", "sde-dpm++")


class AugmentSettings(StrictModel):
    """Non-leaking augmentation of the generator's training data (Karras et al. 2022, EDM's ``augment_pipe``):
    each training sample is, with probability ``p``, flipped, rotated by a multiple of 90 degrees and/or zoomed
    in, its mask following, and the network is told which (see :mod:`lesionforge.generate.augment`). Sampling
    asks for "no augmentation", so rotated or zoomed content does not leak into the samples."""

    p: float = 0.5  # probability that a training sample is augmented at all
    flips: bool = True  # horizontal / vertical flips (besides the unconditioned ``flip`` of the config)
    rot90: bool = True  # rotations by 90, 180 or 270 degrees
    zoom: float = 0.25  # zoom in by a factor in [1, 1 + zoom] (random crop, resized back); 0: no zoom

    @model_validator(mode="after")
    def _check(self) -> AugmentSettings:
        if not 0.0 < self.p <= 1.0:
            raise ConfigError("augment.p must be in (0, 1]")
        if not 0.0 <= self.zoom <= 1.0:
            raise ConfigError("augment.zoom must be in [0, 1]")
        if not (self.flips or self.rot90 or self.zoom):
            raise ConfigError("augment: enable at least one of flips, rot90, zoom")
        return self


class GeneratorConfig(LaterFields, TrainedHere):
    """Everything needed to build, train and sample one generator."""

    #: options added after generators were cached: left out of the config's dump while unset, so the cache keys
    #: (a hash of the dump) and saved configs of every generator trained without them stay what they were
    _omitted_when_none: ClassVar[tuple[str, ...]] = ("min_snr_gamma", "augment", "pretrain_steps",
                                                     "max_train_seconds")

    kind: Kind
    dataset: str = "demo"  # names the prompt domain (see conditioning.prompts.domain_for_dataset)
    resolution: int = 64
    image_channels: int = 3
    space: Literal["pixel", "latent"] = "pixel"
    autoencoder: str | None = None  # LatentCodec folder, required for space=latent

    # denoiser (diffusers UNet)
    block_out_channels: list[int] = [32, 64, 128, 128]
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_levels: list[bool] | None = None  # per block; default: attention on the two coarsest levels
    attention_head_dim: int = 8
    cross_attention_dim: int = 128
    text: bool = False  # prompt by cross-attention (MiniLM states, 384-d)
    text_dim: int = 384
    classes: list[str] = []  # class-label embedding over these names (empty: none)
    pretrained: str | None = None  # local diffusers UNet2DConditionModel folder to start from
    controlnet: bool = False  # with ``pretrained``: freeze the base, train a ControlNet on the spatial conditions

    # diffusion
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"

    # training
    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_dropout: float = 0.1  # probability of replacing the prompt by "" and the class by the null class
    mixed_precision: bool = True  # fp16 autocast, used only on a GPU
    flip: bool = True  # random horizontal/vertical flips (conditions follow)
    inpaint_dilate: int = 2  # pixels the lesion mask is dilated by when it is re-generated (inpaint)
    self_supervised_fraction: float = 0.5  # inpaint: share of a batch drawn from unlabelled/normal images
    # inpaint: prompt each self-supervised fill as what it is: a lesion-free image with the domain's "normal"
    # prompt, an unlabelled one (which may hold a lesion) with the null prompt. False: every fill gets a lesion
    # prompt, which teaches "lesion prompt -> paint tissue" on half the batches (samples then often show no
    # lesion inside the mask; see docs/generators.md).
    prompt_fills_as_known: bool = True
    # inpaint: loss weight of the pixels outside the re-generated region. The sampler replaces them by the
    # background at every step, so their prediction is never used; with the full-image loss they are ~80 % of
    # the loss and the region itself stays under-trained (speckled samples). 0 = learn the region only.
    outside_loss_weight: float = 0.0
    # min-SNR-gamma loss weighting (Hang et al. 2023): each sample's loss is weighted by min(SNR, gamma) / SNR
    # (epsilon) or min(SNR, gamma) / (SNR + 1) (v_prediction), so the nearly clean timesteps no longer dominate
    # the gradient; reported ~3x faster convergence with gamma = 5. None: the plain MSE.
    min_snr_gamma: float | None = None
    augment: AugmentSettings | None = None  # non-leaking conditioned augmentation; None: off
    # steps of pretraining, before the ``steps`` on the labelled pairs, on every image that has no mask here (the
    # rest of ``train`` without its masks, the lesion-free frames); the base is cached and shared across N and
    # seeds (experiment.real_stages). None: no pretraining.
    pretrain_steps: int | None = None
    # a wall-time budget: training stops after the first step that ends past this many seconds (summed over
    # resumed sessions; a pretrained base gets its own budget), even short of ``steps``. The LR schedule still
    # follows ``steps``, so a stop ends it early; the saved model records the steps it reached. For a fixed
    # machine budget (e.g. one lent GPU call); None: train all ``steps``.
    max_train_seconds: float | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    seed: int = 0

    # sampling defaults
    sampler: SamplerName = "dpm++"
    sample_steps: int = 25
    guidance_scale: float = 1.0
    repaint_jumps: int = 0

    @model_validator(mode="after")
    def _check(self) -> GeneratorConfig:
        if self.space == "latent" and self.kind == "joint":
            raise ConfigError("kind 'joint' runs in pixel space only (a latent mask channel would blur the label)")
        if self.controlnet and (self.pretrained is None or self.kind not in ("edge-text", "inpaint")):
            raise ConfigError("controlnet: true needs 'pretrained' and kind edge-text or inpaint")
        if self.pretrained is not None and self.kind not in ("edge-text", "inpaint"):
            raise ConfigError("a pretrained base is supported for kinds edge-text and inpaint")
        if self.attention_levels is not None and len(self.attention_levels) != len(self.block_out_channels):
            raise ConfigError("attention_levels needs one entry per block_out_channels entry")
        if not 0.0 <= self.outside_loss_weight <= 1.0:
            raise ConfigError("outside_loss_weight must be in [0, 1]")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise ConfigError("min_snr_gamma must be > 0 (or null for no weighting)")
        if self.max_train_seconds is not None and self.max_train_seconds <= 0:
            raise ConfigError("max_train_seconds must be > 0 (or null for no time budget)")
        if self.pretrain_steps is not None and (self.pretrain_steps < 1 or self.pretrained is not None):
            raise ConfigError("pretrain_steps must be >= 1 and needs a generator trained from scratch")
        if self.augment is not None and self.pretrained is not None:
            raise ConfigError("augment needs a generator trained from scratch (it adds input channels)")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError("every block_out_channels entry must be divisible by norm_num_groups")
        return self

    @property
    def learns_unknown_mask(self) -> bool:
        """True when the generator learns "mask unknown" (a mask2image or edge-text generator pretrained on images
        without masks, ``trainbatch._unknown``), so guidance can weigh its mask against no mask
        (``SamplingConfig.mask_guidance``). A base pretrained on lesion-free images alone learns the empty mask,
        not "unknown"; the config cannot tell, so such a generator passes this check and its guidance is weak."""
        return mask_channel(self.kind) is not None and self.pretrain_steps is not None

    @property
    def uses_text(self) -> bool:
        return self.text or self.pretrained is not None

    def attention(self) -> list[bool]:
        """Which UNet levels carry (self- or cross-) attention."""
        if self.attention_levels is not None:
            return list(self.attention_levels)
        n = len(self.block_out_channels)
        return [i >= max(1, n - 2) for i in range(n)]


def load_generator_config(path: str | Path, overrides: dict | None = None) -> GeneratorConfig:
    """Read and validate a generator preset (YAML)."""
    return resolve_preset(path, overrides, GeneratorConfig)


class SamplingConfig(StrictModel):
    """How a batch is drawn (:class:`~lesionforge.generate.pipeline.LesionPipeline`). Each field left None takes
    the generator's own setting (its saved training config: ``sampler``, ``sample_steps``, ``guidance_scale``,
    ``repaint_jumps``; ``eta`` 0), see :meth:`resolved`; a value given here wins."""

    sampler: SamplerName | None = None
    steps: int | None = Field(None, ge=1)
    guidance_scale: float | None = None  # classifier-free guidance; 1: the conditional prediction alone
    repaint_jumps: int | None = Field(None, ge=0)  # RePaint resampling rounds per step (inpaint; ddim or ddpm)
    eta: float | None = Field(None, ge=0, le=1)  # DDIM only: 0 deterministic, 1 as stochastic as DDPM
    #: guidance also weighs the label mask against "mask unknown" (the unconditional twin has its mask channel set
    #: to 0, models.unknown_mask), pushing the image to fill its mask; only for a generator that learned "mask
    #: unknown" (mask2image / edge-text pretrained on images without masks, ``GeneratorConfig.learns_unknown_mask``)
    mask_guidance: bool | None = None
    #: guidance only within this many pixels of the label mask (a dilation; 0: the mask itself), the conditional
    #: prediction elsewhere, so what guidance changes outside the structure (e.g. a global brightness shift
    #: between the conditional and the unconditional twin) stays out of the image; None: guidance everywhere
    guidance_region: int | None = Field(None, ge=0)

    def resolved(self, cfg: GeneratorConfig) -> SamplingConfig:
        """Every field set: the given ones, else the generator's; a combination that cannot run is an error."""
        own = {"sampler": cfg.sampler, "steps": cfg.sample_steps, "guidance_scale": cfg.guidance_scale,
               "repaint_jumps": cfg.repaint_jumps, "eta": 0.0, "mask_guidance": False,
               "guidance_region": None}
        out = validate_config(SamplingConfig, {**own, **self.model_dump(exclude_none=True)}, "sampling")
        if out.repaint_jumps and out.sampler in MULTISTEP_SAMPLERS:
            raise ConfigError("sampling: repaint_jumps needs sampler 'ddim' or 'ddpm' (DPM-Solver++ keeps a "
                              "multistep history)")
        if out.eta and out.sampler != "ddim":
            raise ConfigError(f"sampling: eta is a DDIM setting; sampler {out.sampler!r} takes none")
        if out.mask_guidance and not cfg.learns_unknown_mask:
            raise ConfigError(f"sampling: mask_guidance needs a generator that learned 'mask unknown' (kind "
                              f"mask2image or edge-text with pretrain_steps); this one is kind {cfg.kind!r}"
                              f"{'' if cfg.pretrain_steps else ' without pretraining'}")
        if out.guidance_region is not None and cfg.kind == "joint":
            raise ConfigError("sampling: guidance_region is measured from the label mask; kind 'joint' draws its mask")
        return out
