"""Several workers sharing one sweep: claim files, stale-claim takeover, no run done twice."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from test_experiment_runner import FakeStages, cfg  # noqa: F401  (fixture)

from lesionforge.experiment.locks import claim, holder_alive, release
from lesionforge.experiment.records import run_dir
from lesionforge.experiment.runner import run_experiment


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_is_exclusive_and_a_dead_workers_claim_is_taken_over(tmp_path):
    lock = tmp_path / "a" / "run.lock"
    assert claim(lock) and lock.is_file()
    assert holder_alive(lock)
    assert not claim(lock)  # held by a live process (this one)
    release(lock)
    assert not lock.exists() and claim(lock)
    release(lock)
    import socket

    lock.write_text(f"{socket.gethostname()} {_dead_pid()}\n", encoding="utf-8")
    assert not holder_alive(lock)
    assert claim(lock)
    assert lock.read_text(encoding="utf-8").split()[1] == str(__import__("os").getpid())
    release(lock)
    assert list(lock.parent.iterdir()) == []  # the stale claim moved aside is cleaned up too


class SlowStages(FakeStages):
    def run_arm(self, *args, **kwargs):
        time.sleep(0.02)  # long enough for the two workers to interleave
        return super().run_arm(*args, **kwargs)

    def prepare_synthetic(self, *args, **kwargs):
        time.sleep(0.1)
        return super().prepare_synthetic(*args, **kwargs)


def test_two_workers_share_a_sweep_without_doing_any_run_twice(cfg, demo_arrays):  # noqa: F811
    stages = [SlowStages(demo_arrays), SlowStages(demo_arrays)]
    paths: list = [None, None]

    def work(i: int) -> None:
        paths[i] = run_experiment(cfg, stages[i], progress=False, poll_s=0.02)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    runs = [(n, a, s) for st in stages for n, a, s, _ in st.run_calls]
    total = len(cfg.n_labelled) * len(cfg.seeds) * len(cfg.arms)
    assert len(runs) == len(set(runs)) == total  # every run exactly once across the two workers
    assert all(st.run_calls for st in stages)  # both did work
    synth = [c for st in stages for c in st.synth_calls]
    assert sorted(synth) == [(4, "inpaint"), (8, "inpaint")]  # each synthetic set made once
    assert paths[0] == paths[1] and all(p.is_file() for p in paths[0])
    res = json.loads(paths[0][0].read_text(encoding="utf-8"))
    assert set(res["arms"]) == {"baseline", "copy-paste", "synthetic"}
    assert not list(cfg.output.rglob("*.lock"))  # every claim released


def test_a_run_claimed_by_a_live_worker_is_waited_for(cfg, demo_arrays):  # noqa: F811
    lock = run_dir(cfg.output, 4, "baseline", 0) / "run.lock"
    assert claim(lock)  # "another worker" (this process) holds baseline seed 0 of N=4
    stages = FakeStages(demo_arrays)
    done: list = []
    t = threading.Thread(target=lambda: done.append(run_experiment(cfg, stages, progress=False, poll_s=0.02)))
    t.start()
    time.sleep(0.5)
    assert not done  # everything else is finished, the held run is waited for
    assert (4, "baseline", 0) not in [(n, a, s) for n, a, s, _ in stages.run_calls]
    release(lock)  # the other worker died without finishing: this one takes the run over
    t.join(timeout=30)
    assert done and (4, "baseline", 0) in [(n, a, s) for n, a, s, _ in stages.run_calls]
