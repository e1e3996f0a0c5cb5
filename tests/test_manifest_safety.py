"""Manifests: rows naming files outside the manifest's folder are refused unless allowed; a synthetic set's
manifest is appended a batch at a time in one fsynced write, and a torn last row left by a kill is dropped on
resume and its samples drawn again, giving the set an uninterrupted run gives."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from test_generate_common import pairs, tiny_cfg
from typer.testing import CliRunner

from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Sample, append_manifest, read_manifest, write_manifest
from lesionforge.data.readers import read_dataset
from lesionforge.errors import DataError
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import SamplingConfig
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainbatch import make_mask_source


def _pair(folder, name, demo_arrays, k=0):
    write_image(folder / f"{name}.png", demo_arrays.images[k])
    write_mask(folder / f"{name}_mask.png", demo_arrays.masks[k])
    return folder / f"{name}.png", folder / f"{name}_mask.png"


# 2. paths read from manifests


def test_manifest_rows_leaving_the_manifest_folder_are_refused_unless_allowed(demo_arrays, tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    inside, inside_mask = _pair(data / "images", "a", demo_arrays)
    outside, outside_mask = _pair(elsewhere, "b", demo_arrays)
    ok = [Sample(id="rel", image="images/a.png", masks=["images/a_mask.png"]),
          Sample(id="abs-inside", image=str(inside), masks=[str(inside_mask)])]
    write_manifest(data / "ok.jsonl", ok)
    assert [s.id for s in read_manifest(data / "ok.jsonl")] == ["rel", "abs-inside"]
    for bad in (Sample(id="up", image="../elsewhere/b.png", masks=["../elsewhere/b_mask.png"]),
                Sample(id="abs", image=str(outside), masks=[str(outside_mask)]),
                Sample(id="mask-only", image="images/a.png", masks=["images/../../elsewhere/b_mask.png"])):
        write_manifest(data / "bad.jsonl", [*ok, bad])
        with pytest.raises(DataError, match=rf"bad.jsonl: line 3 \(id '{bad.id}'\).*outside the manifest's folder"):
            read_manifest(data / "bad.jsonl")
        with pytest.raises(DataError, match="outside"):
            read_dataset(data / "bad.jsonl")
        assert len(read_manifest(data / "bad.jsonl", allow_outside=True)) == 3


def test_cli_reads_an_outside_manifest_only_with_allow_outside_paths(demo_arrays, tmp_path):
    from lesionforge.cli import app

    image, mask = _pair(tmp_path / "elsewhere", "b", demo_arrays, k=1)
    write_manifest(tmp_path / "lists" / "m.jsonl", [Sample(id="b", image=str(image), masks=[str(mask)])])
    args = ["conditioning", "edges", "--manifest", str(tmp_path / "lists" / "m.jsonl"), "--resolution", "32"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e1")])
    assert isinstance(refused.exception, DataError) and "--allow-outside-paths" in str(refused.exception)
    allowed = CliRunner().invoke(app, ["--allow-outside-paths", *args, "--out", str(tmp_path / "e2")])
    assert allowed.exit_code == 0, allowed.output
    assert (tmp_path / "e2" / "edges" / "b.png").is_file()
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e3")])  # the flag does not stick
    assert isinstance(again.exception, DataError)


# 4. crash-safe appends


def test_a_batch_of_manifest_rows_is_one_write_then_fsync(tmp_path, monkeypatch):
    calls = []
    real_write, real_fsync = os.write, os.fsync
    monkeypatch.setattr(os, "write", lambda fd, data: calls.append("write") or real_write(fd, data))
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync") or real_fsync(fd))
    append_manifest(tmp_path / "m.jsonl", [Sample(id=f"s{i}", image=f"images/s{i}.png") for i in range(3)])
    assert calls == ["write", "fsync"]
    assert [s.id for s in read_manifest(tmp_path / "m.jsonl", resolve=False)] == ["s0", "s1", "s2"]


def test_synthesis_resumes_after_a_torn_manifest_line_with_the_set_of_an_uninterrupted_run(
        demo_arrays, tmp_path, caplog, capsys):
    torch.manual_seed(0)
    gen = build_generator(tiny_cfg("mask2image")).eval().save_pretrained(tmp_path / "g")
    kw = dict(masks_from=make_mask_source("jitter", pairs(demo_arrays), 32), sampling=SamplingConfig(steps=2),
              batch_size=2, seed=3,
              progress=False)
    synthesize(gen, tmp_path / "straight", 5, **kw)
    synthesize(gen, tmp_path / "torn", 5, **kw)
    manifest = tmp_path / "torn" / "manifest.jsonl"
    text = manifest.read_bytes()
    lines = text.splitlines(keepends=True)
    manifest.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while appending row 4
    (tmp_path / "torn" / "images" / "syn-mask2image-s3-000004.png").unlink()  # row 5 was never written
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        synthesize(gen, tmp_path / "torn", 5, **kw)
    assert any(str(manifest) in r.getMessage() and "torn" in r.getMessage() for r in caplog.records)
    assert "from sample 3 (3 of 5 already" in " ".join(capsys.readouterr().err.split())
    assert manifest.read_bytes() == (tmp_path / "straight" / "manifest.jsonl").read_bytes()
    for sub in ("images", "masks"):
        for p in sorted((tmp_path / "straight" / sub).iterdir()):
            assert (tmp_path / "torn" / sub / p.name).read_bytes() == p.read_bytes()
    assert all(json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines())
