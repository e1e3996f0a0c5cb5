"""One reader of synthetic sets and one meaning of "kept", the same in the segment and quality paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lesionforge.data.arrays import PairArrays, manifest_arrays
from lesionforge.data.manifest import (
    Provenance,
    Sample,
    is_kept,
    kept,
    read_set,
    set_manifest,
    write_manifest,
)
from lesionforge.errors import DataError


def _syn(i: int, kept_by_filter: bool | None = None, reviews: dict | None = None) -> Sample:
    val = None if kept_by_filter is None else {"kept": kept_by_filter, "dice": 0.5}
    return Sample(id=f"s{i}", image=f"s{i}.png", origin="synthetic",
                  provenance=Provenance(validation=val, reviews=reviews))


REJECTED = {"ann": {"decision": "rejected", "at": "2026-01-01T00:00:00+00:00"}}
ACCEPTED = {"bob": {"decision": "accepted", "at": "2026-01-01T00:00:00+00:00"}}


def test_kept_in_a_filtered_set_needs_the_filter_and_no_reviewer_rejection():
    rows = [_syn(0, True), _syn(1, False), _syn(2, None), _syn(3, True, REJECTED), _syn(4, False, ACCEPTED),
            Sample(id="r0", image="r0.png")]
    # scored+kept stays; filter-rejected goes (an acceptance does not override it); an unscored row in a set the
    # filter ran on was never checked and goes; a reviewer's rejection removes a filter-kept row; real rows stay
    assert [s.id for s in kept(rows)] == ["s0", "r0"]


def test_kept_in_an_unfiltered_set_is_every_row_no_reviewer_rejected():
    rows = [_syn(0), _syn(1, reviews=REJECTED), _syn(2, reviews=ACCEPTED)]
    assert [s.id for s in kept(rows)] == ["s0", "s2"]
    assert is_kept(_syn(5), filtered=False) and not is_kept(_syn(5), filtered=True)


@pytest.fixture()
def set_dir(demo_root, tmp_path) -> Path:
    """A set folder whose ``manifest.filtered.jsonl`` holds 5 synthetic rows (copies of demo pairs): kept,
    filter-rejected, unscored, kept but rejected by a reviewer, kept; plus one real row."""
    from test_quality_cli import copied_demo_rows

    real = copied_demo_rows(demo_root, tmp_path, 5)
    marks = [(True, None), (False, None), (None, None), (True, REJECTED), (True, None)]
    rows = [s.model_copy(update={"id": f"syn_{i}", "origin": "synthetic", "provenance": Provenance(
        validation=None if k is None else {"kept": k, "dice": 0.5}, reviews=r)})
        for i, (s, (k, r)) in enumerate(zip(real, marks, strict=True))]
    write_manifest(tmp_path / "manifest.filtered.jsonl", [real[0], *rows])
    return tmp_path


def test_read_set_takes_a_set_folder_and_selects(set_dir):
    assert set_manifest(set_dir) == set_dir / "manifest.filtered.jsonl"
    assert [s.id for s in read_set(set_dir, origin="synthetic", kept_only=True)] == ["syn_0", "syn_4"]
    assert len(read_set(set_dir, origin="synthetic")) == 5
    with pytest.raises(DataError, match="no samples to use .origin='real', split='test'"):
        read_set(set_dir, origin="real", split="test")
    with pytest.raises(DataError, match="no manifest in the set folder"):
        set_manifest(set_dir / "images")


def test_segment_kept_only_trains_on_the_kept_rows(set_dir, demo_root, monkeypatch):
    from lesionforge.segment import run as jobs

    seen = {}
    monkeypatch.setattr(jobs, "train_segmenter", lambda cfg, train, val, out, synthetic, **kw: seen.setdefault(
        "ids", synthetic.ids))
    jobs.train_from_files("segment-tiny.yaml", demo_root / "manifest.jsonl", set_dir / "run",
                          val_data=demo_root / "manifest.jsonl", synthetic=set_dir / "manifest.filtered.jsonl",
                          kept_only=True)
    assert seen["ids"] == ["syn_0", "syn_4"]


def test_quality_kept_only_scores_the_same_rows(set_dir, demo_root, monkeypatch):
    from lesionforge.quality import run as quality

    seen = {}

    def report(real, synthetic, extractor, samples, **kw):
        seen["ids"], seen["rows"] = synthetic.ids, [s.id for s in samples]
        return {}

    monkeypatch.setattr(quality, "quality_report", report)
    monkeypatch.setattr(quality, "write_quality_report", lambda report, out: out)
    quality.run_quality(demo_root / "manifest.jsonl", set_dir / "manifest.filtered.jsonl", "pixels:4",
                        set_dir / "q", 32, real_split=None, kept_only=True)
    assert seen["ids"] == ["syn_0", "syn_4"]
    assert seen["rows"] == [f"syn_{i}" for i in range(5)]  # mask fidelity covers every synthetic row
    arrays = manifest_arrays(set_dir, 32, origin="synthetic", kept_only=True)
    assert arrays.ids == ["syn_0", "syn_4"] and arrays.images.shape == (2, 32, 32, 3)


def _arrays(ids: list[str], size: int = 4) -> PairArrays:
    n = len(ids)
    return PairArrays(np.full((n, size, size, 3), len(ids[0]) if ids else 0, np.uint8),
                      np.ones((n, size, size), np.uint8), np.arange(n) % 2 == 0, list(ids), ["c"] * n)


def test_pair_arrays_concat_keeps_order_and_skips_none_and_empty():
    a, b = _arrays(["a0", "a1"]), _arrays(["bb0"])
    both = PairArrays.concat([a, None, _arrays([]), b])
    assert both.ids == ["a0", "a1", "bb0"] and both.classes == ["c"] * 3
    assert both.images.shape == (3, 4, 4, 3) and both.images[2, 0, 0, 0] == 3
    assert both.has_mask.tolist() == [True, False, True] and both.masks.shape == (3, 4, 4)
    empty = PairArrays.concat([None, _arrays([])])
    assert len(empty) == 0 and empty.images.ndim == 4 and empty.masks.ndim == 3
