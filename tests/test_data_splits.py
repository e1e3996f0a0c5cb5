"""Splits: reading split files, group-preserving splits of a user's data, assigning Sample.split."""

from __future__ import annotations

import json

import pytest
from test_data_builders import write_pairs
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.data.manifest import Sample
from lesionforge.data.splits import assign_splits, load_benchmark_split, make_splits, save_split
from lesionforge.errors import DataError

SPLIT = {
    "dataset": "toy", "near_duplicate_groups": 1, "train": ["a", "b", "c", "d"], "val": ["e"], "test": ["f"],
    "normal_backgrounds": ["n1"], "low_data_subsets": {"2": ["a", "b"], "3": ["a", "b", "c"]},
}


def test_split_file_reading(tmp_path):
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(SPLIT), encoding="utf-8")
    split = load_benchmark_split(path)
    assert split.low_data(2) == ["a", "b"] and split.low_data(3) == ["a", "b", "c"]
    assert split.split_of()["f"] == "test" and split.split_of()["n1"] == "normal_backgrounds"
    with pytest.raises(KeyError, match="no low-data subset of 5"):
        split.low_data(5)


@pytest.mark.parametrize("change", [{"val": ["a"]}, {"low_data_subsets": {"2": ["a", "e"]}},
                                    {"low_data_subsets": {"2": ["a", "b"], "3": ["a", "c", "d"]}}])
def test_inconsistent_split_file_names_the_file(tmp_path, change):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(SPLIT | change), encoding="utf-8")
    with pytest.raises(DataError, match="bad.json"):
        load_benchmark_split(path)


def test_split_by_name_searches_env_dir(tmp_path, monkeypatch):
    (tmp_path / "toy.json").write_text(json.dumps(SPLIT), encoding="utf-8")
    monkeypatch.setenv("LESIONFORGE_SPLITS", str(tmp_path))
    assert load_benchmark_split("toy").dataset == "toy"
    with pytest.raises(DataError, match="not found"):
        load_benchmark_split("no-such-split")


def test_make_splits_keeps_groups_together():
    samples = [Sample(id=f"s{i:02d}", image=f"s{i:02d}.png", masks=["m.png"]) for i in range(40)]
    samples.append(Sample(id="bg", image="bg.png", has_mask=False))
    groups = [["s00", "s01", "s02", "s03"], ["s10", "s11"], ["s11", "s12"], ["s20", "s39"]]
    for seed in range(5):
        split = make_splits(samples, (0.6, 0.2, 0.2), seed=seed, groups=groups, low_data_sizes=(4, 8))
        where = split.split_of()
        assert len({where[i] for i in groups[0]}) == 1
        assert len({where[i] for i in ("s10", "s11", "s12")}) == 1  # overlapping groups merge
        assert len({where[i] for i in groups[3]}) == 1
        assert (len(split.train), len(split.val), len(split.test)) in {(24, 8, 8), (23, 9, 8), (24, 9, 7),
                                                                       (23, 8, 9), (25, 8, 7), (24, 7, 9)}
        assert split.normal_backgrounds == ["bg"]
        assert set(split.low_data(4)) < set(split.low_data(8)) <= set(split.train)
    assert make_splits(samples, seed=3, groups=groups) == make_splits(samples, seed=3, groups=groups)
    assert make_splits(samples, seed=3).train != make_splits(samples, seed=4).train


def test_assign_splits_and_save_round_trip(tmp_path):
    samples = [Sample(id=i, image=f"{i}.png") for i in ("a", "e", "zz")]
    split = load_benchmark_split(save_split(make_splits(samples, seed=0), tmp_path / "s.json"))
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(SPLIT), encoding="utf-8")
    assigned = assign_splits(samples, load_benchmark_split(path))
    assert [s.split for s in assigned] == ["train", "val", None]
    assert sorted(split.train + split.val + split.test) == ["a", "e", "zz"]


def test_cli_split_groups_duplicates(tmp_path):
    images, _ = write_pairs(tmp_path / "data", [f"p{i}" for i in range(10)])
    write_pairs(tmp_path / "data", ["twin"], seed=0)  # same pixels as p0: must share p0's split
    out = tmp_path / "splits.json"
    result = CliRunner().invoke(app, ["data", "split", str(tmp_path / "data"), "-o", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    split = load_benchmark_split(out)
    assert ["p0", "twin"] in split.near_duplicate_groups
    assert split.split_of()["p0"] == split.split_of()["twin"]


def test_the_experiment_split_is_the_benchmark_split_type(demo_root):
    """One split type: the demo split an experiment makes is a checked BenchmarkSplit (nested subsets, no id in
    two parts), so it can be saved and read back as a split file."""
    from lesionforge.data.manifest import read_manifest
    from lesionforge.data.splits import BenchmarkSplit
    from lesionforge.experiment.real_stages import demo_split

    split = demo_split(read_manifest(demo_root / "manifest.jsonl"), [4, 8])
    assert isinstance(split, BenchmarkSplit) and split.low_data(4) == split.train[:4]
    assert BenchmarkSplit.model_validate(split.model_dump(mode="json")) == split
