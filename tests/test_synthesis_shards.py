"""Synthesis sharded by sample index: the shards merged give the one-process synthesis byte for byte, also
after a shard was killed mid-way; ``synthesize --executor ray`` on a local Ray instance does the same."""

from __future__ import annotations

import json

import pytest
from test_generate_common import normals, pairs
from test_generate_sample import _files, _saved

from lesionforge.data.manifest import read_manifest
from lesionforge.errors import OverwriteError
from lesionforge.generate import synthesize as synth_module
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.shards import PARTS, merge_parts, part_dir, split_indices, todo_indices
from lesionforge.generate.synthesize import MANIFEST, RUN_FILE, synthesize
from lesionforge.generate.trainbatch import make_mask_source


def _tree(root) -> dict[str, bytes]:
    """Every file under ``root`` (manifest, run file, images, masks) by relative path; the output marker
    names its own folder, so it is left out."""
    from lesionforge.outputs import MARKER

    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != MARKER}


@pytest.fixture()
def inpaint(demo_arrays, tmp_path):
    gen_dir = _saved("inpaint", tmp_path / "g")
    kw = dict(masks_from=make_mask_source("jitter", pairs(demo_arrays), 32), backgrounds=normals(demo_arrays),
              real=pairs(demo_arrays), sampling=SamplingConfig(sampler="ddim", steps=2), seed=5,
              batch_size=3, progress=False)
    return gen_dir, kw


