"""The readers and checks on the shared datasets (skipped when ../shared/datasets is absent)."""

from __future__ import annotations

import pytest
from conftest import need_dataset

from lesionforge.data.checks import check_dataset
from lesionforge.data.readers import read_dataset
from lesionforge.data.splits import assign_splits, load_benchmark_split


@pytest.mark.parametrize("name", ["kvasir-seg", "busi"])
def test_benchmark_split_ids_match_reader_ids(name):
    samples = read_dataset(need_dataset(name))
    split = load_benchmark_split(name)
    ids = {s.id for s in samples}
    assert set(split.split_of()) <= ids
    assert len(split.low_data(16)) == 16
    assigned = assign_splits(samples, split)
    assert sum(s.split == "test" for s in assigned) == len(split.test)


def test_kvasir_loads_1000_pairs():
    samples = read_dataset(need_dataset("kvasir-seg"))
    assert len(samples) == 1000 and all(s.has_mask and len(s.masks) == 1 for s in samples)


def test_colon_normal_loads_125_backgrounds():
    samples = read_dataset(need_dataset("colon-normal"))
    assert len(samples) == 125 and not any(s.has_mask for s in samples)


@pytest.mark.slow
def test_busi_check():
    report = check_dataset(need_dataset("busi"), splits="busi")
    counts = report.counts()
    assert counts["images"] == 780 and counts["merged_multi_mask"] == 17 and counts["lesion_free"] == 133
    assert not any(report.errors.values())
    assert ["benign/benign (433)", "malignant/malignant (145)"] in report.exact_duplicates
    assert counts["near_duplicate_groups"] > 100
    # the published split misses a few twins (e.g. 'benign (151)' in test, 'benign (16)' in val)
    assert {"benign/benign (151)": "test", "benign/benign (16)": "val"} in report.split_leakage
