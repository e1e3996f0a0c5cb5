"""End to end on the demo data with tiny models: `lesionforge loop` runs 2 rounds, is stopped and resumes, and
the closed-loop arm then sits in the sweep's result next to the open-loop synthetic arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lesionforge.cli import app

SMOKE_LOOP = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke-loop.yaml"


@pytest.mark.slow
def test_loop_runs_two_rounds_resumes_and_reports_next_to_open_loop(tmp_path, monkeypatch):
    from lesionforge.experiment.loop_arm import ExperimentLoopWorker

    cfg = yaml.safe_load(SMOKE_LOOP.read_text(encoding="utf-8"))
    cfg.update(output="runs", results_dir="results", seeds=[0])  # one seed keeps the test short
    config = tmp_path / "smoke-loop.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    loop = tmp_path / "runs" / "n8" / "closed-loop" / "seed0" / "loop"

    real_synthesize = ExperimentLoopWorker.synthesize

    def stop_in_round_1(self, r, *args, **kwargs):
        if r == 1:
            raise KeyboardInterrupt  # the loop is killed during round 1's synthesis
        return real_synthesize(self, r, *args, **kwargs)

    runner = CliRunner()
    with monkeypatch.context() as m:
        m.setattr(ExperimentLoopWorker, "synthesize", stop_in_round_1)
        stopped = runner.invoke(app, ["loop", str(config)])
    assert stopped.exit_code != 0 and (loop / "round0" / "round.json").is_file()
    assert not (loop / "round1" / "round.json").exists()
    round0 = (loop / "round0" / "round.json").stat().st_mtime_ns
    seg0 = (loop / "round0" / "segmenter" / "run.json").stat().st_mtime_ns

    out = runner.invoke(app, ["loop", str(config)])
    assert out.exit_code == 0, out.output
    assert "round" in out.output and "final" in out.output
    assert (loop / "round0" / "round.json").stat().st_mtime_ns == round0  # resumed at round 1, round 0 kept
    assert (loop / "round0" / "segmenter" / "run.json").stat().st_mtime_ns == seg0
    total = 0
    for r in (0, 1):
        rec = json.loads((loop / f"round{r}" / "round.json").read_text())
        assert rec["round"] == r and rec["n_requested"] == 8 and rec["trained_on_rounds"] == list(range(r))
        diag = json.loads((loop / f"round{r}" / "diagnosis.json").read_text())
        assert diag["n_val_images"] == 8 and set(diag["by_band"]) == {"small", "medium", "large"}
        assert diag["uncertainty"]["backgrounds"]["n"] > 0 and diag["uncertainty"]["pool"]["n"] > 0
        assert (loop / f"round{r}" / "diagnosis.png").stat().st_size > 1000
        rows = [json.loads(x) for x in (loop / f"round{r}" / "synthetic" / "manifest.jsonl").read_text().splitlines()]
        assert len(rows) == 8 and all(x["provenance"]["mask_info"]["loop_round"] == r for x in rows)
        # the open loop keeps the better of each pair's 2 draws; a round keeps the same half of its draws
        assert rec["filter"]["keep_share"] == 0.5 and 0 < rec["n_kept"] <= 4
        total += rec["n_generated"]
    assert total == 16  # the open-loop arm's 2 x N, split over the rounds

    run = loop.parent / "run.json"
    stamp = run.stat().st_mtime_ns
    sweep = runner.invoke(app, ["experiment", "run", str(config), "--no-report"])
    assert sweep.exit_code == 0, sweep.output
    assert run.stat().st_mtime_ns == stamp  # the sweep reused the loop's run
    res = json.loads((tmp_path / "results" / "demo-loop-n8-tiny.json").read_text(encoding="utf-8"))
    assert set(res["arms"]) == {"baseline", "synthetic", "closed-loop"}
    arm = res["arms"]["closed-loop"]
    assert arm["kind"] == "closed-loop" and arm["n_generated"] == [16] and len(arm["rounds"][0]) == 2
    assert arm["fairness"][0]["synthetic_requested"] == res["generators"]["inpaint"]["n_generated"] == 16
    assert arm["fairness"][0]["final_steps"] == res["steps"] == 12
    cl = res["closed_loop"]["closed-loop"]
    assert cl["open_loop_arm"] == "synthetic" and set(cl["miss_rate_targeted"]) == {"closed-loop", "synthetic",
                                                                                    "baseline"}
    assert set(cl["miss_rate_targeted_pooled"]["synthetic"]) == {"missed", "lesions", "miss_rate"}
    assert "mdice" in cl["paired_vs_open_loop"] and "closed-loop" in res["paired_diff"]


@pytest.mark.slow
def test_a_loop_steering_what_it_keeps_draws_as_open_loop_and_keeps_the_same_count(tmp_path):
    cfg = yaml.safe_load(SMOKE_LOOP.read_text(encoding="utf-8"))
    cfg.update(output="runs", results_dir="results", seeds=[0])
    cfg["arms"][2]["loop"]["steer_by"] = "keep"
    config = tmp_path / "smoke-loop-keep.yaml"
    config.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    out = CliRunner().invoke(app, ["loop", str(config)])
    assert out.exit_code == 0, out.output
    loop = tmp_path / "runs" / "n8" / "closed-loop" / "seed0" / "loop"
    for r in (0, 1):
        rdir = loop / f"round{r}"
        rec = json.loads((rdir / "round.json").read_text())
        plan = json.loads((rdir / "conditions.json").read_text())
        assert plan["steer_by"] == "keep" and rec["background_shares"] is None
        assert rec["steered"] and all(s.startswith("kept pairs by") for s in rec["steered"])
        rows = [json.loads(x) for x in (rdir / "synthetic" / "manifest.jsonl").read_text().splitlines()]
        prov = [x["provenance"] for x in rows]
        # drawn by the open loop's own mask source (jittered labelled masks), tagged with the round
        assert all(p["mask_source"] == "jitter" and p["mask_info"]["loop_round"] == r for p in prov)
        kept = [json.loads(x) for x in (rdir / "filtered.jsonl").read_text().splitlines()]
        val = [x["provenance"]["validation"] for x in kept if x["origin"] == "synthetic"]
        assert all(v["keep_weighted"] for v in val) and sum(v["kept"] for v in val) == rec["n_kept"] == 4
        assert set(rec["kept_by_band"]) <= {"small", "medium", "large"}
        assert sum(b["made"] for b in rec["kept_by_band"].values()) == pytest.approx(1.0)
