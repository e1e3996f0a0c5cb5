"""Settings of segmentation training: network, budget, augmentation, real+synthetic mixing."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lesionforge.config import LaterFields, StrictModel
from lesionforge.devices import DeviceName

NetworkName = Literal["BasicUNet", "UNet", "AttentionUnet", "SegResNet", "UNETR", "SwinUNETR"]
MixMode = Literal["none", "ratio", "alpha", "patch-merge", "synthetic-only"]
PixelClass = Literal["background", "lesion"]  # one label's pixels (mixing.synthetic_pixel_filter_class)


class AugmentConfig(StrictModel):
    """Standard augmentation (MONAI dictionary transforms, see :mod:`lesionforge.segment.augment`)."""

    enabled: bool = True
    flip_prob: float = Field(0.5, ge=0, le=1)  # per axis
    rotate90_prob: float = Field(0.5, ge=0, le=1)
    affine_prob: float = Field(0.5, ge=0, le=1)
    scale_range: float = Field(0.2, ge=0, lt=1)  # zoom factor in [1 - s, 1 + s]
    translate_fraction: float = Field(0.1, ge=0, lt=1)  # shift up to this fraction of the side
    intensity_prob: float = Field(0.5, ge=0, le=1)  # each of brightness / contrast / colour / gamma
    brightness: float = Field(0.1, ge=0)  # additive shift on [-1, 1] images
    contrast: float = Field(0.2, ge=0)  # multiplicative factor in [1 - c, 1 + c]
    colour: float = Field(0.05, ge=0)  # per-channel multiplicative factor in [1 - c, 1 + c]
    gamma: tuple[float, float] = (0.7, 1.5)
    noise_prob: float = Field(0.2, ge=0, le=1)
    noise_std: float = Field(0.05, ge=0)


class CopyPasteConfig(LaterFields):
    """Classical lesion copy-paste (:mod:`lesionforge.segment.copypaste`), applied per sample with ``prob``.

    ``synthetic_donors`` (added in session 36, so left out of dumps while None and older keys stay as they were):
    the share of the pastes whose lesion comes from a synthetic pair (a generated lesion on a real image) instead
    of another real pair; needs a synthetic set, whose drawn pairs are the donors (real lesions pasted onto
    backgrounds are not: they are the real donors again). None: real donors only, the classical recipe."""

    _omitted_when_none = ("synthetic_donors",)

    enabled: bool = False
    prob: float = Field(0.5, ge=0, le=1)
    scale: tuple[float, float] = (0.75, 1.25)
    feather_sigma: float = Field(1.0, ge=0)  # Gaussian sigma (pixels) of the soft edge
    fov_threshold: int = Field(12, ge=0, le=255)  # pixels darker than this (max channel) are outside the view
    synthetic_donors: float | None = Field(None, ge=0, le=1)


class MixConfig(LaterFields):
    """How synthetic pairs join real ones in each batch.

    ``none``: real only. ``ratio``: ``ratio`` synthetic per real sample in each batch on average.
    ``alpha``: each synthetic sample enters the training pool with probability ``alpha`` (drawn once per seed),
    batches are drawn uniformly from real + admitted synthetic. ``patch-merge``: EMIT-style merging, per
    ``patch_size`` patch the real pair with probability ``alpha``, else its synthetic twin.
    ``synthetic-only``: synthetic pairs only.
    ``synthetic_until`` (ratio and alpha): synthetic pairs join the batches only for that fraction of the steps,
    the rest trains on the real pairs alone: learn from both, then fine-tune on real (None: every step).
    ``synthetic_border_ignore`` (ratio, alpha, synthetic-only): the loss leaves out the synthetic samples' pixels
    within this many pixels of their label's border, where a generated lesion and the mask it was asked to fill
    disagree (:mod:`lesionforge.segment.losses`; None: every pixel counts).
    ``synthetic_pixel_filter`` (ratio, alpha, synthetic-only): FreeMask's noisy-region filter, this value its
    tolerance margin (FreeMask: 1.25): the loss leaves out the synthetic samples' pixels whose loss under the
    set's validator is above the margin times that validator's mean loss on real ``val`` pixels of the same
    class (:mod:`lesionforge.validate.pixel_trust`; needs a set scored by a filter; None: every pixel counts).
    ``synthetic_pixel_filter_class`` (``background`` or ``lesion``): the filter leaves out pixels of that label
    only, e.g. ``background``: only tissue the validator sees as lesion outside the mask (None: both).
    """

    _omitted_when_none = ("synthetic_until", "synthetic_border_ignore", "synthetic_pixel_filter",
                          "synthetic_pixel_filter_class")

    mode: MixMode = "none"
    ratio: float = Field(1.0, ge=0)
    alpha: float = Field(0.6, ge=0, le=1)
    patch_size: int = Field(16, ge=1)
    synthetic_until: float | None = Field(None, gt=0, le=1)
    synthetic_border_ignore: int | None = Field(None, ge=1)
    synthetic_pixel_filter: float | None = Field(None, gt=0)
    synthetic_pixel_filter_class: PixelClass | None = None

    @model_validator(mode="after")
    def _until_needs_a_mixed_mode(self) -> MixConfig:
        if self.synthetic_until is not None and self.mode not in ("ratio", "alpha"):
            raise ValueError(f"synthetic_until applies to modes ratio and alpha, not {self.mode!r}")
        for name in ("synthetic_border_ignore", "synthetic_pixel_filter"):
            if getattr(self, name) is not None and self.mode not in ("ratio", "alpha", "synthetic-only"):
                raise ValueError(f"{name} applies to modes ratio, alpha and synthetic-only (batches that hold "
                                 f"synthetic samples as they are), not {self.mode!r}")
        if self.synthetic_pixel_filter_class is not None and self.synthetic_pixel_filter is None:
            raise ValueError("synthetic_pixel_filter_class narrows synthetic_pixel_filter; give that margin too")
        return self


class SegmentConfig(StrictModel):
    """Everything that defines one segmentation training run."""

    network: NetworkName = "BasicUNet"
    features: tuple[int, ...] = (16, 32, 64, 128, 256, 16)
    network_kwargs: dict[str, Any] = Field(default_factory=dict)  # extra constructor arguments, passed as is
    resolution: int = Field(64, ge=16)
    steps: int = Field(2000, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_steps: int = Field(50, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    copy_paste: CopyPasteConfig = Field(default_factory=CopyPasteConfig)
    mixing: MixConfig = Field(default_factory=MixConfig)
    val_interval: int = Field(100, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    seed: int = 0
    # lesionforge.devices.resolve_device ("auto": CUDA if visible, else CPU). The default stays "cpu": every run
    # record stores this dict and a resumed sweep or a rebuilt result compares it, so a new default would orphan them
    device: DeviceName = "cpu"

    @model_validator(mode="after")
    def _check(self) -> SegmentConfig:
        if self.warmup_steps >= self.steps:
            self.warmup_steps = 0  # a budget shorter than the warm-up trains without one
        return self
