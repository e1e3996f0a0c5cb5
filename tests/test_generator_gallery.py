"""The generator gallery script end to end on Kvasir-SEG with a 2-step model (skips without the data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_benchmark, need_dataset

from lesionforge.data.io import read_image


def test_grid_image_layout():
    g = load_benchmark("generator_gallery")
    tiles = [np.zeros((4, 4, 3), np.uint8)] * 3
    out = g.grid_image(tiles, tiles, scale=2, gap=1)
    assert out.shape == (2 * 8 + 3, 3 * 9 + 1, 3)
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = 1
    drawn = g.outline(np.zeros((6, 6, 1), np.uint8), mask)
    assert drawn.shape == (6, 6, 3) and (drawn[..., 1] == 255).sum() == 4  # a 2x2 blob is all boundary


@pytest.mark.slow
def test_inpaint_gallery_on_kvasir(tmp_path):
    need_dataset("kvasir-seg")
    need_dataset("colon-normal")
    g = load_benchmark("generator_gallery")
    docs, results = tmp_path / "docs", tmp_path / "results"
    r = g.run("kvasir-seg", "inpaint", n=16, steps=2, batch_size=2, work=tmp_path / "work", docs=docs,
              results=results, command="test", sample_steps=2, compare=[("ddim", 2, 1.0), ("ddpm", 3, 1.0)])
    assert (r["steps"], r["batch_size"], r["n_labelled"], r["n_backgrounds"]) == (2, 2, 16, 125)
    assert r["unlabelled_used"] and r["n_unlabelled"] == 700 - 16 and r["train_seconds"] > 0
    grid = read_image(docs / r["grid"], channels=3)
    assert grid.shape == (2 * 128 + 6, 8 * 130 + 2, 3)  # 2 rows x 8 samples of 64 px upscaled 2x
    saved = json.loads((results / "generator-kvasir-seg-inpaint-n16-cpu.json").read_text(encoding="utf-8"))
    assert saved["kind"] == "inpaint" and len(saved["prompts"]) == 8
    page = (docs / "generator-gallery.md").read_text(encoding="utf-8")
    assert "kvasir-seg / inpaint" in page and "generators/kvasir-seg-inpaint-n16.png" in page
    comp = saved["sampler_comparison"]
    assert [(c["sampler"], c["steps"]) for c in comp["settings"]] == [("ddim", 2), ("ddpm", 3)]
    assert comp["real_speckle"] > 0 and all(c["speckle"] > 0 for c in comp["settings"])
    assert read_image(docs / comp["grid"], channels=3).shape == (3 * 128 + 8, 8 * 130 + 2, 3)
    assert "| ddpm | 3 | 1 |" in page


def test_speckle_rises_with_pixel_noise():
    g = load_benchmark("generator_gallery")
    rng = np.random.default_rng(0)
    smooth = np.full((2, 16, 16, 3), 120, np.uint8)
    noisy = np.clip(smooth + rng.normal(0, 30, smooth.shape), 0, 255).astype(np.uint8)
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[:, 4:12, 4:12] = 1
    assert g.speckle(smooth, masks) == 0.0 and g.speckle(noisy, masks) > 20
    assert g.parse_setting("ddpm:100:1") == ("ddpm", 100, 1.0)


def test_mask_stats_counts_empty_masks_area_and_components():
    g = load_benchmark("generator_gallery")
    m = np.zeros((3, 8, 8), np.uint8)
    m[0, 1:3, 1:3] = m[0, 5:7, 5:7] = 1  # two components, 8 of 64 pixels
    m[1, :4] = 1  # one component, half the image
    s = g.mask_stats(m)
    assert (s["n"], s["empty"], s["components_mean"]) == (3, 1, 1.5)
    assert abs(s["area_frac_mean"] - (8 / 64 + 0.5) / 3) < 1e-12


@pytest.mark.slow
def test_joint_gallery_reports_its_generated_masks(tmp_path):
    need_dataset("kvasir-seg")
    g = load_benchmark("generator_gallery")
    docs, results = tmp_path / "docs", tmp_path / "results"
    r = g.run("kvasir-seg", "joint", n=16, steps=2, batch_size=2, work=tmp_path / "work", docs=docs,
              results=results, command="test", sample_steps=2, compare=[("ddim", 2, 1.0)])
    gm = r["generated_masks"]
    assert gm["samples"]["n"] == 8 and gm["real_labelled"]["n"] == 16 and gm["real_labelled"]["empty"] == 0
    assert 0 < gm["real_labelled"]["area_frac_mean"] < 1 and r["sampler_comparison"]["settings"][0]["masks"]["n"] == 8
    page = (docs / "generator-gallery.md").read_text(encoding="utf-8")
    assert "generated masks (after cleaning)" in page and "| empty masks | mean area |" in page
