"""Input checks: every deliberately broken file raises its named error from the loader and is reported."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from test_data_builders import write_broken_dataset, write_pairs
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.data.arrays import load_sample
from lesionforge.data.checks import check_dataset
from lesionforge.data.io import MaskNotice, read_mask
from lesionforge.data.readers import read_dataset, scan_folder
from lesionforge.data.splits import BenchmarkSplit
from lesionforge.errors import (
    ChannelCountError,
    CorruptFileError,
    MissingMaskError,
    NonBinaryMaskError,
    OrphanMaskError,
    SizeMismatchError,
)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return write_broken_dataset(tmp_path_factory.mktemp("broken"))


@pytest.fixture(scope="module")
def report(broken):
    return check_dataset(broken)


@pytest.mark.parametrize(
    "sample_id, error",
    [("sizemm", SizeMismatchError), ("trunc", CorruptFileError), ("twoch", ChannelCountError),
     ("grey", NonBinaryMaskError)],
)
def test_loader_raises_named_error(broken, sample_id, error):
    sample = next(s for s in scan_folder(broken).samples if s.id == sample_id)
    with pytest.raises(error, match=sample_id):
        load_sample(sample)


def test_reader_raises_for_missing_and_orphan_masks(tmp_path):
    write_pairs(tmp_path, ["a", "b"])
    (tmp_path / "masks" / "b.png").rename(tmp_path / "masks" / "c_mask.png")
    with pytest.raises(OrphanMaskError, match="c_mask.png"):
        read_dataset(tmp_path)
    (tmp_path / "masks" / "c_mask.png").unlink()
    with pytest.raises(MissingMaskError, match="b.png"):
        read_dataset(tmp_path)
    kept = read_dataset(tmp_path, allow_missing_masks=True)
    assert [(s.id, s.has_mask) for s in kept] == [("a", True), ("b", False)]


def test_jpeg_noise_mask_is_thresholded_with_notice(broken, tmp_path):
    path = tmp_path / "jpegm.jpg"  # a fresh folder: the notice is given once per folder
    path.write_bytes((broken / "masks" / "jpegm.jpg").read_bytes())
    raw = np.asarray(Image.open(path))
    assert len(np.unique(raw)) > 2  # the file really is noisy
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = read_mask(path)
    assert set(np.unique(mask)) == {0, 1}
    assert any(issubclass(w.category, MaskNotice) for w in caught)


def test_report_lists_every_problem_by_file(report):
    expected = {"missing_mask": "missing.png", "orphan_mask": "ghost_mask.png", "size_mismatch": "sizemm.png",
                "corrupt_file": "trunc.png", "channel_count": "twoch.png", "non_binary_mask": "grey.png"}
    for kind, file in expected.items():
        assert [i.file.split("/")[-1] for i in report.errors[kind]] == [file], kind
    assert [i.id for i in report.notices["jpeg_noise_mask"]] == ["jpegm"]
    assert report.lesion_free == ["empty"]
    assert not report.ok


def test_report_finds_exact_and_near_duplicates(report):
    assert report.exact_duplicates == [["dup_a", "dup_b"]]
    assert report.near_duplicates == [["dup_a", "dup_b", "near_b"]]


def test_leakage_across_splits(broken, report):
    split = BenchmarkSplit(train=["dup_a", "ok_0"], val=["ok_1"], test=["near_b", "ok_2"])
    leaks = check_dataset(broken, splits=split).split_leakage
    assert leaks == [{"dup_a": "train", "near_b": "test"}]
    clean = BenchmarkSplit(train=["dup_a", "near_b"], val=["ok_1"], test=["ok_2"])
    assert check_dataset(broken, splits=clean).split_leakage == []


def test_clean_dataset_is_ok(tmp_path):
    write_pairs(tmp_path, ["a", "b", "c"])
    rep = check_dataset(tmp_path)
    assert rep.ok and rep.counts()["images"] == 3 and rep.near_duplicates == []


def test_cli_check_json(broken):
    result = CliRunner().invoke(app, ["data", "check", str(broken), "--json"])
    assert result.exit_code == 1  # errors present
    out = json.loads(result.stdout)
    assert out["counts"]["corrupt_file"] == 1 and out["counts"]["lesion_free"] == 1
    assert out["errors"]["size_mismatch"][0]["id"] == "sizemm"


def test_duplicate_id_is_reported_not_raised(tmp_path):
    write_pairs(tmp_path, ["a", "b"])
    Image.open(tmp_path / "images" / "a.png").save(tmp_path / "images" / "a.jpg")
    rep = check_dataset(tmp_path)
    assert [i.file.split("/")[-1] for i in rep.errors["duplicate_id"]] == ["a.png"]
    assert rep.n_images == 2 and not rep.ok
