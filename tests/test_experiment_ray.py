"""``experiment run --executor ray`` on a local Ray instance with 2 workers: the smoke sweep gives the local
runner's numbers, also when a worker is SIGKILLed mid-run (Ray reruns the task, which resumes its checkpoint)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from test_experiment_fault_injection import _config, _numbers, _run_records
from typer.testing import CliRunner

from lesionforge.cli import app
from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.records import read_run_log
from lesionforge.experiment.runner import run_experiment

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The smoke sweep (2 seeds, 6 runs) run by the local runner in this process."""
    tmp = tmp_path_factory.mktemp("local")
    cfg = load_experiment_config(_config(tmp, "local"))
    [path] = run_experiment(cfg, progress=False)
    return path.name, _numbers(json.loads(path.read_text(encoding="utf-8"))), _run_records(cfg.output)


def _ray_sweep(tmp_path, name: str):
    path = _config(tmp_path, name)
    out = CliRunner().invoke(app, ["experiment", "run", str(path), "--executor", "ray", "--threads", "1",
                                   "--no-report"])
    assert out.exit_code == 0, out.output
    return load_experiment_config(path)


def _done_once(cfg) -> Counter:
    events = read_run_log(cfg.output)
    done = Counter((e["n_labelled"], e["arm"], e["seed"]) for e in events if e["event"] == "done")
    assert len(done) == 6 and set(done.values()) == {1}, done
    return Counter((e["n_labelled"], e["arm"], e["seed"]) for e in events if e["event"] == "start")


def test_ray_sweep_gives_the_local_runners_numbers(ray_local, reference, tmp_path):
    name, result, runs = reference
    cfg = _ray_sweep(tmp_path, "ray")
    assert _numbers(json.loads((cfg.results_dir / name).read_text(encoding="utf-8"))) == result
    assert _run_records(cfg.output) == runs
    assert set(_done_once(cfg).values()) == {1}
    [marker] = cfg.output.glob("cache/synthetic-n8-inpaint-*/synthetic.json")
    timings = json.loads(marker.read_text(encoding="utf-8"))["info"]["timings"]
    assert timings["synthesis_shards"] == 2  # 8 samples drawn by 2 shard tasks, merged
    assert not list(cfg.output.rglob(".parts")) and not list(cfg.output.rglob("*.lock"))


def test_a_worker_killed_mid_run_is_retried_and_the_sweep_ends_with_the_same_numbers(ray_local, reference, tmp_path):
    name, result, runs = reference
    out = tmp_path / "killed" / "runs"
    # the worker training the synthetic arm of seed 1 dies once its first checkpoint is written (step 6 of 12)
    (ray_local / "fault-fired").unlink(missing_ok=True)
    (ray_local / "fault").write_text(f"run n8/synthetic/seed1\n{out}/n8/synthetic/seed1/segmenter/last-*\n",
                                     encoding="utf-8")
    cfg = _ray_sweep(tmp_path, "killed")
    assert (ray_local / "fault-fired").read_text(encoding="utf-8").startswith("run n8/synthetic/seed1 pid ")
    starts = _done_once(cfg)
    assert starts[(8, "synthetic", 1)] == 2 and starts.total() == 7  # that run started again, none other
    assert _run_records(cfg.output) == runs
    assert _numbers(json.loads((cfg.results_dir / name).read_text(encoding="utf-8"))) == result
