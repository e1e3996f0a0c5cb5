"""The label-fidelity benchmark: exact own/shuffled scoring, and end to end on BUSI with 2-step models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import load_benchmark, need_dataset

from lesionforge.data.arrays import PairArrays


def test_own_mask_scores_above_a_shuffled_mask(monkeypatch):
    f = load_benchmark("label_fidelity")
    masks = np.zeros((4, 16, 16), np.uint8)
    for k in range(4):  # four disjoint squares
        masks[k, 4 * k:4 * k + 4, 4 * k:4 * k + 4] = 1
    arrays = PairArrays(np.zeros((4, 16, 16, 1), np.uint8), masks, np.ones(4, bool), list("abcd"), [None] * 4)
    # an oracle segmenter that predicts each image's own mask: Dice 1 against it, 0 against its neighbour's
    monkeypatch.setattr(f, "predict", lambda model, images: torch.from_numpy(masks[:, None].astype(np.float32)))
    r = f.own_vs_shuffled(None, arrays)
    assert r["mdice_own_mask"] == 1.0 and r["mdice_shuffled_mask"] == 0.0 and r["n_samples"] == 4
    assert r["own_minus_shuffled"]["mean"] == 1.0 and r["miss_rate"] == 0.0
    assert r["by_band"] == {"large": {"n_samples": 4, "mdice_own_mask": 1.0, "mdice_shuffled_mask": 0.0,
                                      "miss_rate": 0.0}}  # 16 of 256 pixels (0.0625): a large share


def test_label_fidelity_by_band_shows_a_generator_that_ignores_small_masks(monkeypatch):
    """Pairs whose drawn image fills a large blob whatever the mask: the large masks are followed, the small ones
    are not (the segmenter finds the blob, which the small mask does not mark)."""
    f = load_benchmark("label_fidelity")
    masks = np.zeros((4, 32, 32), np.uint8)
    blob = np.zeros((32, 32), np.uint8)
    blob[4:20, 4:20] = 1  # 256 of 1024 pixels: large
    masks[0], masks[1] = blob, blob
    masks[2, 28:31, 28:31] = 1  # 9 pixels, far from the blob: small
    masks[3, 28:30, 1:4] = 1  # 6 pixels: small
    # a fifth pair with an empty mask (a negative): its own group, not a small lesion
    masks = np.concatenate([masks, np.zeros((1, 32, 32), np.uint8)])
    arrays = PairArrays(np.zeros((5, 32, 32, 1), np.uint8), masks, np.ones(5, bool), list("abcde"), [None] * 5)
    monkeypatch.setattr(f, "predict", lambda model, images: torch.from_numpy(
        np.repeat(blob[None, None].astype(np.float32), 5, axis=0)))
    r = f.own_vs_shuffled(None, arrays)["by_band"]
    assert set(r) == {"small", "large", "empty"} and r["empty"]["n_samples"] == 1
    assert r["large"]["n_samples"] == 2 and r["large"]["mdice_own_mask"] == 1.0 and r["large"]["miss_rate"] == 0.0
    assert r["small"]["n_samples"] == 2 and r["small"]["mdice_own_mask"] == 0.0 and r["small"]["miss_rate"] == 1.0


@pytest.mark.slow
def test_label_fidelity_on_busi(tmp_path):
    need_dataset("busi")
    g, f = load_benchmark("generator_gallery"), load_benchmark("label_fidelity")
    work, results = tmp_path / "work", tmp_path / "results"
    g.run("busi", "mask2image", n=16, steps=2, batch_size=2, work=work, docs=tmp_path / "docs",
          results=tmp_path / "gallery", command="test", sample_steps=2)
    r = f.run("busi", n=16, n_samples=4, work=work, results=results, segment_steps=2, sample_steps=3,
              command="test")
    assert r["skipped"] == ["joint", "edge-text", "inpaint"] and set(r["generators"]) == {"mask2image"}
    m = r["generators"]["mask2image"]
    assert m["n_samples"] == 4 and 0 <= m["mdice_own_mask"] <= 1 and r["real_labelled"]["n_samples"] == 16
    assert 0 <= r["segmenter"]["test_mdice"] <= 1
    saved = json.loads((results / "label-fidelity-busi-cpu.json").read_text(encoding="utf-8"))
    assert saved["generators"]["mask2image"]["steps"] == 3
    page = (results / "label-fidelity-cpu.md").read_text(encoding="utf-8")
    assert "| mask2image | 4 | 3 |" in page and "skipped: joint, edge-text, inpaint" in page
