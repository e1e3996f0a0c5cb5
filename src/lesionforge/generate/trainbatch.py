"""Training batches of every kind: sampling, flips, inpainting masks, prompts and condition dropout.

``inpaint`` mixes two tasks: re-generating the (slightly dilated) lesion of a labelled image, and,
self-supervised, filling a random size-controlled mask on an unlabelled or lesion-free image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lesionforge.data.arrays import PairArrays
from lesionforge.errors import ConfigError
from lesionforge.generate.augment import augment_pairs
from lesionforge.generate.batches import Codec, build_inputs, dilate_masks, flip_pairs, latent_mask
from lesionforge.generate.config import GeneratorConfig, mask_channel
from lesionforge.generate.models import Conditions, unknown_mask
from lesionforge.generate.sampler import InpaintGuide
from lesionforge.generate.textcond import TextConditioner

#: Prompt class of lesion-free fills; every built-in prompt library has a ``by_class`` entry for it.
NORMAL_CLASS = "normal"


@dataclass
class Preview:
    """Fixed conditions for sample grids: the real ``images`` uint8 (n, H, W, C) and ``masks`` (n, H, W)
    they come from, ``cond`` / ``uncond``, the inpainting guide, and the grid of ``x``."""

    images: np.ndarray
    masks: np.ndarray
    cond: Conditions
    uncond: Conditions
    guide: InpaintGuide | None
    grid: tuple[int, int]


@dataclass
class _Rows:
    """Rows of a batch held on a device: images uint8 (B, H, W, C), masks uint8 (B, H, W), their ids and classes."""

    images: torch.Tensor
    masks: torch.Tensor
    ids: list[str]
    classes: list[str | None]

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(torch.cat([p.images for p in parts]), torch.cat([p.masks for p in parts]),
                     [i for p in parts for i in p.ids], [c for p in parts for c in p.classes])


class BatchMaker:
    """Builds ``(x0, Conditions)`` training batches for ``cfg.kind`` from uint8 arrays.

    ``device``: hold the training images and masks there (a GPU) and index, flip, augment, dilate and build the
    inputs there: the same draws and, on the CPU, the same batches bit for bit as the host path (None), which
    copies each batch's arrays. Masks of self-supervised fills are drawn on the host and copied (masks only)."""

    def __init__(self, cfg: GeneratorConfig, train: PairArrays, unlabelled: PairArrays | None = None,
                 backgrounds: PairArrays | None = None, codec: Codec | None = None, text_encoder=None,
                 prompts=None, mask_source=None, device: torch.device | None = None):
        self.cfg, self.codec, self.device = cfg, codec, device
        self.text = TextConditioner(cfg, prompts, text_encoder)
        labelled = train.subset(np.flatnonzero(train.has_mask))
        lesion = labelled.masks.reshape(len(labelled), -1).any(1) if len(labelled) else np.zeros(0, bool)
        self.pool = labelled.subset(np.flatnonzero(lesion)) if cfg.kind == "inpaint" else labelled
        # (images, known to be lesion-free?): lesion-free fills are prompted "normal", the others get no prompt
        image_only = [(train.subset(np.flatnonzero(~train.has_mask)), False),
                      (labelled.subset(np.flatnonzero(~lesion)), True), (unlabelled, False), (backgrounds, True)]
        self.self_sup = self.fill_normal = self.unknown = None
        if cfg.kind != "inpaint" and len(self.pool) == 0:
            # pretraining on images without masks (``pretrain_steps``): a lesion-free image is a pair with an
            # empty mask; for the others the mask is unknown, and the network is told so (see ``_unknown``)
            parts = [(p, free) for p, free in image_only if p is not None and len(p)]
            self.pool = PairArrays.concat([PairArrays(p.images, np.zeros_like(p.masks), np.ones(len(p), bool),
                                                      p.ids, p.classes) for p, _ in parts])
            self.unknown = np.concatenate([np.zeros(0, bool)] + [np.full(len(p), not free) for p, free in parts])
        if cfg.kind == "inpaint":
            self.self_sup = PairArrays.concat([p for p, _ in image_only])
            self.fill_normal = np.concatenate([np.zeros(0, bool)] + [np.full(len(p), free) for p, free in image_only
                                                                     if p is not None])
        if len(self.pool) == 0 and (self.self_sup is None or len(self.self_sup) == 0):
            raise ConfigError(f"no usable training samples for kind {cfg.kind!r} (labelled pairs needed)")
        self.mask_source = mask_source
        if cfg.kind == "inpaint" and mask_source is None and self.self_sup is not None and len(self.self_sup):
            self.mask_source = make_mask_source("size", self.pool, cfg.resolution)
        self.held = {}  # on ``device``: name -> (images, masks) uint8 tensors, copied once
        if device is not None:
            for name, data in (("pool", self.pool), ("self_sup", self.self_sup)):
                if data is not None and len(data):
                    self.held[name] = tuple(torch.from_numpy(a).to(device) for a in (data.images, data.masks))

    def _take(self, name: str, idx: np.ndarray) -> PairArrays | _Rows:
        """Rows ``idx`` of the pool or the self-supervised set: a subset on the host, else gathered on the device."""
        data = getattr(self, name)
        if self.device is None:
            return data.subset(idx)
        images, masks = self.held[name]
        i = torch.as_tensor(idx).to(self.device)
        return _Rows(images[i], masks[i], [data.ids[k] for k in idx], [data.classes[k] for k in idx])

    def make(self, rng: np.random.Generator) -> tuple[torch.Tensor, Conditions]:
        """One batch of ``cfg.batch_size``: ``x0`` (B, x, h, w) and its conditions (dropout applied)."""
        b = self.cfg.batch_size
        n_self = 0
        if self.self_sup is not None and len(self.self_sup):
            n_self = b if len(self.pool) == 0 else int(rng.binomial(b, self.cfg.self_supervised_fraction))
        parts = []
        fill = np.zeros(b, np.int8)  # 0: a lesion re-generated, 1: fill of an unlabelled image, 2: lesion-free
        unknown = None
        if b - n_self:
            drawn = rng.integers(len(self.pool), size=b - n_self)
            parts.append(self._take("pool", drawn))
            unknown = None if self.unknown is None else self.unknown[drawn]
        if n_self:
            idx = rng.integers(len(self.self_sup), size=n_self)
            parts.append(self._random_masks(self._take("self_sup", idx), rng))
            fill[b - n_self:] = np.where(self.fill_normal[idx], 2, 1)
        data = PairArrays.concat(parts) if self.device is None else _Rows.concat(parts)
        images, masks = flip_pairs(data.images, data.masks, rng) if self.cfg.flip else (data.images, data.masks)
        aug = None
        if self.cfg.augment is not None:  # no draws when off: today's batches stay bit-identical
            images, masks, aug = augment_pairs(images, masks, rng, self.cfg.augment)
        drop = rng.random(b) < self.cfg.cond_dropout
        x0, cond = self._inputs(images, masks, data.ids, data.classes, rng, drop, fill, aug)
        return (x0, cond) if unknown is None else _unknown(self.cfg.kind, x0, cond, unknown)

    def _random_masks(self, data: PairArrays | _Rows, rng: np.random.Generator) -> PairArrays | _Rows:
        drawn = self.mask_source(rng, len(data.ids))
        masks = np.stack([m for m, _ in drawn]).astype(np.uint8)
        if isinstance(data, _Rows):
            return _Rows(data.images, torch.from_numpy(masks).to(data.images.device), data.ids, [None] * len(data.ids))
        return PairArrays(data.images, masks, np.ones(len(data), bool), data.ids, [None] * len(data))

    def _inputs(self, images: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, ids: list[str],
                classes: list[str | None],
                rng: np.random.Generator, drop: np.ndarray, fill: np.ndarray | None = None,
                aug: np.ndarray | None = None) -> tuple[torch.Tensor, Conditions]:
        if fill is not None and self.cfg.prompt_fills_as_known:
            # lesion-free fills are prompted as the "normal" class; unlabelled ones get the null prompt
            # (their content is unknown), the same condition as a dropped one
            prompt_classes = [NORMAL_CLASS if f == 2 else c for c, f in zip(classes, fill, strict=True)]
            prompts = self.text.prompts(ids, prompt_classes, masks, rng)
            drop = drop | (fill == 1)
        else:
            prompts = self.text.prompts(ids, classes, masks, rng)
        region = dilate_masks(masks, self.cfg.inpaint_dilate) if self.cfg.kind == "inpaint" else masks
        with torch.no_grad():  # the codec and edge extractor are fixed: no gradients through them
            x0, spatial = build_inputs(self.cfg.kind, images, region, self.codec)
        text, text_mask, labels = self.text.encode(prompts, classes, drop)
        return x0, Conditions(spatial, text, text_mask, labels, None if aug is None else torch.from_numpy(aug))

    def preview(self, n: int = 4) -> Preview:
        """The first ``n`` labelled samples (no flips, no dropout) as fixed sampling conditions."""
        data = self.pool if len(self.pool) else self._random_masks(self.self_sup, np.random.default_rng(0))
        data = data.subset(np.arange(min(n, len(data))))
        rng = np.random.default_rng(0)
        x0, cond = self._inputs(data.images, data.masks, data.ids, data.classes, rng, np.zeros(len(data), bool))
        null_text, null_mask, null_class = self.text.null()
        guide = None
        if self.cfg.kind == "inpaint":
            region = torch.from_numpy(dilate_masks(data.masks, self.cfg.inpaint_dilate)).float()[:, None]
            factor = 1 if self.codec is None else self.codec.downsample_factor
            guide = InpaintGuide(known=x0, region=latent_mask(region, factor))
        return Preview(data.images, data.masks, cond, cond.nulled(null_text, null_mask, null_class), guide,
                       tuple(x0.shape[-2:]))


