"""Memorization audit: planted copies are flagged, fresh samples are not."""

from __future__ import annotations

import json

import numpy as np

from lesionforge.data.arrays import PairArrays
from lesionforge.data.demo import make_demo_arrays
from lesionforge.quality.features import pixel_extractor
from lesionforge.quality.memorization import memorization_audit, write_memorization_report


def _pairs(images: np.ndarray, prefix: str) -> PairArrays:
    n = len(images)
    return PairArrays(images, np.zeros(images.shape[:3], np.uint8), np.ones(n, bool),
                      [f"{prefix}{i}" for i in range(n)], [None] * n)


def test_audit_flags_planted_copies_and_not_fresh_samples(tmp_path):
    # 120 training images: with fewer, the 1st percentile is just the noisy minimum (see docs/quality.md)
    train = _pairs(make_demo_arrays(n=120, size=32, seed=0).images, "train")
    fresh = make_demo_arrays(n=20, size=32, seed=3).images
    exact = train.images[7]
    rng = np.random.default_rng(0)
    near = np.clip(train.images[50].astype(int) + rng.integers(-2, 3, exact.shape), 0, 255).astype(np.uint8)
    synthetic = _pairs(np.concatenate([fresh, exact[None], near[None]]), "syn")
    report = memorization_audit(train, synthetic, pixel_extractor(8))

    by_id = {m.id: m for m in report.matches}
    assert by_id["syn20"].pixel_distance == 0.0 and by_id["syn20"].pixel_nearest_id == "train7"
    assert by_id["syn21"].pixel_nearest_id == "train50" and by_id["syn21"].feature_nearest_id == "train50"
    assert all(by_id[s].flagged_pixel and by_id[s].flagged_feature for s in ("syn20", "syn21"))
    assert {m.id for m in report.flagged} == {"syn20", "syn21"}
    assert report.flagged_share == 2 / 22
    assert report.pixel.threshold < report.pixel.real_nn_median

    path = write_memorization_report(report, train, synthetic, tmp_path)
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert [m["pixel_nearest_id"] for m in saved["flagged"]] == ["train7", "train50"]
    assert saved["extractor"]["name"] == "pixels-8"
    assert (tmp_path / "memorization_flagged.png").stat().st_size > 1000
