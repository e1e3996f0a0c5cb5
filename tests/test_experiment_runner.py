"""The experiment runner with fake stages: result schema, resume, identical budgets, caching, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Provenance, Sample, write_manifest
from lesionforge.data.splits import BenchmarkSplit
from lesionforge.errors import ConfigError, DataError, OverwriteError
from lesionforge.experiment.budget import budget_of, segment_config_for
from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.records import BANDS
from lesionforge.experiment.report import load_result, readme_table, write_report
from lesionforge.experiment.runner import run_experiment
from lesionforge.experiment.stages import ExperimentData, SyntheticSet

CONFIGS = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
GAIN = {"baseline": 0.0, "copy-paste": 0.02, "synthetic": 0.06, "synthetic-again": 0.06}


class FakeStages:
    """Counts calls; run_arm scores each test image as a fixed function of (image, arm, seed)."""

    def __init__(self, demo_arrays, fail_after: int | None = None):
        self.demo = demo_arrays
        self.fail_after = fail_after
        self.run_calls: list[tuple[int, str, int, dict]] = []
        self.synth_calls: list[tuple[int, str]] = []

    def load_data(self, cfg) -> ExperimentData:
        d = self.demo
        arrays = PairArrays(d.images, d.masks, np.ones(len(d.ids), bool), list(d.ids), [None] * len(d.ids))
        ids = list(d.ids)
        split = BenchmarkSplit(train=ids[:16], val=ids[16:22], test=ids[22:32],
                               low_data_subsets={4: ids[:4], 8: ids[:8]}, normal_backgrounds=ids[32:])
        return ExperimentData(split, arrays.select_ids(split.train), arrays.select_ids(split.val),
                              arrays.select_ids(split.test), backgrounds=arrays.select_ids(ids[32:]),
                              subsets={"flat": ids[22:27]})

    def prepare_synthetic(self, cfg, name, spec, n, data, work_dir: Path) -> SyntheticSet:
        self.synth_calls.append((n, name))
        rows = []
        for i in range(2):
            img, msk = work_dir / f"s{i}.png", work_dir / f"s{i}_mask.png"
            write_image(img, data.labelled(n).images[i])
            write_mask(msk, data.labelled(n).masks[i])
            rows.append(Sample(id=f"syn{i}", image=str(img), masks=[str(msk)], origin="synthetic",
                               provenance=Provenance(source_id=data.labelled(n).ids[i],
                                                     validation={"kept": True, "dice": 0.9})))
        write_manifest(work_dir / "manifest.jsonl", rows)
        return SyntheticSet(work_dir / "manifest.jsonl", None, {"n_generated": 2, "n_kept": 2})

    def run_arm(self, cfg, arm, segment_config, n, data, synthetic, run_dir: Path) -> dict:
        if self.fail_after is not None and len(self.run_calls) >= self.fail_after:
            raise KeyboardInterrupt  # an interrupted sweep
        self.run_calls.append((n, arm.name, segment_config["seed"], segment_config))
        assert (synthetic is not None) == (arm.kind == "synthetic")
        seed = segment_config["seed"]
        ids = list(data.test.ids)
        noise = np.random.default_rng([seed, n]).normal(0, 0.01, len(ids))
        dice = [float(0.5 + 0.01 * k % 0.3 + GAIN[arm.name] + e) for k, e in enumerate(noise)]
        miss = {"small": 0.5 - GAIN[arm.name], "medium": 0.2, "large": None}
        small_missed = 0 if arm.name == "synthetic" else 1  # of 2 small lesions per image
        bands = {"band_missed": {"small": [small_missed] * len(ids), "medium": [0] * len(ids), "large": [0] * len(ids)},
                 "band_lesions": {"small": [2] * len(ids), "medium": [1] * len(ids), "large": [0] * len(ids)}}
        return {"ids": ids, "dice": dice, "iou": [x * 0.8 for x in dice], "missed": [small_missed] * len(ids),
                "lesions": [3] * len(ids), **bands, "mdice": float(np.mean(dice)), "miou": float(np.mean(dice)) * 0.8,
                "miss_rate": 0.5, "miss_rate_by_band": miss, "best_val_mdice": 0.6, "timings": {"train_s": 1.0}}


@pytest.fixture()
def cfg(tmp_path):
    over = {"output": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"), "n_labelled": [4, 8]}
    return load_experiment_config(CONFIGS / "smoke.yaml", over)


def test_result_json_follows_protocol_schema(cfg, demo_arrays):
    paths = run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    assert [p.name for p in paths] == ["demo-n4-tiny.json", "demo-n8-tiny.json"]
    res = json.loads(paths[0].read_text(encoding="utf-8"))
    for key, typ in [("dataset", str), ("n_labelled", int), ("profile", str), ("resolution", int),
                     ("code_version", str), ("steps", int), ("seeds", list), ("arms", dict), ("paired_diff", dict)]:
        assert isinstance(res[key], typ), key
    assert (res["dataset"], res["n_labelled"], res["profile"], res["resolution"]) == ("demo", 4, "tiny", 32)
    assert res["steps"] == cfg.segment.steps and res["seeds"] == [0, 1, 2]
    assert set(res["arms"]) == {"baseline", "copy-paste", "synthetic"}
    for arm in res["arms"].values():
        for metric in ("mdice", "miou", "miss_rate"):
            assert len(arm[metric]) == 3 and all(isinstance(v, float) for v in arm[metric])
        assert set(arm["miss_rate_by_band"]) == set(BANDS)
        assert all(len(v) == 3 for v in arm["miss_rate_by_band"].values())
    syn = res["arms"]["synthetic"]
    assert (syn["method"], syn["ratio"], syn["filtered"]) == ("inpaint-normal", 1.0, True)
    assert set(res["paired_diff"]) == {"copy-paste", "synthetic"}
    d = res["paired_diff"]["synthetic"]["mdice"]
    assert d["mean"] == pytest.approx(0.06, abs=1e-9)  # the fake's exact paired gain
    assert d["ci95"][0] <= 0.06 <= d["ci95"][1]
    assert "over_seeds" in d and "miss_rate" in res["paired_diff"]["synthetic"]
    assert res["test_lesions_by_band"] == {"small": 20, "medium": 10, "large": 0}
    small = res["paired_diff"]["synthetic"]["miss_rate_small"]
    assert small["mean"] == pytest.approx(-0.5) and small["relative_pct"] == pytest.approx(-100.0)
    assert "miss_rate_large" not in res["paired_diff"]["synthetic"]  # no large lesions: no difference to state
    flat = res["paired_diff"]["synthetic"]["subsets"]["flat"]
    assert flat["mdice"]["n_images"] == 5 and flat["mdice"]["mean"] == pytest.approx(0.06)
    assert res["generators"]["inpaint"]["n_kept"] == 2
    # the synthetic arm is also compared, paired by image, with the copy-paste arm it must beat
    assert set(res["paired_vs_copy_paste"]) == {"copy-paste"}
    vs_cp = res["paired_vs_copy_paste"]["copy-paste"]
    assert set(vs_cp) == {"synthetic"}
    assert vs_cp["synthetic"]["mdice"]["mean"] == pytest.approx(GAIN["synthetic"] - GAIN["copy-paste"], abs=1e-9)
    # where the runs ran: one machine here, every run of every arm on it; each run record keeps its own
    from lesionforge.devices import machine_facts

    here = {k: v for k, v in machine_facts().items() if k not in ("host", "torch_threads")}
    assert res["machines"] == [{"machine": here, "runs": 9, "arms": {a: [0, 1, 2] for a in res["arms"]}}]
    rec = json.loads((cfg.output / "n4" / "baseline" / "seed0" / "run.json").read_text(encoding="utf-8"))
    assert rec["machine"]["cpu_count"] >= 1 and rec["machine"]["torch"] == here["torch"]


def test_interrupted_sweep_resumes_without_redoing_finished_runs(cfg, demo_arrays):
    first = FakeStages(demo_arrays, fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, first, progress=False)
    assert len(first.run_calls) == 4
    second = FakeStages(demo_arrays)
    run_experiment(cfg, second, progress=False)
    total = len(cfg.n_labelled) * len(cfg.seeds) * len(cfg.arms)
    assert len(second.run_calls) == total - 4
    done = {(n, a, s) for n, a, s, _ in first.run_calls}
    assert not done & {(n, a, s) for n, a, s, _ in second.run_calls}
    # the synthetic set of N=4 was made before the interruption and is reused, not remade
    assert first.synth_calls == [(4, "inpaint")] and second.synth_calls == [(8, "inpaint")]
    third = FakeStages(demo_arrays)
    run_experiment(cfg, third, progress=False)
    assert third.run_calls == [] and third.synth_calls == []


def test_every_arm_gets_the_same_budget(cfg, demo_arrays):
    fake = FakeStages(demo_arrays)
    run_experiment(cfg, fake, progress=False)
    budgets = {json.dumps(budget_of(c), sort_keys=True) for *_, c in fake.run_calls}
    assert len(budgets) == 1
    b = json.loads(budgets.pop())
    assert (b["steps"], b["batch_size"], b["lr"], b["network"]) == (12, 4, 0.003, "BasicUNet")
    by_arm = {a: c for _, a, _, c in fake.run_calls}
    assert by_arm["baseline"]["mixing"] == {"mode": "none"} and not by_arm["baseline"]["copy_paste"]["enabled"]
    assert by_arm["copy-paste"]["copy_paste"]["enabled"]
    assert by_arm["synthetic"]["mixing"]["mode"] == "ratio"


def test_synthetic_arm_can_add_copy_paste_on_the_same_budget(tmp_path):
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8")
    old = "generator: inpaint, mixing: {mode: ratio, ratio: 1}"
    assert old in text
    (tmp_path / "both.yaml").write_text(text.replace(old, old + ", copy_paste: {prob: 0.5}", 1), encoding="utf-8")
    cfg = load_experiment_config(tmp_path / "both.yaml")
    syn = next(a for a in cfg.arms if a.kind == "synthetic")
    seg = segment_config_for(cfg, syn, 0)
    assert seg["copy_paste"]["enabled"] and seg["mixing"]["mode"] == "ratio"
    assert budget_of(seg) == budget_of(segment_config_for(cfg, cfg.arm("baseline"), 0))
    (tmp_path / "bad.yaml").write_text(text.replace("kind: baseline}", "kind: baseline, copy_paste: {}}"),
                                       encoding="utf-8")
    with pytest.raises(ConfigError, match="copy-paste and synthetic arms"):
        load_experiment_config(tmp_path / "bad.yaml")


def test_arm_cannot_carry_its_own_budget(tmp_path):
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8").replace("kind: baseline}", "kind: baseline, steps: 99}")
    (tmp_path / "bad.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="steps"):
        load_experiment_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(("old", "new", "message"), [
    ("generator: inpaint, mixing", "mixing", "generator"),
    ("mixing: {mode: ratio", "mixing: {mode: patch-merge", "edge-guided"),
    ("  demo: {n: 40", "  root: data\n  demo: {n: 40", "exactly one"),
    ("baseline, kind: baseline", "base, kind: baseline", "baseline_arm"),
])
def test_inconsistent_configs_are_refused(tmp_path, old, new, message):
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8")
    assert old in text
    (tmp_path / "bad.yaml").write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_experiment_config(tmp_path / "bad.yaml")


def test_changed_settings_are_not_mixed_into_a_resumed_sweep(cfg, demo_arrays):
    run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    changed = cfg.model_copy(update={"segment": cfg.segment.model_copy(update={"steps": 13})})
    with pytest.raises(ConfigError, match="different segmentation settings"):
        run_experiment(changed, FakeStages(demo_arrays), progress=False)
    with pytest.raises(OverwriteError):
        run_experiment(cfg, FakeStages(demo_arrays), resume=False, progress=False)


def test_report_is_rebuilt_from_the_json_alone(cfg, demo_arrays, tmp_path):
    paths = run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    md = write_report(paths[1], tmp_path / "report")
    text = md.read_text(encoding="utf-8")
    for name in ("demo-n8-tiny-mdice-vs-n.png", "demo-n8-tiny-miss-by-band.png", "demo-n8-tiny-samples.png"):
        assert (tmp_path / "report" / name).stat().st_size > 1000
        assert name in text
    res = load_result(paths[1])
    assert f"{np.mean(res['arms']['synthetic']['mdice']):.3f}" in text
    assert "| flat | synthetic | +0.060 [+0.060, +0.060]" in text  # the subset's own paired difference
    assert "| arm − copy-paste |" in text and "| synthetic | +0.040 [+0.040, +0.040]" in text
    assert f"Machines: {res['machines'][0]['machine']['processor']}" in text and ": 9 runs" in text
    table = readme_table(paths)
    assert table.count("\n") == 2 + 2 * 3 - 1
    assert "demo-n4-tiny.json" in table and f"{res['paired_diff']['synthetic']['mdice']['mean']:+.3f}" in table
    assert "| +0.040 [+0.040, +0.040] (+" in table  # the synthetic arm against copy-paste


def test_bad_result_file_is_named(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"dataset": "demo"}', encoding="utf-8")
    with pytest.raises(DataError, match="x.json"):
        load_result(bad)


@pytest.mark.parametrize("name", ["smoke.yaml", "kvasir-seg-cpu.yaml", "busi-cpu.yaml"])
def test_benchmark_configs_validate(name):
    from lesionforge.segment.config import SegmentConfig

    cfg = load_experiment_config(CONFIGS / name)
    assert cfg.baseline_arm == "baseline" and len(cfg.seeds) >= 3
    runs = [SegmentConfig.model_validate(segment_config_for(cfg, arm, 0)) for arm in cfg.arms]
    assert len({(r.steps, r.batch_size, r.lr, r.network, r.features, r.val_interval) for r in runs}) == 1
    assert [r.copy_paste.enabled for r in runs] == [a.uses_copy_paste for a in cfg.arms]
    if name != "smoke.yaml":
        assert cfg.resolution == 64 and cfg.segment.steps == 2000 and cfg.segment.batch_size == 16
        assert cfg.segment.features == [16, 32, 64, 128, 256, 16]
        assert {a.kind for a in cfg.arms} == {"baseline", "copy-paste", "synthetic"}


def test_one_regime_at_a_time_gives_the_whole_sweeps_results(cfg, demo_arrays):
    whole = run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    whole_res = [json.loads(p.read_text(encoding="utf-8")) for p in whole]
    again = cfg.model_copy(update={"output": cfg.output.parent / "again", "results_dir": cfg.results_dir.parent / "r2"})
    stages = FakeStages(demo_arrays)
    first = run_experiment(again, stages, progress=False, only_n=[8])
    assert [p.name for p in first] == ["demo-n8-tiny.json"]
    assert {n for n, *_ in stages.run_calls} == {8} and stages.synth_calls == [(8, "inpaint")]
    second = run_experiment(again, FakeStages(demo_arrays), progress=False, only_n=[4])
    for p, res in zip(sorted(second + first), whole_res, strict=True):
        part = json.loads(p.read_text(encoding="utf-8"))
        assert part["config_hash"] == res["config_hash"]
        assert part["paired_diff"]["synthetic"]["mdice"]["mean"] == res["paired_diff"]["synthetic"]["mdice"]["mean"]
    with pytest.raises(ConfigError, match=r"N = \[16\]"):
        run_experiment(again, FakeStages(demo_arrays), progress=False, only_n=[16])


def test_a_sweep_done_arm_by_arm_writes_the_whole_sweeps_result_once_every_run_is_finished(cfg, demo_arrays):
    whole = json.loads(run_experiment(cfg, FakeStages(demo_arrays), progress=False, only_n=[4])[0].read_text())
    again = cfg.model_copy(update={"output": cfg.output.parent / "again", "results_dir": cfg.results_dir.parent / "r2"})
    real = FakeStages(demo_arrays)
    assert run_experiment(again, real, progress=False, only_n=[4], only_arms=["baseline", "copy-paste"]) == []
    assert {a for _, a, *_ in real.run_calls} == {"baseline", "copy-paste"} and real.synth_calls == []
    assert not again.results_dir.exists() or not any(again.results_dir.iterdir())
    rest = FakeStages(demo_arrays)
    paths = run_experiment(again, rest, progress=False, only_n=[4], only_arms=["synthetic"])
    assert {a for _, a, *_ in rest.run_calls} == {"synthetic"}  # the finished real-data runs were not redone
    part = json.loads(paths[0].read_text(encoding="utf-8"))
    assert part["config_hash"] == whole["config_hash"] and part["arms"].keys() == whole["arms"].keys()
    assert part["paired_diff"]["synthetic"]["mdice"] == whole["paired_diff"]["synthetic"]["mdice"]
    with pytest.raises(ConfigError, match="--arm 'synthetc': not an arm of this config"):
        run_experiment(again, FakeStages(demo_arrays), progress=False, only_arms=["synthetc"])


def _smoke_with(tmp_path, old: str, new: str, name: str = "cfg.yaml"):
    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8")
    assert old in text
    (tmp_path / name).write_text(text.replace(old, new, 1), encoding="utf-8")
    over = {"output": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"), "n_labelled": [4, 8]}
    return load_experiment_config(tmp_path / name, over)


def test_an_arm_measured_at_some_n_only_is_run_and_reported_there_only(tmp_path, demo_arrays):
    synthetic = "{name: synthetic, kind: synthetic,"
    cfg = _smoke_with(tmp_path, synthetic, "{name: synthetic, n_labelled: [8], kind: synthetic,")
    stages = FakeStages(demo_arrays)
    paths = run_experiment(cfg, stages, progress=False)
    runs = {(n, a) for n, a, *_ in stages.run_calls}
    assert runs == {(4, "baseline"), (4, "copy-paste"), (8, "baseline"), (8, "copy-paste"), (8, "synthetic")}
    assert stages.synth_calls == [(8, "inpaint")]  # no generator is trained for an N that no arm of it needs
    n4, n8 = (json.loads(p.read_text(encoding="utf-8")) for p in sorted(paths))
    assert (n4["n_labelled"], n8["n_labelled"]) == (4, 8)
    assert set(n4["arms"]) == {"baseline", "copy-paste"} and "synthetic" in n8["arms"]
    assert "synthetic" not in n4["paired_diff"] and not n4["generators"]
    assert n8["paired_vs_copy_paste"]["copy-paste"]["synthetic"]["mdice"]["mean"] > 0
    assert n4["config_hash"] == n8["config_hash"]  # one sweep, one config
    # resumed: nothing is redone, and the runs of N = 8 pack and unpack as runs of this config
    again = FakeStages(demo_arrays)
    run_experiment(cfg, again, progress=False)
    assert again.run_calls == []
    from lesionforge.experiment.carry import pack_runs, unpack_runs

    assert pack_runs(cfg, tmp_path / "pack.json") == 5 * len(cfg.seeds)
    moved = cfg.model_copy(update={"output": tmp_path / "elsewhere"})
    assert unpack_runs(moved, tmp_path / "pack.json") == (5 * len(cfg.seeds), 0)
    # the field is left out of dumps while unset: configs written before it keep their hashes
    assert "n_labelled" not in cfg.arms[0].model_dump() and cfg.arms[2].model_dump()["n_labelled"] == [8]


def test_a_synthetic_arm_that_leaves_the_batches_early_says_so_in_its_result_and_report(tmp_path, demo_arrays):
    """``synthetic_until`` and ``synthetic_border_ignore`` change what an arm trains on: the result file stores them
    and the report's (and README's) arm label names them; an arm without them keeps its label and fields."""
    old = "generator: inpaint, mixing: {mode: ratio, ratio: 1}"
    cfg = _smoke_with(tmp_path, old, "generator: inpaint, mixing: {mode: ratio, ratio: 1, synthetic_until: 0.5, "
                      "synthetic_border_ignore: 1}")
    cfg = cfg.model_copy(update={"n_labelled": [4]})
    (path,) = run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    arm = json.loads(path.read_text(encoding="utf-8"))["arms"]["synthetic"]
    assert (arm["synthetic_until"], arm["synthetic_border_ignore"]) == (0.5, 1)
    write_report(path)
    report = path.with_suffix(".md").read_text(encoding="utf-8")
    assert "1.0:1 synthetic:real for the first 50% of steps, label border 1 px ignored, filtered" in report
    assert "synthetic:real for the first 50% of steps" in readme_table([path])
    (tmp_path / "p").mkdir()
    plain = json.loads(run_experiment(_smoke_with(tmp_path / "p", old, old).model_copy(
        update={"n_labelled": [4]}), FakeStages(demo_arrays), progress=False)[0].read_text(encoding="utf-8"))
    assert "synthetic_until" not in plain["arms"]["synthetic"]


def test_status_reads_where_a_sweep_stands_from_its_folder_alone(tmp_path, demo_arrays):
    """Done, running (a live claim), stale (a dead worker's claim), pending with the step it resumes from, and
    whether the result file was made from this config; the CLI prints it without reading data or claiming."""
    import os
    import socket

    from typer.testing import CliRunner

    from lesionforge.cli import app
    from lesionforge.experiment.locks import claim, release
    from lesionforge.experiment.records import run_dir
    from lesionforge.experiment.status import sweep_status

    text = (CONFIGS / "smoke.yaml").read_text(encoding="utf-8")
    text = text.replace("output: ../runs/smoke", f"output: {tmp_path / 'runs'}").replace(
        "results_dir: ../runs/smoke/results", f"results_dir: {tmp_path / 'results'}")
    (tmp_path / "cfg.yaml").write_text(text, encoding="utf-8")
    cfg = load_experiment_config(tmp_path / "cfg.yaml")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, FakeStages(demo_arrays, fail_after=4), progress=False)
    (fresh,) = sweep_status(cfg.model_copy(update={"output": tmp_path / "fresh"}))
    assert fresh.unbuilt == ("inpaint",)  # no run of the synthetic arm yet: its generator and set are still ahead
    (reg,) = sweep_status(cfg)
    assert (reg.n, reg.count("done"), reg.count("pending"), reg.result) == (8, 4, 5, "missing")
    assert reg.unbuilt == ()  # seed 0 of the synthetic arm is done, so its set was built
    with pytest.raises(ConfigError, match=r"N = \[16\]"):  # the same check as `experiment run --n`
        sweep_status(cfg, [16])
    assert reg.median_run_s() is not None  # the runner records each run's wall time
    # the time left comes from the finished runs' own records: give them known times
    from lesionforge.experiment.records import read_record, record_path, write_record

    for r, secs in zip((r for r in reg.runs if r.state == "done"), (600, 600, 720, 900), strict=True):
        path = record_path(cfg.output, 8, r.arm, r.seed)
        rec = read_record(path)
        write_record(path, rec.model_copy(update={"timings": {**rec.timings, "run_s": secs}}))
    (reg,) = sweep_status(cfg)
    steps = cfg.shared_segment().steps
    assert reg.median_run_s() == 660 and reg.seconds_left(steps) == 5 * 660
    pending = [r for r in reg.runs if r.state == "pending"]
    live = run_dir(cfg.output, 8, pending[0].arm, pending[0].seed) / "run.lock"
    dead = run_dir(cfg.output, 8, pending[1].arm, pending[1].seed)
    resumes = run_dir(cfg.output, 8, pending[2].arm, pending[2].seed) / "segmenter"
    assert claim(live)
    try:
        dead.mkdir(parents=True, exist_ok=True)
        (dead / "run.lock").write_text(f"{socket.gethostname()} 999999999 token\n", encoding="utf-8")
        resumes.mkdir(parents=True)
        (resumes / "last.json").write_text('{"folder": "last-0000003", "step": 3}', encoding="utf-8")
        (reg,) = sweep_status(cfg)
        states = {(r.arm, r.seed): r for r in reg.runs}
        running = states[(pending[0].arm, pending[0].seed)]
        assert running.state == "running" and running.holder.endswith(f"pid {os.getpid()}")
        assert states[(pending[1].arm, pending[1].seed)].state == "stale"
        assert states[(pending[2].arm, pending[2].seed)].step == 3
        # five runs left, one of them 3 of 12 steps in, one live worker
        assert reg.seconds_left(steps) == pytest.approx(660 * (5 - 3 / steps))
        out = CliRunner().invoke(app, ["experiment", "status", str(tmp_path / "cfg.yaml")], env={"COLUMNS": "250"})
        assert out.exit_code == 0, out.output
        assert "4/9 done, 1 running, 1 stale; result missing" in out.output and "pending 3/12" in out.output
        assert "of runs left with 1 worker(s) (median run 11 min)" in out.output  # no generator left to build
    finally:
        release(live)
    (dead / "run.lock").unlink()
    run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    (reg,) = sweep_status(cfg)
    assert (reg.count("done"), reg.result) == (9, "current")
    changed = cfg.model_copy(update={"bootstrap_samples": 100})
    assert sweep_status(changed)[0].result == "other config"
    # the runner does not write over it, and says how to get the new result without losing a run
    with pytest.raises(OverwriteError, match="every run is kept: move that file aside") as err:
        run_experiment(changed, FakeStages(demo_arrays), progress=False)
    assert "--overwrite" not in str(err.value)
    reg.result_path.rename(tmp_path / "old-result.json")
    again = FakeStages(demo_arrays)
    run_experiment(changed, again, progress=False)
    assert again.run_calls == [] and sweep_status(changed)[0].result == "current"


@pytest.mark.parametrize(("arm", "message"), [
    ("{name: baseline, n_labelled: [8], kind: baseline}", "baseline arm is measured at every N"),
    ("{name: baseline, kind: baseline}\n  - {name: other, n_labelled: [], kind: baseline}", "at least 1"),
])
def test_a_bad_arm_n_labelled_is_refused(tmp_path, arm, message):
    with pytest.raises(ConfigError, match=message):
        _smoke_with(tmp_path, "{name: baseline, kind: baseline}", arm)


def test_every_interval_is_recomputed_from_the_result_file_alone(cfg, demo_arrays, tmp_path):
    from lesionforge.experiment.results import paired_from_result

    path = run_experiment(cfg, FakeStages(demo_arrays), progress=False)[0]
    res = json.loads(path.read_text(encoding="utf-8"))
    assert res["schema_version"] == 2 and len(res["image_ids"]) == 10
    assert res["image_lesions"]["small"] == [2] * 10
    block = res["arms"]["synthetic"]["per_image"]
    assert block["seeds"] == [0, 1, 2] and len(block["dice"]) == 3 and len(block["dice"][0]) == 10
    assert block["band_missed"]["small"] == [[0] * 10] * 3
    stored = [(res["paired_diff"][a], a, "baseline") for a in ("copy-paste", "synthetic")]
    stored.append((res["paired_vs_copy_paste"]["copy-paste"]["synthetic"], "synthetic", "copy-paste"))
    for want, arm, ref in stored:
        got = paired_from_result(res, arm, ref, path)
        for metric in ("mdice", "miou", "miss_rate", "miss_rate_small"):
            assert got[metric]["mean"] == pytest.approx(want[metric]["mean"], abs=1e-6), (arm, metric)
            assert got[metric]["ci95"] == pytest.approx(want[metric]["ci95"], abs=1e-6), (arm, metric)
        assert got["mdice"]["over_seeds"]["ci95"] == pytest.approx(want["mdice"]["over_seeds"]["ci95"], abs=1e-9)
    # a pair the file did not compare: copy-paste against synthetic, the fake's exact gain difference
    assert paired_from_result(res, "copy-paste", "synthetic")["mdice"]["mean"] == pytest.approx(-0.04, abs=1e-5)
    with pytest.raises(DataError, match="no arm 'union'"):
        paired_from_result(res, "union", "baseline", path)
    from typer.testing import CliRunner

    from lesionforge.cli import app

    out = CliRunner().invoke(app, ["experiment", "compare", str(path), "copy-paste", "synthetic"])
    assert out.exit_code == 0 and "| arm − synthetic |" in out.stdout and "| copy-paste | -0.040 [" in out.stdout
    for arm in res["arms"].values():
        del arm["per_image"]
    with pytest.raises(DataError, match="no per-image metrics"):
        paired_from_result(res, "synthetic", "baseline", path)


def test_per_image_metrics_are_aligned_by_image_id_whatever_order_a_run_scored_them():
    from lesionforge.experiment.per_image import per_image_fields, records_from_result
    from lesionforge.experiment.records import RunRecord

    def rec(arm: str, seed: int, ids: list[str], dice: list[float]) -> RunRecord:
        return RunRecord(n_labelled=4, arm=arm, seed=seed, ids=ids, dice=dice, iou=[d / 2 for d in dice],
                         mdice=float(np.mean(dice)), miou=float(np.mean(dice)) / 2, miss_rate=None,
                         miss_rate_by_band=dict.fromkeys(BANDS))

    by_arm = {"baseline": [rec("baseline", 0, ["a", "b"], [0.1, 0.2])],
              "cp": [rec("cp", 0, ["b", "a"], [0.4, 0.3])]}
    top, blocks = per_image_fields(by_arm, "baseline")
    assert top == {"image_ids": ["a", "b"]} and blocks["cp"]["dice"] == [[0.3, 0.4]]
    res = {"n_labelled": 4, **top, "arms": {k: {"mdice": [r[0].mdice], "miou": [r[0].miou], "miss_rate": [None],
                                                "miss_rate_by_band": {b: [None] for b in BANDS}, "per_image": blocks[k]}
                                            for k, r in by_arm.items()}}
    assert records_from_result(res)["cp"][0].per_image("dice") == {"a": 0.3, "b": 0.4}
    by_arm["cp"].append(rec("cp", 1, ["a", "c"], [0.3, 0.4]))
    with pytest.raises(ValueError, match="other test images"):
        per_image_fields(by_arm, "baseline")


def test_a_packed_sweep_resumes_on_another_machine_without_redoing_its_runs(cfg, demo_arrays, tmp_path):
    from typer.testing import CliRunner

    from lesionforge.cli import app
    from lesionforge.experiment.carry import pack_runs, unpack_runs
    from lesionforge.experiment.records import read_run_log

    first = FakeStages(demo_arrays, fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, first, progress=False)
    pack = tmp_path / "runs.json"
    assert pack_runs(cfg, pack) == 5
    # a fresh machine: the same config, an empty output folder
    moved = cfg.model_copy(update={"output": tmp_path / "elsewhere", "results_dir": tmp_path / "res2"})
    packed = json.loads(pack.read_text(encoding="utf-8"))
    [(set_dir, fp)] = packed["sets"].items()  # the N=4 set was made before the interruption
    assert set_dir.startswith("synthetic-n4-inpaint-") and fp["n_samples"] == 2 and fp["n_kept"] == 2
    assert unpack_runs(moved, pack) == (5, 0)
    assert unpack_runs(moved, pack) == (0, 5)  # finished runs there are kept, not rewritten
    assert sum(e["event"] == "carried" for e in read_run_log(moved.output)) == 5
    second = FakeStages(demo_arrays)
    [p4, _] = run_experiment(moved, second, progress=False)
    total = len(cfg.n_labelled) * len(cfg.seeds) * len(cfg.arms)
    assert len(second.run_calls) == total - 5
    assert not {(n, a, s) for n, a, s, _ in first.run_calls} & {(n, a, s) for n, a, s, _ in second.run_calls}
    whole = run_experiment(cfg.model_copy(update={"output": tmp_path / "whole", "results_dir": tmp_path / "r3"}),
                           FakeStages(demo_arrays), progress=False)[0]
    carried, fresh = (json.loads(p.read_text(encoding="utf-8")) for p in (p4, whole))
    assert carried["paired_diff"] == fresh["paired_diff"]  # the same numbers as a sweep run in one go
    # the rebuilt N=4 set is the very set the carried runs trained on (the fake draws it deterministically)
    assert carried["generators"]["inpaint"]["carried"] == {"then": fp["fingerprint"], "now": fp["fingerprint"],
                                                           "same": True}
    assert "carried" not in fresh["generators"]["inpaint"]
    # every synthetic run records the set it trained on: here all on the one draw, carried or not
    synthetic_arms = [a.name for a in cfg.arms if a.kind == "synthetic"]
    assert synthetic_arms and all(carried["arms"][a]["set_draws"] == {fp["fingerprint"]: list(cfg.seeds)}
                                  for a in synthetic_arms)
    assert "set_draws" not in carried["arms"][cfg.baseline_arm]
    # a run on another draw (as when a rebuilt set differs from the carried one) shows up beside the others
    from lesionforge.experiment.records import read_record, record_path, write_record
    from lesionforge.experiment.runner import SyntheticCache, write_n_result

    path = record_path(moved.output, 4, synthetic_arms[0], cfg.seeds[0])
    write_record(path, read_record(path).model_copy(update={"synthetic_set": "0123456789abcdef"}))
    records = [read_record(record_path(moved.output, 4, a.name, sd)) for sd in cfg.seeds for a in cfg.arms]
    data = second.load_data(moved)
    mixed = json.loads(write_n_result(moved, 4, data, records, SyntheticCache(moved, second, data, 4),
                                      overwrite=True).read_text(encoding="utf-8"))
    assert mixed["arms"][synthetic_arms[0]]["set_draws"] == {"0123456789abcdef": [cfg.seeds[0]],
                                                            fp["fingerprint"]: list(cfg.seeds[1:])}
    # another config's runs are refused before anything is written; so is a file that is not a pack
    other = load_experiment_config(CONFIGS / "smoke.yaml", {"output": str(tmp_path / "o3"), "seeds": [0, 1]})
    with pytest.raises(ConfigError, match="runs.json: packed from a config with other settings"):
        unpack_runs(other, pack)
    assert not (tmp_path / "o3").exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"kind": "x"}', encoding="utf-8")
    with pytest.raises(DataError, match="bad.json.*not a pack of sweep runs"):
        unpack_runs(moved, bad)
    res = CliRunner().invoke(app, ["experiment", "unpack", str(CONFIGS / "smoke.yaml"), str(bad)])
    assert res.exit_code != 0


def test_a_rebuilt_set_that_differs_from_the_carried_one_is_recorded_as_such(tmp_path, demo_arrays):
    from lesionforge.experiment.set_fingerprint import compare_with_carried, fingerprint, note_carried

    work = tmp_path / "out" / "cache" / "synthetic-n4-inpaint-k"
    work.mkdir(parents=True)
    rows = []
    for i in range(2):
        write_image(work / f"s{i}.png", demo_arrays.images[i])
        write_mask(work / f"s{i}_mask.png", demo_arrays.masks[i])
        rows.append(Sample(id=f"syn{i}", image=str(work / f"s{i}.png"), masks=[str(work / f"s{i}_mask.png")],
                           origin="synthetic"))
    write_manifest(work / "manifest.jsonl", rows)
    s = SyntheticSet(work / "manifest.jsonl", None, {})
    assert compare_with_carried(tmp_path / "out", work, s) is None  # no carried run used it
    note_carried(tmp_path / "out", {work.name: fingerprint(s)})
    assert compare_with_carried(tmp_path / "out", work, s)["same"] is True
    write_image(work / "s1.png", demo_arrays.images[5])  # one pixel of the rebuild came out otherwise
    got = compare_with_carried(tmp_path / "out", work, s)
    assert got["same"] is False and got["then"] != got["now"]


def test_a_set_drawn_under_another_entry_name_with_the_same_recipe_is_not_drawn_again(tmp_path, demo_arrays):
    """The cache key holds everything that decides the pairs, not the entry's name: an entry that repeats another's
    recipe (a renamed entry, a screen variant a headline arm now names) reuses its finished set, where the filter
    is the same too; a set filtered otherwise is left as it is and the entry draws its own."""
    from lesionforge.experiment.config import ArmSettings

    base = load_experiment_config(CONFIGS / "smoke.yaml", {"output": str(tmp_path / "runs"), "n_labelled": [4],
                                                           "results_dir": str(tmp_path / "results")})
    spec = base.generators["inpaint"]
    again = ArmSettings(name="synthetic-again", kind="synthetic", generator="inpaint-again",
                        mixing={"mode": "ratio", "ratio": 1}, filtered=True)
    cfg = base.model_copy(update={"generators": {**base.generators, "inpaint-again": spec},
                                  "arms": [*base.arms, again]})
    stages = FakeStages(demo_arrays)
    (path,) = run_experiment(cfg, stages, progress=False)
    assert stages.synth_calls == [(4, "inpaint")]
    gens = json.loads(path.read_text(encoding="utf-8"))["generators"]
    assert gens["inpaint-again"]["n_kept"] == gens["inpaint"]["n_kept"] == 2
    folders = sorted(p.name for p in (cfg.output / "cache").glob("synthetic-n4-*"))
    assert len(folders) == 1 and folders[0].startswith("synthetic-n4-inpaint-")
    # another filter: the same key, but the other entry's kept pairs are not these; its own set is drawn
    other = spec.model_copy(update={"filter": spec.filter.model_copy(update={"threshold": 0.5})})
    cfg2 = cfg.model_copy(update={"output": tmp_path / "runs2", "results_dir": tmp_path / "results2",
                                  "generators": {**cfg.generators, "inpaint-again": other}})
    stages2 = FakeStages(demo_arrays)
    run_experiment(cfg2, stages2, progress=False)
    assert stages2.synth_calls == [(4, "inpaint"), (4, "inpaint-again")]