def _unknown(kind: str, x0: torch.Tensor, cond: Conditions, unknown: np.ndarray) -> tuple[torch.Tensor, Conditions]:
    """Rows whose mask is unknown (an image without its mask): the mask condition is set to 0, a value no real
    mask (-1 or +1) takes, so the network learns it as "mask unknown"; for ``joint``, whose mask is generated,
    the mask channel is set to 0 and weighs nothing in the loss (``Conditions.x_weight``)."""
    rows = torch.from_numpy(unknown).to(x0.device)
    if kind == "joint":
        x0 = x0.clone()
        x0[rows, -1] = 0.0
        weight = torch.ones(len(x0), x0.shape[1], 1, 1, device=x0.device)
        weight[rows, -1] = 0.0
        return x0, replace(cond, x_weight=weight)
    return x0, replace(cond, spatial=unknown_mask(cond.spatial, mask_channel(kind), rows))


def make_mask_source(name: str, real: PairArrays | None, size: int, even: bool = False,
                     ends_weight: int | None = None, small_boost: float | None = None, **jitter: Any):
    """A mask source by name (``jitter`` or ``size``) from the lesion masks of ``real`` (may be None):
    :func:`lesionforge.conditioning.masks.build_mask_source` on a :class:`PairArrays`; ``jitter``: options of
    :func:`~lesionforge.conditioning.masks.jitter_mask`, ``even`` and ``ends_weight`` (source ``jitter`` only);
    ``small_boost`` (source ``size`` only; None: 1)."""
    from lesionforge.conditioning.masks import build_mask_source

    boost = 1.0 if small_boost is None else small_boost
    if real is None:
        return build_mask_source(name, np.zeros((0, size, size), np.uint8), [], size=size, jitter=jitter, even=even,
                                 ends_weight=ends_weight, small_boost=boost)
    ids = [i for i, h in zip(real.ids, real.has_mask, strict=True) if h]
    return build_mask_source(name, real.masks[real.has_mask], ids, size=size, jitter=jitter, even=even,
                             ends_weight=ends_weight, small_boost=boost)

