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


def test_bootstrap_by_group_resamples_whole_volumes_and_widens_where_their_slices_move_together():
    """Slices of one volume share its difference: resampled one by one they look like 10x more evidence than the
    10 volumes give; resampled by volume (``groups``) the interval has the volumes' own spread."""
    rng = np.random.default_rng(0)
    ids = [f"case{c}/2_{k:04d}" for c in range(10) for k in range(20)]
    shift = {f"case{c}": rng.normal(0.01, 0.03) for c in range(10)}  # each volume's own gain
    base = {i: 0.7 for i in ids}
    arm = {i: 0.7 + shift[i.split("/")[0]] + rng.normal(0, 0.002) for i in ids}
    groups = {i: i.split("/")[0] for i in ids}
    flat = stats.bootstrap_paired(arm, base, n_boot=2000, seed=0)
    by_case = stats.bootstrap_paired(arm, base, n_boot=2000, seed=0, groups=groups)
    assert by_case["mean"] == flat["mean"] and by_case["n_images"] == 200 and by_case["n_groups"] == 10
    assert "n_groups" not in flat
    width = lambda d: d["ci95"][1] - d["ci95"][0]  # noqa: E731
    assert width(by_case) > 3 * width(flat)
    gains = np.array(list(shift.values()))
    assert width(by_case) == pytest.approx(2 * 1.96 * gains.std() / np.sqrt(10), rel=0.35)
    # every slice moving alone (no shared shift; 50 volumes of 4): about the same interval either way
    many = [f"case{c}/2_{k:04d}" for c in range(50) for k in range(4)]
    iid = {i: 0.7 + rng.normal(0.01, 0.03) for i in many}
    flat_base, many_groups = dict.fromkeys(many, 0.7), {i: i.split("/")[0] for i in many}
    volume_means = [np.mean([iid[i] - 0.7 for i in many[4 * c:4 * c + 4]]) for c in range(50)]
    by_volume = width(stats.bootstrap_paired(iid, flat_base, groups=many_groups))
    assert by_volume == pytest.approx(2 * 1.96 * np.std(volume_means) / np.sqrt(50), rel=0.15)
    assert by_volume == pytest.approx(width(stats.bootstrap_paired(iid, flat_base)), rel=0.3)
    with pytest.raises(ValueError, match="no group for image"):
        stats.bootstrap_paired(arm, base, groups={i: g for i, g in list(groups.items())[1:]})


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
