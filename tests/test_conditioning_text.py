"""The offline MiniLM text encoder (loaded once per module: a few seconds)."""

from __future__ import annotations

import pytest
import torch

from lesionforge.conditioning.prompts import PromptLibrary, available_domains
from lesionforge.conditioning.text import NULL_PROMPT, TextEncoder
from lesionforge.errors import CheckpointError


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def test_encode_shapes_and_padding(encoder):
    states, attn = encoder.encode(["a sessile colon polyp", NULL_PROMPT])
    assert encoder.dim == 384
    assert states.shape == (2, 32, 384) and attn.shape == (2, 32)
    assert states.dtype == torch.float32 and not states.requires_grad
    # the null prompt is just [CLS] [SEP]; the rest is padding
    assert attn[1].sum() == 2 and attn[0].sum() > 2


def test_similar_prompts_are_closer(encoder):
    a, b, c = encoder.pooled(["a small flat polyp in the colon", "a diminutive sessile colon polyp",
                              "a spreadsheet of quarterly sales figures"])
    assert torch.allclose(a.norm(), torch.tensor(1.0), atol=1e-5)
    assert a @ b > a @ c + 0.3


def test_deterministic_and_cached(encoder):
    prompts = ["breast ultrasound, oval hypoechoic mass", "breast ultrasound, irregular spiculated mass"]
    first = encoder.pooled(prompts)
    size = encoder.cache_size()
    again = encoder.pooled(prompts[::-1])
    assert encoder.cache_size() == size
    assert torch.equal(first, again.flip(0))
    fresh = TextEncoder(encoder.model_dir)  # a second encoder from the same folder: same numbers
    assert torch.allclose(fresh.pooled(prompts), first, atol=1e-6)
    with pytest.raises(TypeError):
        encoder.encode("not a list")


def test_cache_is_bounded(encoder):
    encoder.max_cache = 3
    try:
        prompts = [f"polyp number {i}" for i in range(5)]
        states, _ = encoder.encode(prompts)  # a request larger than the cache still answers in full
        assert states.shape == (5, 32, 384)
        encoder.encode(["a flat polyp"])
        assert encoder.cache_size() == 3
        assert torch.allclose(encoder.encode(["polyp number 4"])[0][0], states[4], atol=1e-5)
    finally:
        encoder.max_cache = 1024


def test_builtin_prompts_fit_in_max_length(encoder):
    for domain in available_domains():
        lib = PromptLibrary.load(domain)
        prompts = {p for band in lib.band_names for c in [None, *lib.classes] for p in lib.prompts(c, band)}
        longest = max(len(encoder.tokenizer(p)["input_ids"]) for p in prompts)
        assert longest <= encoder.max_length, domain


def test_bad_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        TextEncoder(tmp_path)
