"""Several workers sharing one sweep: claim files, stale-claim takeover, no run done twice."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from test_experiment_runner import CONFIGS, FakeStages, cfg  # noqa: F401  (fixture)

from lesionforge.errors import ConfigError, WaitTimeoutError
from lesionforge.experiment.locks import STALE_AFTER_S, claim, holder, release
from lesionforge.experiment.records import read_run_log, run_dir
from lesionforge.experiment.runner import run_experiment

HOST = socket.gethostname()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claim_is_exclusive_and_a_dead_workers_claim_is_taken_over(tmp_path):
    lock = tmp_path / "a" / "run.lock"
    assert claim(lock) and lock.is_file()
    assert (holder(lock).host, holder(lock).pid) == (HOST, os.getpid())
    assert not claim(lock)  # held by a live holder (this process, through another open file)
    assert release(lock)
    assert not lock.exists() and claim(lock)
    release(lock)
    lock.write_text(f"{HOST} {_dead_pid()} 0123abcd\n", encoding="utf-8")  # as a killed worker leaves it
    assert claim(lock)
    assert holder(lock).pid == os.getpid()
    release(lock)
    assert list(lock.parent.iterdir()) == []


def _race(lock, start, results) -> None:
    start.wait()
    results.put(claim(lock))
    start.wait()  # winners keep their claim until every racer has tried


@pytest.mark.parametrize("trial", range(16))
def test_exactly_one_of_many_processes_wins_a_stale_claim(tmp_path, trial):
    ctx = multiprocessing.get_context("fork")  # cheap children; they only touch the claim file
    lock = tmp_path / "run.lock"
    lock.write_text(f"{HOST} {_dead_pid()}\n", encoding="utf-8")  # a dead worker's claim (pre-flock format)
    start, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(lock, start, results)) for _ in range(8)]
    for p in procs:
        p.start()
    wins = [results.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sum(wins) == 1


def test_a_held_claim_is_kept_fresh_by_its_heartbeat(tmp_path, monkeypatch):
    from lesionforge.experiment import locks

    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.1)
    lock = tmp_path / "run.lock"
    assert claim(lock)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(lock, (old, old))
    deadline, fresh = time.time() + 10, False
    while not fresh and time.time() < deadline:
        time.sleep(0.05)
        fresh = time.time() - lock.stat().st_mtime < 60  # touched again: another host sees it held
    release(lock)
    assert fresh


def test_release_leaves_a_claim_this_process_does_not_hold(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text("otherhost 1234 feedbeef\n", encoding="utf-8")  # another worker's claim
    assert not release(lock)
    assert lock.read_text(encoding="utf-8") == "otherhost 1234 feedbeef\n"
    # ours once, but taken over (e.g. by another host after our heartbeat lapsed): theirs now, left alone
    mine = tmp_path / "mine.lock"
    assert claim(mine)
    theirs = tmp_path / "theirs.tmp"
    theirs.write_text("otherhost 99 cafe\n", encoding="utf-8")
    os.replace(theirs, mine)
    assert not release(mine)
    assert mine.read_text(encoding="utf-8") == "otherhost 99 cafe\n"


def test_a_file_system_without_locks_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(ConfigError, match="does not support file locks"):
        claim(tmp_path / "run.lock")


def test_an_empty_claim_file_is_stale(tmp_path):
    lock = tmp_path / "run.lock"
    lock.touch()  # a worker died between creating and writing its claim
    assert claim(lock)
    assert holder(lock).pid == os.getpid()
    release(lock)


def test_another_hosts_claim_is_held_while_fresh_and_stale_when_old(tmp_path):
    lock = tmp_path / "run.lock"
    lock.write_text("otherhost 1234 feedbeef\n", encoding="utf-8")  # its flock may not reach us (NFS)
    assert not claim(lock)
    old = time.time() - STALE_AFTER_S - 60
    os.utime(lock, (old, old))  # its holder stopped touching it
    assert claim(lock)
    release(lock)


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


def test_a_waiting_worker_says_on_what_and_gives_up_after_the_timeout(cfg, demo_arrays, capsys):  # noqa: F811
    lock = run_dir(cfg.output, 4, "copy-paste", 1) / "run.lock"
    assert claim(lock)  # "another worker" (this process) holds copy-paste seed 1 of N=4 and never finishes
    stages = FakeStages(demo_arrays)
    try:
        with pytest.raises(WaitTimeoutError) as err:
            run_experiment(cfg, stages, progress=False, poll_s=0.02, wait_timeout_s=0.3)
    finally:
        release(lock)
    msg = str(err.value)
    assert "\n" not in msg and "gave up after" in msg and "N=4 seed 1 / copy-paste" in msg
    assert f"held by {HOST} pid {os.getpid()}" in msg and "--wait-timeout" in msg
    assert f"N=4: waiting for seed 1 / copy-paste (held by {HOST} pid {os.getpid()})" in capsys.readouterr().err
    assert len(stages.run_calls) == len(cfg.seeds) * len(cfg.arms) - 1  # everything else was done first


def test_an_empty_claim_file_does_not_stall_the_sweep(cfg, demo_arrays):  # noqa: F811
    lock = run_dir(cfg.output, 8, "baseline", 2) / "run.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    stages = FakeStages(demo_arrays)
    run_experiment(cfg, stages, progress=False, poll_s=0.02, wait_timeout_s=10)
    assert (8, "baseline", 2) in [(n, a, s) for n, a, s, _ in stages.run_calls]
    assert not lock.exists()


def test_the_run_log_tells_each_run_started_and_done_once(cfg, demo_arrays):  # noqa: F811
    run_experiment(cfg, FakeStages(demo_arrays), progress=False)
    events = read_run_log(cfg.output)
    total = len(cfg.n_labelled) * len(cfg.seeds) * len(cfg.arms)
    for kind in ("start", "done"):
        runs = [(e["n_labelled"], e["arm"], e["seed"]) for e in events if e["event"] == kind]
        assert len(runs) == len(set(runs)) == total
    assert {e["pid"] for e in events} == {os.getpid()}
    run_experiment(cfg, FakeStages(demo_arrays), progress=False)  # all finished: nothing started again
    assert read_run_log(cfg.output) == events


def test_experiment_run_gives_up_waiting_after_wait_timeout_with_one_line(tmp_path, monkeypatch, capsys):
    import yaml

    from lesionforge.cli import main
    from lesionforge.experiment.config import load_experiment_config

    raw = yaml.safe_load((CONFIGS / "smoke.yaml").read_text(encoding="utf-8"))
    raw.update(output="runs", results_dir="results", seeds=[0])
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = load_experiment_config(path).output
    locks = [run_dir(out, 8, arm, 0) / "run.lock" for arm in ("baseline", "copy-paste", "synthetic")]
    assert all(claim(lock) for lock in locks)  # another worker holds every run
    monkeypatch.setattr(sys, "argv", ["lesionforge", "experiment", "run", str(path), "--wait-timeout", "0.005"])
    try:
        with pytest.raises(SystemExit) as ended:
            main()
    finally:
        for lock in locks:
            release(lock)
    assert ended.value.code != 0
    said = capsys.readouterr()
    assert "N=8: waiting for seed 0 / synthetic and 2 more (held by" in said.out  # above the progress bar
    err = " ".join(said.err.split())  # Rich wraps the line at the console width
    assert err.startswith("error:") and "gave up after" in err and "--wait-timeout" in err
