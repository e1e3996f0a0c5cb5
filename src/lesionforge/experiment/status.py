"""Where a sweep stands (``lesionforge experiment status CONFIG``), read from its output folder alone.

No data set is read and nothing is claimed or written, so it is instant and safe beside running workers: each run
of the config (N x arm x seed, the arms measured at that N) is ``done`` (its record is written), ``running`` (a live
worker holds its claim), ``stale`` (a claim whose holder is gone: the next worker takes it over) or ``pending``;
an unfinished run shows the step it resumes from. Each N's result file is ``missing``, ``current`` (made from this
config) or ``other config`` (the runner will not write over it: move it aside, and it is rebuilt from the records).
The time left is an estimate from the finished runs' own wall times (their records), for the segmentation runs only.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lesionforge.errors import DataError
from lesionforge.experiment.config import ExperimentConfig
from lesionforge.experiment.locks import holder, holder_alive
from lesionforge.experiment.records import read_record, record_path, run_dir
from lesionforge.experiment.results import config_hash, result_path

RunStateName = Literal["done", "running", "stale", "pending"]


@dataclass(frozen=True)
class RunState:
    n: int
    arm: str
    seed: int
    state: RunStateName
    holder: str | None = None  # "host pid N" of a running or stale claim
    step: int | None = None  # the step an unfinished run resumes from
    seconds: float | None = None  # a done run's wall time (its record's ``timings.run_s``)


@dataclass(frozen=True)
class RegimeStatus:
    n: int
    runs: list[RunState]
    result: Literal["missing", "current", "other config", "unreadable"]
    result_path: Path
    #: generator entries of this N whose set no run has used yet (no run of an arm that trains on it has started):
    #: their training and synthesis are still ahead, beside :meth:`seconds_left`
    unbuilt: tuple[str, ...] = ()

    def count(self, state: RunStateName) -> int:
        return sum(r.state == state for r in self.runs)

    def median_run_s(self) -> float | None:
        """The median wall time of this N's finished runs (None before the first)."""
        times = [r.seconds for r in self.runs if r.seconds is not None]
        return statistics.median(times) if times else None

    def seconds_left(self, steps: int) -> float | None:
        """Wall time until every run is done: each unfinished run costs the median finished run, less the share
        of its ``steps`` already trained, shared among the live workers (at least one). Segmentation runs only: a
        generator or set still to be built adds its own time. None before the first run has finished."""
        median = self.median_run_s()
        if median is None:
            return None
        work = sum(median * (1 - min(r.step or 0, steps) / steps) for r in self.runs if r.state != "done")
        return work / max(1, self.count("running"))


def run_state(cfg: ExperimentConfig, n: int, arm: str, seed: int) -> RunState:
    """The state of one run, from its folder."""
    from lesionforge.segment.train import resumable_step

    record = record_path(cfg.output, n, arm, seed)
    if record.is_file():
        try:
            seconds = read_record(record).timings.get("run_s")
        except DataError:  # the runner names a corrupt record when it reads it; status only leaves its time out
            seconds = None
        return RunState(n, arm, seed, "done", seconds=seconds)
    folder = run_dir(cfg.output, n, arm, seed)
    step = resumable_step(folder / "segmenter")
    h = holder(folder / "run.lock")
    if h is None:
        return RunState(n, arm, seed, "pending", step=step)
    return RunState(n, arm, seed, "running" if holder_alive(h) else "stale", str(h), step)


def sweep_status(cfg: ExperimentConfig, only_n: list[int] | None = None) -> list[RegimeStatus]:
    """Every selected N's runs (in the sweep's order) and the state of its result file; an N not in the config
    is a :class:`~lesionforge.errors.ConfigError`, as for ``experiment run --n``."""
    from lesionforge.experiment.runner import selected_n

    out = []
    for n in selected_n(cfg, only_n):
        runs = [run_state(cfg, n, arm.name, seed) for seed in cfg.seeds for arm in cfg.arms_at(n)]
        started = {r.arm for r in runs if r.state != "pending" or r.step}
        used: dict[str, list[str]] = {}
        for a in cfg.arms_at(n):
            if a.generator is not None:
                used.setdefault(a.generator, []).append(a.name)
        unbuilt = tuple(g for g, arms in used.items() if not started.intersection(arms))
        out.append(RegimeStatus(n, runs, _result_state(cfg, n), result_path(cfg, n), unbuilt))
    return out


def _result_state(cfg: ExperimentConfig, n: int) -> Literal["missing", "current", "other config", "unreadable"]:
    path = result_path(cfg, n)
    if not path.is_file():
        return "missing"
    try:
        held = json.loads(path.read_text(encoding="utf-8")).get("config_hash")
    except (OSError, ValueError, AttributeError):
        return "unreadable"
    return "current" if held == config_hash(cfg) else "other config"
