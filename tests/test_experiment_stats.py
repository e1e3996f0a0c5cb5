"""Statistics: mean ± std, paired bootstrap by image id, per-seed t interval, ratio metrics."""

from __future__ import annotations

import numpy as np
import pytest

from lesionforge.experiment import stats


def test_mean_std_uses_sample_std_and_ignores_nan():
    m, s = stats.mean_std([0.5, 0.7, np.nan, 0.6])
    assert m == pytest.approx(0.6)
    assert s == pytest.approx(0.1)
    assert stats.mean_std([0.4]) == (0.4, 0.0)


def test_bootstrap_ci_contains_true_difference_and_excludes_zero():
    rng = np.random.default_rng(1)
    ids = [f"img{i:03d}" for i in range(200)]
    base = rng.uniform(0.3, 0.9, 200)  # large between-image spread ...
    arm = base + 0.05 + rng.normal(0, 0.03, 200)  # ... but a small, consistent paired gain
    d = stats.bootstrap_paired(dict(zip(ids, arm, strict=True)), dict(zip(ids, base, strict=True)), n_boot=2000, seed=0)
    lo, hi = d["ci95"]
    assert lo < 0.05 < hi
    assert lo > 0.0
    assert hi - lo < 0.02  # pairing removes the between-image spread (unpaired width would be ~0.07)
    assert d["mean"] == pytest.approx(float(np.mean(arm - base)))
    assert d["relative_pct"] == pytest.approx(100 * np.mean(arm - base) / np.mean(base))
    assert d["n_images"] == 200


def test_bootstrap_pairs_by_id_not_by_order_and_is_reproducible():
    ids = [f"i{k}" for k in range(50)]
    base = {i: 0.01 * k for k, i in enumerate(ids)}
    arm = {i: v + 0.1 for i, v in reversed(list(base.items()))}  # same pairs, opposite insertion order
    d = stats.bootstrap_paired(arm, base, n_boot=500, seed=3)
    assert d["mean"] == pytest.approx(0.1)
    assert d["ci95"] == pytest.approx([0.1, 0.1])  # every paired difference is exactly 0.1
    assert stats.bootstrap_paired(arm, base, n_boot=500, seed=3) == d


def test_bootstrap_rejects_different_image_sets():
    with pytest.raises(ValueError, match="different image ids"):
        stats.bootstrap_paired({"a": 1.0, "b": 1.0}, {"a": 1.0, "c": 1.0})


def test_per_image_means_average_over_seeds():
    out = stats.per_image_means([{"a": 0.2, "b": 0.4}, {"a": 0.4, "b": np.nan}])
    assert out == {"a": pytest.approx(0.3), "b": pytest.approx(0.4)}
    with pytest.raises(ValueError, match="different image ids"):
        stats.per_image_means([{"a": 0.2}, {"b": 0.4}])


def test_seed_interval_matches_student_t_and_needs_three_seeds():
    d = stats.seed_paired_ci([1.5, 2.5, 3.5], [0.5, 0.5, 0.5])  # differences 1, 2, 3: mean 2, sd 1
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert d["mean"] == pytest.approx(2.0)
    assert d["ci95"] == pytest.approx([2 - half, 2 + half])
    assert stats.seed_paired_ci([1.0, 2.0], [0.0, 0.0]) is None


def test_ratio_bootstrap_pools_counts():
    # base misses 1 of 2 lesions on every image, the arm 0 of 2: miss rate 0.5 -> 0.0
    base = {f"i{k}": (1.0, 2.0) for k in range(20)}
    arm = {f"i{k}": (0.0, 2.0) for k in range(20)}
    d = stats.ratio_bootstrap_paired(arm, base, n_boot=200, seed=0)
    assert d["mean"] == pytest.approx(-0.5)
    assert d["ci95"] == pytest.approx([-0.5, -0.5])
    assert d["relative_pct"] == pytest.approx(-100.0)


def test_relative_change_undefined_for_zero_base():
    assert stats.relative_change(0.1, 0.0) is None
    assert stats.relative_change(0.05, 0.5) == pytest.approx(10.0)
