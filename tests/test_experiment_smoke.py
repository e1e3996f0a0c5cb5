"""End to end: `lesionforge experiment run` on the demo data with the real stages, then resume and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lesionforge.cli import app

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke.yaml"


@pytest.mark.slow
def test_smoke_sweep_runs_resumes_and_reports(tmp_path):
    from lesionforge.data.demo import write_demo_dataset

    other = write_demo_dataset(tmp_path / "other", n=10, size=32, seed=7)  # a "transfer" dataset
    cfg = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    cfg.update(output="runs", results_dir="results", seeds=[0, 1],  # 2 seeds keep the test short
               transfer=[{"name": "other", "root": "other/manifest.jsonl"}])
    (tmp_path / "smoke.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    runner = CliRunner()
    out = runner.invoke(app, ["experiment", "run", str(tmp_path / "smoke.yaml")])
    assert out.exit_code == 0, out.output
    res = json.loads((tmp_path / "results" / "demo-n8-tiny.json").read_text(encoding="utf-8"))
    assert set(res["arms"]) == {"baseline", "copy-paste", "synthetic"}
    assert all(0 <= d <= 1 for a in res["arms"].values() for d in a["mdice"])
    assert res["generators"]["inpaint"]["n_generated"] == 8  # n_per_real 1 x N 8
    assert res["arms"]["synthetic"]["n_synthetic"] == res["generators"]["inpaint"]["n_kept"]
    report = (tmp_path / "results" / "demo-n8-tiny.md").read_text(encoding="utf-8")
    assert "## Transfer" in report
    q = res["arms"]["synthetic"]["synthetic_quality"]  # quality and memorization of the set the arm used
    assert q["n_synthetic"] == res["arms"]["synthetic"]["n_synthetic"]
    assert {"fid", "kid", "kid_std", "ms_ssim", "ms_ssim_real"} <= set(q) and q["fid"] >= 0
    assert set(q["mask_stats"]) == {"real", "synthetic"} and q["mask_stats"]["synthetic"]["n"] == q["n_synthetic"]
    assert 0 <= q["memorization"]["flagged_share"] <= 1 and q["memorization"]["extractor"] == q["extractor"]
    assert not any("synthetic_quality" in res["arms"][a] for a in ("baseline", "copy-paste"))
    assert "## Synthetic set quality and memorization" in report and "| synthetic |" in report
    cached = sorted((tmp_path / "runs" / "cache").glob("synthetic-*/quality-*.json"))
    assert len(cached) == 1
    cached_stamp = cached[0].stat().st_mtime_ns
    transfer = res["transfer"]["other"]
    assert set(transfer) == set(res["arms"]) and all(len(v["mdice"]) == 2 for v in transfer.values())
    assert other.is_dir()
    runs = sorted((tmp_path / "runs").glob("n8/*/seed*/run.json"))
    assert len(runs) == 6
    stamps = [p.stat().st_mtime_ns for p in runs]
    again = runner.invoke(app, ["experiment", "run", str(tmp_path / "smoke.yaml"), "--no-report"])
    assert again.exit_code == 0, again.output
    assert [p.stat().st_mtime_ns for p in runs] == stamps  # finished runs were skipped, not redone
    assert cached[0].stat().st_mtime_ns == cached_stamp  # the set's quality was read back, not recomputed
    res2 = json.loads((tmp_path / "results" / "demo-n8-tiny.json").read_text(encoding="utf-8"))
    assert res2["arms"] == res["arms"] and res2["paired_diff"] == res["paired_diff"]
