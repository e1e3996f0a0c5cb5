"""Prompt and class-label conditions of a generator: which prompt each sample gets, its MiniLM encoding,
its class index, condition dropout (training) and the null conditions (classifier-free guidance)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from lesionforge.generate.config import GeneratorConfig

#: ``(sample_id, label_class, lesion_area_frac, rng) -> prompt``
PromptFn = Callable[[str, str | None, float, np.random.Generator], str]


def prompt_function(cfg: GeneratorConfig, prompts=None) -> PromptFn:
    """Normalise ``prompts``: None (the built-in library of the config's dataset domain), a user prompt
    file path (YAML/CSV, built-in library as fallback), a mapping ``sample id -> prompt`` (library for
    other ids), an object with ``prompt_for`` (a ``PromptLibrary``) or a :data:`PromptFn` callable."""
    if callable(prompts):
        return prompts
    if prompts is not None and hasattr(prompts, "prompt_for"):
        return prompts.prompt_for
    from lesionforge.conditioning.prompts import PromptLibrary, domain_for_dataset

    library = PromptLibrary.load(domain_for_dataset(cfg.dataset))
    if prompts is None:
        return library.prompt_for
    if isinstance(prompts, str | Path):
        return PromptLibrary.from_file(prompts, fallback=library).prompt_for
    table: Mapping[str, str] = prompts

    def by_id(sample_id: str, label_class: str | None, area: float, rng: np.random.Generator) -> str:
        return table[sample_id] if sample_id in table else library.prompt_for(sample_id, label_class, area, rng)

    return by_id


class TextConditioner:
    """Text and class conditions for batches of samples (no-op parts when the generator has neither)."""

    def __init__(self, cfg: GeneratorConfig, prompts=None, text_encoder=None):
        self.cfg = cfg
        self.classes = list(cfg.classes)
        self.encoder = None
        self.prompt_fn: PromptFn | None = None
        if cfg.uses_text:
            from lesionforge.conditioning.text import default_text_encoder

            self.encoder = text_encoder or default_text_encoder()
            self.prompt_fn = prompt_function(cfg, prompts)

    def prompts(self, ids: list[str], classes: list[str | None], masks: np.ndarray,
                rng: np.random.Generator) -> list[str | None]:
        """One prompt per sample (None when the generator takes no text); ``masks`` (B, H, W), numpy or a tensor."""
        if self.prompt_fn is None:
            return [None] * len(ids)
        if isinstance(masks, np.ndarray):
            areas = masks.reshape(len(masks), -1).mean(1)
        else:  # held on a GPU: the same float64 means (integer sums are exact)
            areas = masks.reshape(len(masks), -1).double().mean(1).cpu().numpy()
        return [self.prompt_fn(i, c, float(a), rng) for i, c, a in zip(ids, classes, areas, strict=True)]

    def encode(self, prompts: list[str | None], classes: list[str | None],
               drop: np.ndarray | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """-> ``(text (B, L, 384), text_mask (B, L), class_labels (B,))``, parts None when unused.
        ``drop`` bool (B,): these samples get the null prompt "" and the null class."""
        drop = np.zeros(len(prompts), bool) if drop is None else drop
        text = mask = labels = None
        if self.encoder is not None:
            text, mask = self.encoder.encode(["" if d else p for p, d in zip(prompts, drop, strict=True)])
        if self.classes:
            null = len(self.classes)
            idx = [null if d or c not in self.classes else self.classes.index(c) for c, d in zip(classes, drop,
                                                                                                 strict=True)]
            labels = torch.tensor(idx, dtype=torch.long)
        return text, mask, labels

    def null(self) -> tuple[torch.Tensor | None, torch.Tensor | None, int]:
        """Null text states (1, L, 384) and mask (1, L) (None without text) and the null class index."""
        if self.encoder is None:
            return None, None, len(self.classes)
        text, mask = self.encoder.encode([""])
        return text, mask, len(self.classes)
