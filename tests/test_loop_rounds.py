"""The closed loop's rounds (with a fake worker: no training) and its fairness rules (config checks)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from lesionforge.conditioning.masks import size_controlled_mask
from lesionforge.errors import ConfigError
from lesionforge.experiment.config import load_experiment_config
from lesionforge.loop.rounds import run_rounds, split_budget
from lesionforge.loop.settings import LoopSettings

SMOKE_LOOP = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke-loop.yaml"


def _diagnosis(small_failure: float) -> dict:
    def group(rate: float, n: int = 4) -> dict:
        return {"lesions": n, "missed": 0, "under": 0, "failed": round(rate * n), "failure_rate": rate,
                "weight_rate": rate}

    return {"grid": 3, "overall": {"lesions": 12, "failed": 4, "missed": 4, "under": 0, "failure_rate": 0.33,
                                   "miss_rate": 0.33},
            "by_band": {"small": group(small_failure), "medium": group(0.0), "large": group(0.0)},
            "by_cell": {f"r{r}c{c}": group(0.1) for r in range(3) for c in range(3)},
            "by_shape": {"round-convex": group(0.2)}, "by_appearance": {}, "by_subset": {},
            "uncertainty": {"pool": {"entropy": []}, "backgrounds": {"entropy": []}}}


class FakeWorker:
    """Records calls; writes a manifest of ``n`` rows per round; can fail once in a chosen round."""

    def __init__(self, fail_round: int | None = None):
        rng = np.random.default_rng(0)
        self.real_masks = np.stack([size_controlled_mask(rng, 32, a) for a in (0.03, 0.03, 0.1, 0.1)])
        self.fail_round, self.calls = fail_round, []

    def train(self, sets, out: Path, final: bool):
        self.calls.append(("train", out.parent.name, final, [s["round"] for s in sets]))
        return SimpleNamespace(best_checkpoint=out / "best", best_val_mdice=0.5)

    def diagnose(self, run, out: Path) -> dict:
        self.calls.append(("diagnose", out.name))
        return _diagnosis(1.0)

    def synthesize(self, r: int, plan: dict, diagnosis: dict, n: int, out: Path) -> dict:
        self.calls.append(("synthesize", r, n))
        if r == self.fail_round:
            self.fail_round = None
            raise KeyboardInterrupt  # the loop is stopped in the middle of round r
        (out / "synthetic").mkdir(parents=True, exist_ok=True)
        manifest = out / "synthetic" / "manifest.jsonl"
        manifest.write_text("".join(json.dumps({"id": f"r{r}-{i}"}) + "\n" for i in range(n)), encoding="utf-8")
        return {"manifest": str(manifest), "filtered": False, "n_generated": n, "n_kept": n}


def test_split_budget_spreads_the_total_and_refuses_too_few_pairs():
    assert split_budget(16, 2) == [8, 8] and split_budget(7, 3) == [3, 2, 2] and sum(split_budget(101, 4)) == 101
    with pytest.raises(ConfigError, match="cannot be split"):
        split_budget(2, 3)


def test_rounds_resume_at_the_round_they_were_in_and_keep_each_rounds_record(tmp_path):
    settings = LoopSettings(open_loop_arm="synthetic", rounds=3)
    worker = FakeWorker(fail_round=1)
    with pytest.raises(KeyboardInterrupt):
        run_rounds(tmp_path / "loop", settings, 10, worker, final_dir=tmp_path / "final", log=lambda _: None)
    done0 = tmp_path / "loop" / "round0" / "round.json"
    stamp = done0.stat().st_mtime_ns
    assert not (tmp_path / "loop" / "round1" / "round.json").exists()
    again = FakeWorker()
    run, summary = run_rounds(tmp_path / "loop", settings, 10, again, final_dir=tmp_path / "final",
                              log=lambda _: None)
    assert done0.stat().st_mtime_ns == stamp  # round 0 was not redone
    assert [c for c in again.calls if c[0] == "synthesize"] == [("synthesize", 1, 3), ("synthesize", 2, 3)]
    trains = [c for c in again.calls if c[0] == "train"]
    assert trains[0][3] == [0] and trains[-1] == ("train", tmp_path.name, True, [0, 1, 2])  # final: every set
    assert summary["budgets"] == [4, 3, 3] and summary["n_generated"] == 10 and summary["targeted_bands"] == ["small"]
    for r in range(3):
        rdir = tmp_path / "loop" / f"round{r}"
        rec = json.loads((rdir / "round.json").read_text())
        assert rec["round"] == r and rec["targeted"]["bands"] == ["small"]
        assert rec["trained_on_rounds"] == list(range(r))
        assert (rdir / "diagnosis.json").is_file() and (rdir / "diagnosis.png").is_file()
        cond = json.loads((rdir / "conditions.json").read_text())
        assert cond["band_shares"]["medium"] >= cond["band_natural_shares"]["medium"] / settings.max_gain - 1e-9
    assert (tmp_path / "loop" / "final" / "diagnosis.png").is_file()
    with pytest.raises(ConfigError, match="other settings"):  # a loop folder is not reused with other settings
        run_rounds(tmp_path / "loop", settings.model_copy(update={"max_gain": 3.0}), 10, FakeWorker(),
                   final_dir=tmp_path / "final")


def _config(tmp_path: Path, **closed) -> Path:
    cfg = yaml.safe_load(SMOKE_LOOP.read_text(encoding="utf-8"))
    cfg["arms"][2].update(closed)
    cfg["generators"]["inpaint"]["n_per_real"] = 1  # 8 synthetic pairs at N = 8
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def test_smoke_loop_config_is_fair_and_unfair_variants_are_refused(tmp_path):
    cfg = load_experiment_config(SMOKE_LOOP)
    arm = cfg.arm("closed-loop")
    assert arm.loop.open_loop_arm == "synthetic" and arm.loop.rounds == 2
    from lesionforge.experiment.budget import segment_config_for
    from lesionforge.experiment.loop_arm import fairness

    fair = fairness(cfg, arm, 8, segment_config_for(cfg, arm, 0))
    assert fair["synthetic_requested"] == fair["open_loop_synthetic_requested"] == 16
    assert fair["final_steps"] == fair["open_loop_steps"] == 12
    for change, message in (({"mixing": {"mode": "ratio", "ratio": 2}}, "mixing differ"),
                            ({"filtered": False}, "filtered differ"),
                            ({"loop": {"open_loop_arm": "baseline"}}, "must name a synthetic arm"),
                            ({"loop": {"open_loop_arm": "synthetic", "rounds": 10}}, "fewer synthetic pairs"),
                            ({"loop": None}, "`loop` settings are required")):
        with pytest.raises(ConfigError, match=message):
            load_experiment_config(_config(tmp_path, **change))



def test_loop_command_refuses_a_config_without_a_closed_loop_arm_in_one_line(monkeypatch, capsys):
    import sys

    from lesionforge.cli import main

    monkeypatch.setattr(sys, "argv", ["lesionforge", "loop", str(SMOKE_LOOP.with_name("smoke.yaml"))])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no closed-loop arm" not in err and "0 closed-loop arms" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_arms_without_loop_settings_dump_as_before_and_closed_loop_arms_keep_theirs(tmp_path):
    from lesionforge.config import save_config

    plain = load_experiment_config(SMOKE_LOOP.with_name("smoke.yaml")).model_dump(mode="json")
    assert all("loop" not in a for a in plain["arms"])  # the config hashes of existing results are unchanged
    cfg = load_experiment_config(SMOKE_LOOP)
    dumped = cfg.model_dump(mode="json")["arms"]
    assert "loop" not in dumped[0] and dumped[2]["loop"]["open_loop_arm"] == "synthetic"
    save_config(cfg, tmp_path / "again.yaml")
    assert load_experiment_config(tmp_path / "again.yaml").arm("closed-loop").loop == cfg.arm("closed-loop").loop


@pytest.mark.parametrize("dataset, n", [("kvasir-seg", 32), ("busi", 64)])
def test_real_data_loop_configs_share_the_headline_sweeps_runs_and_keep_the_same_share(dataset, n):
    """The loop configs reuse the headline sweep's baseline and open-loop runs, generator and set (same output
    folder, same arm, generator and segmentation settings), so only the closed-loop arm runs; its rounds keep the
    open loop's share of the draws (2 of 8 per labelled pair), so both arms train on as many kept pairs."""
    from lesionforge.experiment.budget import segment_config_for
    from lesionforge.experiment.loop_arm import fairness, keep_share

    configs = SMOKE_LOOP.parent
    loop = load_experiment_config(configs / f"{dataset}-loop-cpu.yaml")
    head = load_experiment_config(configs / f"{dataset}-cpu.yaml")
    assert loop.n_labelled == [n] and n in head.n_labelled and loop.output == head.output
    same = ("dataset", "profile", "seeds", "segment", "miss_fraction", "bootstrap_samples")
    assert {k: getattr(loop, k) for k in same} == {k: getattr(head, k) for k in same}
    assert loop.generators["inpaint"] == head.generators["inpaint"]
    for name in ("baseline", "synthetic"):
        assert loop.arm(name) == head.arm(name)
        assert segment_config_for(loop, loop.arm(name), 0) == segment_config_for(head, head.arm(name), 0)
    assert loop.results_dir != head.results_dir  # its own result file, beside the headline's
    arm = loop.arm("closed-loop")
    fair = fairness(loop, arm, n, segment_config_for(loop, arm, 0))
    assert fair["synthetic_requested"] == 8 * n and fair["keep_share"] == keep_share(loop.generators["inpaint"]) == 0.25
    # an open-loop filter given as a share (size-controlled masks have no source pair to count per) is kept as is
    spec = loop.generators["inpaint"]
    shared = spec.model_copy(update={"filter": spec.filter.model_copy(update={"keep_best": None, "keep_share": 0.3})})
    assert keep_share(shared) == 0.3
