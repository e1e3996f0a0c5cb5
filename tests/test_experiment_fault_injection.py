"""Fault injection: the smoke sweep shared by two worker processes, one of them SIGKILLed at a random point,
ends with every run done exactly once (by the run log) and the same numbers as one worker alone."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.locks import holder
from lesionforge.experiment.records import read_run_log
from lesionforge.experiment.runner import run_experiment

SMOKE = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "smoke.yaml"
WORKER = "from lesionforge.cli import main; main()"


def _config(tmp: Path, name: str) -> Path:
    cfg = yaml.safe_load(SMOKE.read_text(encoding="utf-8"))
    cfg.update(output=f"{name}/runs", results_dir=f"{name}/results", seeds=[0, 1])  # 6 runs keep it short
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def _worker(cfg: Path, log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, "experiment", "run", str(cfg), "--threads", "1", "--no-report"],
            stdout=out, stderr=subprocess.STDOUT, cwd=cfg.parent,
        )


def _numbers(obj):
    """A result or run record without its timings (wall clock) and the paths of its own output folder."""
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items() if k not in ("timings", "data", "samples", "config")}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    if isinstance(obj, str) and os.path.isabs(obj):
        return "<path>"  # each sweep has its own folder
    return obj


def _run_records(runs: Path) -> dict[str, dict]:
    return {str(p.relative_to(runs)): _numbers(json.loads(p.read_text(encoding="utf-8")))
            for p in sorted(runs.glob("n*/*/seed*/run.json"))}


@pytest.mark.slow
def test_a_worker_killed_at_random_points_leaves_every_run_done_once_with_one_workers_numbers(tmp_path):
    t0 = time.monotonic()
    ref_cfg = load_experiment_config(_config(tmp_path, "single"))
    [ref_path] = run_experiment(ref_cfg, progress=False)  # one worker alone, in this process (one thread)
    ref_s = time.monotonic() - t0
    reference = _numbers(json.loads(ref_path.read_text(encoding="utf-8")))
    ref_runs = _run_records(ref_cfg.output)
    assert len(ref_runs) == 6

    rng = random.Random(18)  # fixed kill points: a failure reruns the same way
    # whom to kill: the worker making the synthetic set (generator, sampling, filter), the other one (real-data
    # runs), or either
    for trial, whom in enumerate(("maker", "other", "either")):
        cfg = _config(tmp_path, f"trial{trial}")
        logs = [tmp_path / f"trial{trial}-worker{i}.log" for i in range(2)]
        procs = [_worker(cfg, log) for log in logs]
        delay, pick = rng.uniform(0.05, 0.5) * ref_s, rng.randrange(2)
        out = load_experiment_config(cfg).output
        try:
            while not (out / "cache").is_dir():  # the workers have imported, loaded the data and begun
                assert all(p.poll() is None for p in procs), [log.read_text() for log in logs]
                time.sleep(0.05)
            time.sleep(delay)  # a random point of the sweep
            maker = [i for i, p in enumerate(procs) for lock in (out / "cache").glob("synthetic-*.lock")
                     if (h := holder(lock)) and h.pid == p.pid]
            victim = pick if whom == "either" or not maker else maker[0] if whom == "maker" else 1 - maker[0]
            assert procs[victim].poll() is None, "the victim finished before its kill: the sweep was too quick"
            held = [str(p.relative_to(out)) for p in out.rglob("*.lock") if (h := holder(p))
                    and h.pid == procs[victim].pid]
            os.kill(procs[victim].pid, signal.SIGKILL)
            print(f"trial {trial}: killed worker {victim} ({whom}) {delay:.1f} s in, holding {held or 'nothing'}")
            survivor = procs[1 - victim]
            assert survivor.wait(timeout=600) == 0, logs[1 - victim].read_text()
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        assert procs[victim].returncode == -signal.SIGKILL
        events = read_run_log(out)
        done = Counter((e["n_labelled"], e["arm"], e["seed"]) for e in events if e["event"] == "done")
        assert len(done) == 6 and set(done.values()) == {1}, done  # every run done, none twice
        assert _run_records(out) == ref_runs
        result = json.loads((cfg.parent / f"trial{trial}" / "results" / ref_path.name).read_text(encoding="utf-8"))
        assert _numbers(result) == reference
