"""Real + synthetic mixing: batch proportions, the alpha pool, patch merging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lesionforge.data.manifest import Provenance, Sample, kept
from lesionforge.errors import ConfigError
from lesionforge.segment.config import MixConfig
from lesionforge.segment.data import twins_of
from lesionforge.segment.mixing import BatchSampler, merge_mask, merge_pairs, step_rng

REAL = [f"r{i}" for i in range(10)]


@pytest.mark.parametrize("ratio", [0.5, 2.0, 3.0])
def test_ratio_gives_the_asked_proportion(ratio):
    s = BatchSampler(MixConfig(mode="ratio", ratio=ratio), REAL, 30, batch_size=16, seed=0)
    plans = [s.plan(k) for k in range(400)]
    assert all(len(p.real) + len(p.synthetic) == 16 for p in plans)
    n_syn = sum(len(p.synthetic) for p in plans)
    n_real = sum(len(p.real) for p in plans)
    assert n_syn / n_real == pytest.approx(ratio, rel=0.03)


def test_plans_are_a_function_of_seed_and_step():
    a = BatchSampler(MixConfig(mode="ratio", ratio=1.0), REAL, 30, 8, seed=3)
    b = BatchSampler(MixConfig(mode="ratio", ratio=1.0), REAL, 30, 8, seed=3)
    assert np.array_equal(a.plan(17).synthetic, b.plan(17).synthetic)
    assert not np.array_equal(a.plan(17).real, a.plan(18).real)


def test_alpha_admits_a_fixed_share_of_synthetic_samples():
    s = BatchSampler(MixConfig(mode="alpha", alpha=0.3), REAL, 1000, 8, seed=0)
    assert len(s.admitted) / 1000 == pytest.approx(0.3, abs=0.05)
    used = np.concatenate([s.plan(k).synthetic for k in range(300)])
    assert set(used.tolist()) <= set(s.admitted.tolist())


def test_modes_none_and_synthetic_only():
    none = BatchSampler(MixConfig(mode="none"), REAL, 0, 4, 0).plan(0)
    assert len(none.real) == 4 and len(none.synthetic) == 0
    syn = BatchSampler(MixConfig(mode="synthetic-only"), REAL, 5, 4, 0).plan(0)
    assert len(syn.real) == 0 and len(syn.synthetic) == 4
    with pytest.raises(ConfigError):
        BatchSampler(MixConfig(mode="ratio"), REAL, 0, 4, 0)


def test_patch_merge_pairs_each_real_with_its_twin():
    twins = {"r0": [0, 1], "r1": [2]}
    s = BatchSampler(MixConfig(mode="patch-merge"), REAL[:3], 3, 6, seed=0, twins=twins)
    p = s.plan(5)
    for r, t in zip(p.real, p.twin, strict=True):
        assert t in twins.get(REAL[r], [-1])
    with pytest.raises(ConfigError):
        BatchSampler(MixConfig(mode="patch-merge"), REAL, 3, 4, 0, twins={})


def test_merge_mask_patches_and_share():
    m = merge_mask(64, 32, 8, 0.6, step_rng(0, 0, 3))
    assert m.shape == (64, 1, 32, 32)
    blocks = m[:, 0].reshape(64, 4, 8, 4, 8)
    assert torch.all(blocks.amax(dim=(2, 4)) == blocks.amin(dim=(2, 4)))  # constant within each patch
    assert float(m.mean()) == pytest.approx(0.6, abs=0.05)


def test_merged_labels_and_logits_follow_the_merge_mask():
    g = torch.Generator().manual_seed(0)
    lr, ls = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    yr = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    ys = 1 - yr  # opposite labels, so any mix-up shows
    m = merge_mask(2, 16, 4, 0.6, step_rng(0, 1, 3))
    logits, labels = merge_pairs(lr, ls, yr, ys, m)
    one = m.bool()
    assert torch.equal(labels[one], yr[one]) and torch.equal(labels[~one], ys[~one])
    assert torch.equal(logits[one], lr[one]) and torch.equal(logits[~one], ls[~one])


def test_kept_and_twins_from_provenance():
    def syn(i: int, src: str, kept: bool | None) -> Sample:
        val = None if kept is None else {"kept": kept, "dice": 0.9}
        return Sample(id=f"s{i}", image=f"s{i}.png", origin="synthetic",
                      provenance=Provenance(source_id=src, validation=val))

    samples = [syn(0, "a", True), syn(1, "a", False), syn(2, "b", True), syn(3, "b", None)]
    assert [s.id for s in kept(samples)] == ["s0", "s2"]
    assert twins_of(samples) == {"a": [0, 1], "b": [2, 3]}


def test_synthetic_until_fine_tunes_on_real_alone_and_keeps_old_dumps():
    """Synthetic pairs in the first 60 % of the steps, real alone after; the same batches as plain ratio mixing
    before that step; an unset synthetic_until leaves the config dump (and every hash made from it) unchanged."""
    cfg = MixConfig(mode="ratio", ratio=1.0, synthetic_until=0.6)
    s = BatchSampler(cfg, REAL, 30, 8, seed=3, total_steps=100)
    plain = BatchSampler(MixConfig(mode="ratio", ratio=1.0), REAL, 30, 8, seed=3)
    early = [s.plan(i) for i in range(60)]
    assert all(np.array_equal(p.synthetic, plain.plan(i).synthetic) for i, p in enumerate(early))
    assert sum(len(p.synthetic) for p in early) > 150
    late = [s.plan(i) for i in range(60, 100)]
    assert all(len(p.synthetic) == 0 and len(p.real) == 8 for p in late)
    assert "synthetic_until" not in MixConfig(mode="ratio").model_dump()
    with pytest.raises(ConfigError, match="total steps"):
        BatchSampler(cfg, REAL, 30, 8, seed=3)
    with pytest.raises(ValueError, match="synthetic_until"):
        MixConfig(mode="patch-merge", synthetic_until=0.5)