def test_split_indices_is_contiguous_ordered_and_complete():
    assert split_indices(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_indices([1, 4], 5) == [[1], [4]]
    assert split_indices([], 4) == []


def test_shards_merged_equal_one_process_byte_for_byte_even_after_a_killed_shard(inpaint, tmp_path, monkeypatch):
    gen_dir, kw = inpaint
    whole = tmp_path / "whole"
    synthesize(gen_dir, whole, 7, **kw)
    sharded = tmp_path / "sharded"
    parts = split_indices(todo_indices(sharded, 7), 3)
    real_append = synth_module.append_manifest

    def die_after_first_batch(path, rows):
        real_append(path, rows)
        raise KeyboardInterrupt  # the shard's worker killed after its first batch was written

    monkeypatch.setattr(synth_module, "append_manifest", die_after_first_batch)
    with pytest.raises(KeyboardInterrupt):
        synthesize(gen_dir, part_dir(sharded, 2), 7, indices=parts[2], **{**kw, "batch_size": 1})
    monkeypatch.setattr(synth_module, "append_manifest", real_append)
    for k in (1, 0, 2):  # any order; shard 2 resumes its part
        synthesize(gen_dir, part_dir(sharded, k), 7, indices=parts[k], **kw)
    samples = merge_parts(sharded)
    assert [s.provenance.sample_index for s in samples] == list(range(7))
    assert not (sharded / PARTS).exists()
    assert _tree(sharded) == _tree(whole)  # manifest rows, run file, every image and mask
    assert merge_parts(sharded) == samples  # nothing left to merge: a rerun changes nothing
    assert todo_indices(sharded, 9) == [7, 8]


def test_merge_refuses_parts_drawn_with_other_settings(inpaint, tmp_path):
    gen_dir, kw = inpaint
    out = tmp_path / "s"
    synthesize(gen_dir, out, 2, **kw)
    synthesize(gen_dir, part_dir(out, 0), 4, indices=[2, 3], **{**kw, "seed": 6})
    with pytest.raises(OverwriteError, match="other seed"):
        merge_parts(out)
    assert json.loads((out / RUN_FILE).read_text(encoding="utf-8"))["seed"] == 5
    assert len(read_manifest(out / MANIFEST)) == 2  # untouched


@pytest.mark.slow
def test_synthesize_cli_with_ray_executor_equals_one_process(demo_root, tmp_path, ray_local):
    from typer.testing import CliRunner

    from lesionforge.cli import app

    gen_dir = _saved("mask2image", tmp_path / "g")
    common = [str(gen_dir), "--n", "6", "--data", str(demo_root / "manifest.jsonl"), "--steps", "2",
              "--seed", "4", "--batch-size", "2"]
    runner = CliRunner()
    one = runner.invoke(app, ["synthesize", *common, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    many = runner.invoke(app, ["synthesize", *common, "--out", str(tmp_path / "many"), "--executor", "ray",
                               "--shards", "3"])
    assert many.exit_code == 0, many.output
    assert _files(tmp_path / "many") == _files(tmp_path / "one")
    assert _tree(tmp_path / "many") == _tree(tmp_path / "one")


def test_even_mask_draws_give_each_labelled_mask_its_share_and_shard_the_same(inpaint, tmp_path):
    """A synthesis from an even jitter source draws every labelled mask equally often (the provenance says which),
    and its shards merged are still the one-process set byte for byte."""
    from collections import Counter

    gen_dir, kw = inpaint
    kw = {**kw, "masks_from": make_mask_source("jitter", kw["real"], 32, even=True)}
    n = len(kw["masks_from"].masks) + 3
    whole = tmp_path / "whole"
    synthesize(gen_dir, whole, n, **kw)
    counts = Counter(s.provenance.source_id for s in read_manifest(whole / MANIFEST))
    assert set(counts) == set(kw["masks_from"].ids) and sorted(set(counts.values())) == [1, 2]
    sharded = tmp_path / "sharded"
    for k, part in enumerate(split_indices(todo_indices(sharded, n), 2)):
        synthesize(gen_dir, part_dir(sharded, k), n, indices=part, **kw)
    merge_parts(sharded)
    assert _tree(sharded) == _tree(whole)


def test_an_even_draws_large_mask_is_placed_on_another_background_where_it_fits_nowhere_on_the_first():
    """An even source fixes sample i's mask by its index, so where that (large) mask fits nowhere on the drawn
    frame's field of view the placement tries other frames (it did not: Kvasir-SEG's even set stopped with 'no mask
    fitted'); a random source still draws other masks on the same frame, its draws as before."""
    import numpy as np

    from lesionforge.conditioning.masks import build_mask_source, place_mask
    from lesionforge.generate import synthesize as synth

    class Frames:  # what placement reads of the lesion-free frames (PairArrays)
        def __init__(self, images: list) -> None:
            self.images = images

        def __len__(self) -> int:
            return len(self.images)

    small_fov = np.zeros((64, 64, 3), np.uint8)
    small_fov[24:40, 24:40] = 150  # a 16 px visible square: a 40 px lesion fits nowhere on it
    backgrounds = Frames([small_fov] * 7 + [np.full((64, 64, 3), 150, np.uint8)])
    large = np.zeros((1, 64, 64), np.uint8)
    large[0, 10:50, 10:50] = 1
    even = build_mask_source("jitter", large, ["big"], even=True,
                             jitter={"scale": (1.0, 1.0), "max_shift": 0.0, "max_rotate": 0.0, "elastic": False})
    for i in range(6):
        j, placed, info = synth._placed_mask(even, backgrounds, np.random.default_rng([3, i]), 3, i)
        assert j == 7 and placed.sum() == large.sum() and info["source_id"] == "big"
    # a random source: the frame drawn first, then masks drawn on it until one fits (the same rng use as before)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 10:50, 10:50], masks[1, 30:34, 30:34] = 1, 1
    rand = build_mask_source("jitter", masks, ["big", "small"],
                             jitter={"scale": (1.0, 1.0), "max_shift": 0.0, "max_rotate": 0.0, "elastic": False})
    j, placed, info = synth._placed_mask(rand, backgrounds, np.random.default_rng(11), 0, 0)
    rng = np.random.default_rng(11)
    j0 = int(rng.integers(8))
    fov = synth.field_of_view_of(backgrounds.images[j0])
    while (again := place_mask(*(d := rand(rng, 1)[0])[:1], fov, rng)) is None:
        pass
    assert (j, info["source_id"]) == (j0, d[1]["source_id"]) and np.array_equal(placed, again)
