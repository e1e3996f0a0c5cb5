"""Quality and memorization of the synthetic set behind each benchmark arm (experiment/set_quality.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, write_manifest
from lesionforge.data.splits import BenchmarkSplit
from lesionforge.experiment import set_quality as sq
from lesionforge.experiment.report import quality_table
from lesionforge.experiment.stages import ExperimentData, SyntheticSet
from lesionforge.quality.metrics import mask_stats


def _pairs(seed: int, n: int, prefix: str, side: int = 16) -> PairArrays:
    rng = np.random.default_rng(seed)
    # coarse random blocks: images far apart in pixel and in pixels-8 feature space, unlike fine noise
    coarse = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    images = np.kron(coarse, np.ones((1, side // 4, side // 4, 1), np.uint8))
    masks = np.zeros((n, side, side), np.uint8)
    masks[:, 4:8, 4:8] = 1
    return PairArrays(images, masks, np.ones(n, bool), [f"{prefix}{i}" for i in range(n)], [None] * n)


def test_planted_copy_of_a_training_image_raises_the_flagged_share():
    train, test, syn = _pairs(0, 12, "t"), _pairs(1, 8, "r"), _pairs(2, 8, "s")
    train.images[:] = train.images // 2 + 128  # bright training images, dark synthetic ones: none is near
    syn.images[:] //= 2
    clean = sq.quality_of(syn, test, train)["memorization"]["flagged_share"]
    syn.images[3] = train.images[5]  # a synthetic image equal to a training image
    planted = sq.quality_of(syn, test, train)
    assert clean == 0.0 and planted["memorization"]["flagged_share"] == pytest.approx(1 / 8)
    assert planted["extractor"] == planted["memorization"]["extractor"] == "pixels-8"
    assert planted == sq.quality_of(syn, test, train)  # deterministic


def test_mask_stats_counts_area_components_and_empty_masks():
    masks = np.zeros((3, 10, 10), np.uint8)
    masks[0, 0:2, 0:5] = 1  # one lesion, 10 % of the image
    masks[1, 0:1, 0:1] = masks[1, 5:6, 5:6] = 1  # two single-pixel lesions, 2 %
    s = mask_stats(masks)
    # both means over the non-empty masks: an empty one (a negative slice) is counted, not averaged in
    assert s == {"n": 3, "area_share_mean": pytest.approx(0.06), "components_mean": 1.5, "n_empty": 1}
    assert mask_stats(np.zeros((0, 4, 4), np.uint8))["area_share_mean"] is None
    assert mask_stats(np.zeros((2, 4, 4), np.uint8)) == {"n": 2, "area_share_mean": None, "components_mean": None,
                                                         "n_empty": 2}


def test_set_quality_is_cached_in_the_work_folder_and_reported_on_kept_samples(tmp_path, monkeypatch):
    train, test = _pairs(0, 6, "t"), _pairs(1, 6, "r")
    rows = []
    for i in range(4):
        img, msk = tmp_path / f"s{i}.png", tmp_path / f"s{i}_mask.png"
        write_image(img, train.images[i])
        write_mask(msk, train.masks[i])
        rows.append(Sample(id=f"syn{i}", image=str(img), masks=[str(msk)], origin="synthetic",
                           provenance=Provenance(source_id=f"t{i}", validation={"kept": i < 3, "dice": 0.9})))
    write_manifest(tmp_path / "manifest.jsonl", rows)
    s = SyntheticSet(tmp_path / "manifest.jsonl", None, {"filter_key": "abc"})
    data = ExperimentData(BenchmarkSplit(train=list(train.ids), val=[], test=list(test.ids)), train, test, test)
    kept = sq.set_quality(s, tmp_path, data, train, 16, kept_only=True)
    assert kept["n_synthetic"] == 3 and kept["memorization"]["flagged_share"] == 1.0  # all are copies
    assert json.loads((tmp_path / "quality-kept-abc.json").read_text(encoding="utf-8")) == kept

    def fail(*a, **k):
        raise AssertionError("recomputed")

    monkeypatch.setattr(sq, "quality_of", fail)
    assert sq.set_quality(s, tmp_path, data, train, 16, kept_only=True) == kept  # read back
    monkeypatch.undo()
    assert sq.set_quality(s, tmp_path, data, train, 16, kept_only=False)["n_synthetic"] == 4


def test_quality_table_shows_synthetic_arms_and_tolerates_older_results():
    train, test = _pairs(0, 6, "t"), _pairs(1, 6, "r")
    q = sq.quality_of(_pairs(2, 4, "s"), test, train)
    res = {"arms": {"baseline": {"kind": "real"}, "synthetic": {"kind": "synthetic", "synthetic_quality": q},
                    "tiny": {"kind": "synthetic", "synthetic_quality": {"n_synthetic": 1, "skipped": "too few"}}}}
    table = quality_table(res)
    assert "| synthetic | 4 |" in table and "pixels-8" in table and "| tiny | 1 | too few" in table
    assert "baseline" not in table
    assert quality_table({"arms": {"synthetic": {"kind": "synthetic"}}}) is None  # a result file made before
