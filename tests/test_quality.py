"""FID, KID, MS-SSIM and the quality report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lesionforge.data.arrays import PairArrays
from lesionforge.data.manifest import Provenance, Sample
from lesionforge.quality.features import pixel_extractor
from lesionforge.quality.metrics import (
    fid,
    frechet_distance,
    kid,
    mask_fidelity,
    ms_ssim_diversity,
    ms_ssim_settings,
    paired_ms_ssim,
    quality_report,
    write_quality_report,
)


def _pairs(demo) -> PairArrays:
    n = len(demo.ids)
    return PairArrays(demo.images, demo.masks, np.ones(n, bool), list(demo.ids), [None] * n)


def test_frechet_distance_matches_closed_form_for_diagonal_gaussians():
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    expected = 1.0 + 4.0 + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-9)


def test_fid_is_zero_against_itself_and_grows_with_a_shift(demo_arrays):
    feats = pixel_extractor(8).features(demo_arrays.images)
    brighter = np.clip(demo_arrays.images.astype(int) + 40, 0, 255).astype(np.uint8)
    shifted = pixel_extractor(8).features(brighter)
    assert fid(feats, feats) == pytest.approx(0.0, abs=1e-6)  # 192 dims from 40 images: singular covariances
    assert fid(feats, shifted) > 10.0


def test_kid_is_unbiased_for_two_draws_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16))
    same = kid(a, b, subsets=10, subset_size=200)
    shifted = kid(a, b + 0.5, subsets=10, subset_size=200)
    assert abs(same["mean"]) < 3 * same["std"] + 1e-3
    assert shifted["mean"] > 0.1 > 10 * abs(same["mean"])
    assert same["subset_size"] == 200 and shifted["std"] > 0


def test_ms_ssim_settings_fit_pytorch_msssim_limits():
    assert ms_ssim_settings(64)["win_size"] == 3 and ms_ssim_settings(64)["upsampled_from"] is None
    assert ms_ssim_settings(128)["win_size"] == 7
    assert ms_ssim_settings(256)["win_size"] == 11
    assert ms_ssim_settings(32)["side"] == 64 and ms_ssim_settings(32)["upsampled_from"] == 32


def test_ms_ssim_is_one_for_identical_and_lower_for_diverse_images(demo_arrays):
    imgs = demo_arrays.images[:6]
    assert paired_ms_ssim(imgs, imgs) == pytest.approx(np.ones(6), abs=1e-5)
    diverse = ms_ssim_diversity(demo_arrays.images, pairs=20)["mean"]
    clones = ms_ssim_diversity(np.repeat(imgs[:1], 6, axis=0), pairs=20)["mean"]
    assert clones == pytest.approx(1.0, abs=1e-5)
    assert diverse < 0.8


def test_mask_fidelity_summarises_filter_scores():
    def row(i: int, dice: float, kept: bool) -> Sample:
        prov = Provenance(validation={"dice": dice, "kept": kept, "threshold": 0.5})
        return Sample(id=f"s{i}", image=f"s{i}.png", origin="synthetic", provenance=prov)

    rows = [row(0, 0.9, True), row(1, 0.7, True), row(2, 0.2, False), Sample(id="x", image="x.png")]
    mf = mask_fidelity(rows)
    assert mf["n_samples"] == 4 and mf["n_scored"] == 3
    assert mf["acceptance_rate"] == pytest.approx(2 / 3)
    assert mf["dice_kept"]["mean"] == pytest.approx(0.8) and mf["dice_rejected"]["max"] == pytest.approx(0.2)
    assert mf["thresholds"] == [0.5]


def test_quality_report_names_its_extractor_and_is_written(demo_arrays, tmp_path):
    real = _pairs(demo_arrays)
    synthetic = real.subset(np.arange(20))
    report = quality_report(real, synthetic, pixel_extractor(4), samples=[], kid_subsets=5, msssim_pairs=10)
    assert report["extractor"] == {"name": "pixels-4", "checkpoint_hash": None}
    assert report["feature_dim"] == 48 and report["n_real"] == 40 and report["n_synthetic"] == 20
    assert report["fid"] >= 0 and report["kid"]["subset_size"] == 20
    assert 0 < report["ms_ssim"]["synthetic"]["mean"] < 1
    path = write_quality_report(report, tmp_path)
    assert json.loads(path.read_text(encoding="utf-8"))["fid"] == pytest.approx(report["fid"])
    assert "pixels-4" in (tmp_path / "quality.md").read_text(encoding="utf-8")
