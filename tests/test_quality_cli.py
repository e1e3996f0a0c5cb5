"""The quality / memorization commands on manifests (synthetic rows built from the demo dataset)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from lesionforge.cli import quality as quality_cli
from lesionforge.data.manifest import Provenance, read_manifest, write_manifest
from lesionforge.errors import DataError


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    quality_cli.register(app, app)  # the train group's commands land beside the others here
    return app


def copied_demo_rows(demo_root: Path, dest_root: Path, n: int) -> list:
    """The first ``n`` labelled demo rows, their files copied into ``dest_root`` and their paths relative to it
    (a manifest's rows may not name files outside its folder)."""
    real = [s for s in read_manifest(demo_root / "manifest.jsonl") if s.has_mask][:n]
    for s in real:
        for f in (s.image, *s.masks):
            dest = dest_root / Path(f).relative_to(demo_root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return [s.model_copy(update={"image": str(Path(s.image).relative_to(demo_root)),
                                 "masks": [str(Path(m).relative_to(demo_root)) for m in s.masks]}) for s in real]


@pytest.fixture()
def synthetic_manifest(demo_root, tmp_path):
    """Ten 'synthetic' rows that are copies of real demo files; 7 kept by the filter, 3 rejected."""
    real = copied_demo_rows(demo_root, tmp_path, 10)
    rows = [
        s.model_copy(update={"id": f"syn_{i}", "origin": "synthetic", "provenance": Provenance(
            validation={"dice": 0.9 if i < 7 else 0.1, "kept": i < 7, "threshold": 0.5})})
        for i, s in enumerate(real)
    ]
    return write_manifest(tmp_path / "synthetic.jsonl", [*real[:2], *rows])  # real rows are ignored


def test_quality_command_scores_kept_synthetic_rows(app, demo_root, synthetic_manifest, tmp_path):
    out = tmp_path / "quality"
    res = CliRunner().invoke(app, [
        "quality", "--real", str(demo_root / "manifest.jsonl"), "--synthetic", str(synthetic_manifest),
        "--extractor", "pixels:4", "--out", str(out), "--profile", "tiny", "--real-split", "",
        "--kid-subsets", "5", "--msssim-pairs", "10"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "quality.json").read_text(encoding="utf-8"))
    assert report["n_synthetic"] == 7 and report["n_real"] == 40 and report["resolution"] == 32
    assert report["mask_fidelity"]["acceptance_rate"] == pytest.approx(0.7)
    assert report["mask_fidelity"]["dice_rejected"]["mean"] == pytest.approx(0.1)
    assert "FID" in res.output


def test_memorization_command_flags_copies(app, demo_root, synthetic_manifest, tmp_path):
    out = tmp_path / "mem"
    res = CliRunner().invoke(app, [
        "memorization", "--train", str(demo_root / "manifest.jsonl"), "--synthetic", str(synthetic_manifest),
        "--extractor", "pixels", "--out", str(out), "--profile", "tiny", "--train-split", ""])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "memorization.json").read_text(encoding="utf-8"))
    assert report["n_synthetic"] == 10 and report["flagged_share"] == 1.0  # every row copies a training file
    assert (out / "memorization_flagged.png").is_file()


def test_commands_name_the_bad_manifest(app, demo_root, tmp_path):
    res = CliRunner().invoke(app, [
        "quality", "--real", str(demo_root / "manifest.jsonl"), "--synthetic", str(tmp_path / "nope.jsonl"),
        "--extractor", "pixels", "--out", str(tmp_path / "q"), "--profile", "tiny", "--real-split", ""])
    assert isinstance(res.exception, DataError) and "nope.jsonl" in str(res.exception)
    res = CliRunner().invoke(app, [
        "quality", "--real", str(demo_root / "manifest.jsonl"), "--synthetic", str(demo_root / "manifest.jsonl"),
        "--extractor", "pixels", "--out", str(tmp_path / "q2"), "--profile", "tiny"])
    assert isinstance(res.exception, DataError) and "split='test'" in str(res.exception)
