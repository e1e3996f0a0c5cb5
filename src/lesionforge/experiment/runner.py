"""The sweep: for each N, prepare the synthetic sets once, then train and score every (seed, arm).

Resumable at two levels: a finished run leaves ``run.json`` and is skipped; an unfinished one resumes from
its own checkpoint (the segmentation stage checkpoints in the run folder). Synthetic sets are cached under
``<output>/cache`` by a hash of the generator settings, preset contents and the labelled ids, so they are
made once per (N, generator) and shared by every arm and seed.

Several workers may run the same sweep at once (``lesionforge experiment run CONFIG`` started twice, e.g. one
process per core): each run and each synthetic set is claimed with a lock file (``locks.py``), a worker skips
what another one is doing and waits for it at the end (saying on what, and giving up after ``wait_timeout_s``),
and the result JSON is written by whichever worker sees every run finished. Every start and end of a run is
appended to ``<output>/runs.log`` (``records.py``): the record that each run was done exactly once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from lesionforge.config import save_config
from lesionforge.devices import machine_facts
from lesionforge.errors import CheckpointError, ConfigError, OverwriteError, WaitTimeoutError
from lesionforge.experiment.budget import segment_config_for
from lesionforge.experiment.config import (
    PASTE_METHOD,
    UNION_METHOD,
    ArmSettings,
    ExperimentConfig,
    set_recipe,
    uses_unlabelled,
)
from lesionforge.experiment.keys import cache_key, settings_dump
from lesionforge.experiment.locks import WAIT_TIMEOUT_S, Busy, claim, holder, release
from lesionforge.experiment.records import RunRecord, append_run_log, read_record, record_path, run_dir, write_record
from lesionforge.experiment.results import build_result, result_path, write_grid_samples
from lesionforge.experiment.set_fingerprint import compare_with_carried, fingerprint
from lesionforge.experiment.set_quality import set_quality
from lesionforge.experiment.stages import ExperimentData, Stages, SyntheticSet
from lesionforge.experiment.union_set import write_union_set
from lesionforge.outputs import claim_output, is_inside
from lesionforge.progress import StageProgress, duration_text, progress_label
from lesionforge.utils import seed_everything, write_json_atomic

_console = Console(stderr=True)


def _contents(paths: list[Path | None]) -> list[str | None]:
    return [Path(p).read_text(encoding="utf-8") if p is not None and Path(p).is_file() else None for p in paths]


def synthetic_key(cfg: ExperimentConfig, name: str, n: int, data: ExperimentData) -> str:
    """Cache key of one (N, generator) synthetic set: generator and sampling settings, the generator's
    effective config (preset contents and code defaults: a set drawn by an older generator is not reused after
    an upgrade changed how the generator trains) and data ids. The filter is not part of it (see
    :func:`filter_key`): adding or changing a filter re-scores the same samples instead of drawing them again."""
    spec = cfg.generators[name]
    if spec.method == UNION_METHOD:  # the sets it joins, each with the filter whose kept pairs it takes
        return cache_key(UNION_METHOD, [(p, synthetic_key(cfg, p, n, data), filter_key(cfg, p)) for p in spec.of])
    return cache_key(
        cfg.dataset.name, cfg.resolution, settings_dump(spec.model_copy(update={"filter": None})),
        set_recipe(cfg, spec), data.split.low_data(n),
        data.background_ids() if spec.method in ("inpaint-normal", PASTE_METHOD) else None,
    )


def filter_key(cfg: ExperimentConfig, name: str) -> str | None:
    """Key of a generator's filter settings with their preset files' contents; None without a filter. (The
    contents part is redundant with :func:`settings_dump`'s digests; it stays so that keys of filters without
    preset files, e.g. the smoke sweep's and the demo's, keep their value and their cached scores.)"""
    f = cfg.generators[name].filter
    if f is None:
        return None
    return cache_key(settings_dump(f), _contents([f.autoencoder_config, f.validator_config]))


class SyntheticCache:
    """Synthetic sets made lazily (only when an unfinished run needs one) and kept as ``synthetic.json``."""

    def __init__(self, cfg: ExperimentConfig, stages: Stages, data: ExperimentData, n: int):
        self.cfg, self.stages, self.data, self.n = cfg, stages, data, n
        self.sets: dict[str, SyntheticSet] = {}
        self._dirs: dict[str, Path] = {}

    def work_dir(self, name: str) -> Path:
        """The set's folder: ``synthetic-n<N>-<name>-<key>``, or a finished set of the same key and filter made
        under another entry name (a renamed entry, or a screen variant a headline arm now names: the key holds
        everything that decides the pairs, so they are the same pairs and are not drawn again)."""
        # the key reads the generator preset: computed once per set, not at every poll of a waiting worker
        if name not in self._dirs:
            key = synthetic_key(self.cfg, name, self.n, self.data)
            own = self.cfg.output / "cache" / f"synthetic-n{self.n}-{name}-{key}"
            self._dirs[name] = own if own.exists() else (self._twin(name, key) or own)
        return self._dirs[name]

    def _twin(self, name: str, key: str) -> Path | None:
        """A finished set of ``key`` under another name whose kept pairs are this entry's filter's (first by
        name); a set filtered otherwise is left alone (re-filtering it would change it under the other entry)."""
        for marker in sorted((self.cfg.output / "cache").glob(f"synthetic-n{self.n}-*-{key}/synthetic.json")):
            if self._current(name, marker) is not None:
                return marker.parent
        return None

    def get(self, name: str, make: bool = True) -> SyntheticSet | None:
        if name in self.sets:
            return self.sets[name]
        marker = self.work_dir(name) / "synthetic.json"
        made = self._current(name, marker)
        if made is not None:
            self.sets[name] = made
        elif make:
            work = self.work_dir(name)
            lock = work.with_name(work.name + ".lock")
            if not claim(lock):
                raise Busy(f"synthetic set {name!r}", lock)
            try:
                made = self._current(name, marker)  # finished by another worker between our check and our claim
                self.sets[name] = made if made is not None else self._make(name, marker)
            finally:
                release(lock)
        return self.sets.get(name)

    def _current(self, name: str, marker: Path) -> SyntheticSet | None:
        """The set, if it is made and was filtered with the filter the config names now (or none)."""
        if not marker.is_file():
            return None
        s = SyntheticSet.from_dict(json.loads(marker.read_text(encoding="utf-8")))
        for path in (s.manifest, s.filtered_manifest):  # a crafted record must not point the sweep elsewhere
            if path is not None and not is_inside(path, marker.parent):
                raise CheckpointError(f"{marker}: names {path}, which is not inside {marker.parent}; the file is "
                                      "damaged or was edited: use a new output folder")
        return s if s.info.get("filter_key") == filter_key(self.cfg, name) else None

    def _make(self, name: str, marker: Path) -> SyntheticSet:
        """Make the set; one made before under another filter is re-filtered (samples already drawn are
        resumed, not redrawn) and keeps the timings of its training and drawing."""
        before = json.loads(marker.read_text(encoding="utf-8"))["info"].get("timings") if marker.is_file() else None
        t0 = time.perf_counter()
        spec = self.cfg.generators[name]
        seed_everything(spec.seed)
        if spec.method == UNION_METHOD:  # the joined sets first (each made or read under its own claim)
            parts = {p: (self.get(p), self.cfg.generators[p].filter is not None) for p in spec.of}
            s = write_union_set(parts, self.work_dir(name))
        else:
            with progress_label(f"N={self.n} generator {name}"):
                s = self.stages.prepare_synthetic(self.cfg, name, spec, self.n, self.data, self.work_dir(name))
        s.info.setdefault("timings", {})["prepare_s"] = round(time.perf_counter() - t0, 3)
        if before:
            s.info["timings"] = {**before, "refilter_s": s.info["timings"]["prepare_s"]}
        s.info["filter_key"] = filter_key(self.cfg, name)
        carried = compare_with_carried(self.cfg.output, self.work_dir(name), s)
        if carried is not None:  # runs carried from another machine trained on this set's first build
            s.info["carried"] = carried
            if not carried["same"]:
                _console.print(f"note: synthetic set {name!r} (N={self.n}) rebuilt here differs from the one the "
                               f"carried runs used (fingerprint {carried['now']} against {carried['then']})")
        write_json_atomic(marker, s.to_dict())
        return s


def run_experiment(
    cfg: ExperimentConfig,
    stages: Stages | None = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    progress: bool = True,
    poll_s: float = 30.0,
    only_n: list[int] | None = None,
    wait_timeout_s: float = WAIT_TIMEOUT_S,
    only_arms: list[str] | None = None,
) -> list[Path]:
    """Run the whole sweep of ``cfg``; returns the result JSON paths (one per N).

    ``resume`` (default) skips finished runs and continues unfinished ones from their checkpoints; without it
    an existing non-empty output folder is an error unless ``overwrite`` (which deletes it first, when it is a
    sweep folder: any other non-empty folder is refused, see :func:`lesionforge.outputs.claim_output`).
    ``only_n``: run just these regimes of ``cfg.n_labelled`` (the config and its hash stay the whole sweep's,
    so a sweep can be finished one N at a time, e.g. one N per session).
    ``poll_s``/``wait_timeout_s``: when every remaining run is held by other workers, look again every
    ``poll_s`` seconds and stop with :class:`WaitTimeoutError` after ``wait_timeout_s`` without progress.
    ``only_arms``: do just these arms' runs (e.g. the real-data arms while no generator can be trained to the
    end in this session); an N's result is written only once every run of it is finished, by any worker.
    """
    arms = _selected_arms(cfg, only_arms)
    n_values, stages, data = prepare_sweep(cfg, stages, resume, overwrite, only_n)
    paths = []
    total = sum(len(cfg.seeds) * sum(a.measured_at(n) for a in arms) for n in n_values)
    bar = _progress() if progress else nullcontext()
    with bar as prog:
        task = prog.add_task("runs", total=total) if prog is not None else None
        for n in n_values:
            cache = SyntheticCache(cfg, stages, data, n)
            arms_n = [a for a in arms if a.measured_at(n)]
            records = _run_n(cfg, stages, data, n, cache, prog, task, poll_s, wait_timeout_s, arms_n)
            if len(arms_n) < len(cfg.arms_at(n)):
                records = _finished_records(cfg, stages, data, n)
                if records is None:
                    (prog.console if prog is not None else _console).print(
                        f"N={n}: the runs of {', '.join(a.name for a in arms_n) or 'no selected arm'} are finished; "
                        "the result is written once the other arms' runs are too")
                    continue
            paths.append(write_n_result(cfg, n, data, records, cache, overwrite))
    return paths


def _selected_arms(cfg: ExperimentConfig, only_arms: list[str] | None) -> list[ArmSettings]:
    """The arms named by ``only_arms`` (all when None), in the config's order; an unknown name is an error."""
    if not only_arms:
        return list(cfg.arms)
    names = [a.name for a in cfg.arms]
    unknown = [a for a in only_arms if a not in names]
    if unknown:
        raise ConfigError(f"--arm {unknown[0]!r}: not an arm of this config (its arms: {', '.join(names)})")
    return [a for a in cfg.arms if a.name in only_arms]


def _finished_records(cfg: ExperimentConfig, stages: Stages, data: ExperimentData, n: int) -> list[RunRecord] | None:
    """Every run record of N in the sweep's order (each checked against the config by :func:`ensure_run`, as
    a finished run is), or None while one is not finished yet."""
    order = [(seed, arm) for seed in cfg.seeds for arm in cfg.arms_at(n)]
    if not all(record_path(cfg.output, n, arm.name, seed).is_file() for seed, arm in order):
        return None
    return [ensure_run(cfg, stages, data, n, arm, seed, lambda: None) for seed, arm in order]


def prepare_sweep(
    cfg: ExperimentConfig, stages: Stages | None, resume: bool, overwrite: bool, only_n: list[int] | None
) -> tuple[list[int], Stages, ExperimentData]:
    """What every executor does first: pick the N values, prepare the output folder, load the data."""
    n_values = selected_n(cfg, only_n)
    if stages is None:
        from lesionforge.experiment.real_stages import LesionforgeStages

        stages = LesionforgeStages()
    prepare_output(cfg, resume, overwrite)
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    return n_values, stages, stages.load_data(cfg)


def write_n_result(cfg: ExperimentConfig, n: int, data: ExperimentData, records: list[RunRecord],
                   cache: SyntheticCache, overwrite: bool) -> Path:
    """The result JSON of N (with its grid of samples) from its finished runs and synthetic sets."""
    synth = {name: s for name in _generators_used(cfg, n) if (s := cache.get(name, make=False)) is not None}
    grid = write_grid_samples(cfg, n, data, synth)
    result = build_result(cfg, n, records, synth, data.sources, grid, data.subsets,
                          arm_quality(cfg, n, data, cache, synth))
    return _write_result(cfg, n, result, overwrite)


def arm_quality(cfg: ExperimentConfig, n: int, data: ExperimentData, cache: SyntheticCache,
                synth: dict[str, SyntheticSet]) -> dict[str, dict]:
    """Quality and memorization of the set each synthetic arm trains on (kept samples for filtered arms);
    cached in the set's work folder, so a resumed sweep reads it back."""
    out: dict[str, dict] = {}
    for arm in cfg.arms_at(n):
        s = synth.get(arm.generator) if arm.kind == "synthetic" else None
        if s is None:
            continue
        spec = cfg.generators[arm.generator]
        kept_only = arm.filtered and spec.filter is not None
        # the images the generator saw: the labelled N, and every train image when it used unlabelled ones
        train = data.pool if uses_unlabelled(cfg, arm.generator) else data.labelled(n)
        out[arm.name] = set_quality(s, cache.work_dir(arm.generator), data, train, cfg.resolution, kept_only)
    return out


def ensure_run(cfg: ExperimentConfig, stages: Stages, data: ExperimentData, n: int, arm: ArmSettings, seed: int,
               synthetic: Callable[[], SyntheticSet | None]) -> RunRecord:
    """Do run (N, arm, seed) unless it is finished, under its claim; returns its record (checked against the
    config). Raises :class:`Busy` when another worker holds the run (or, through ``synthetic``, its set)."""
    seg_cfg = segment_config_for(cfg, arm, seed)
    path = record_path(cfg.output, n, arm.name, seed)
    if not path.is_file():
        lock = run_dir(cfg.output, n, arm.name, seed) / "run.lock"
        if not claim(lock):
            raise Busy(f"seed {seed} / {arm.name}", lock)
        try:
            if not path.is_file():  # another worker may have finished it since our check
                write_record(path, _run_one(cfg, stages, data, n, arm, seed, seg_cfg, synthetic()))
                append_run_log(cfg.output, "done", n, arm.name, seed)
        finally:
            release(lock)
    rec = read_record(path)
    if arm.loop is not None and (rec.loop or {}).get("settings") != arm.loop.model_dump(mode="json"):
        raise ConfigError(f"{path}: this closed-loop run finished with other loop settings than the config asks; "
                          "use a new output folder or --overwrite")
    if rec.segment_config != seg_cfg:
        raise ConfigError(
            f"{path}: finished with different segmentation settings than the config asks; "
            "use a new output folder or --overwrite"
        )
    return rec


def _run_n(
    cfg: ExperimentConfig, stages: Stages, data: ExperimentData, n: int, cache: SyntheticCache, prog, task,
    poll_s: float = 30.0, wait_timeout_s: float = WAIT_TIMEOUT_S, arms: list[ArmSettings] | None = None,
) -> list[RunRecord]:
    """Every (seed, arm) run of N (of ``arms``: all by default), in order. Runs claimed by another worker are
    passed over and waited for."""
    order = [(seed, arm) for seed in cfg.seeds for arm in (cfg.arms_at(n) if arms is None else arms)]
    # Synthetic arms first: the first one trains the generator, the long pole of a sweep, so that the other
    # workers fill the real-data runs meanwhile instead of waiting for it at the end.
    pending = sorted(order, key=lambda sa: (sa[0], sa[1].generator is None))
    done: dict[tuple[int, str], RunRecord] = {}
    wait = _Wait(n, prog, task, poll_s, wait_timeout_s)
    while pending:
        deferred = []  # (seed, arm, what it waits on, that claim's file)
        for seed, arm in pending:
            if prog is not None:
                prog.update(task, description=f"N={n} seed={seed} {arm.name}")
            get = (lambda g=arm.generator: cache.get(g)) if arm.generator is not None else (lambda: None)
            try:
                rec = ensure_run(cfg, stages, data, n, arm, seed, get)
            except Busy as busy:
                deferred.append((seed, arm, str(busy), busy.lock))
                continue
            done[(seed, arm.name)] = rec
            if prog is not None:
                prog.advance(task)
        if deferred and len(deferred) == len(pending):  # the others hold every remaining run: wait for them
            time.sleep(wait.tick([(what, lock) for _, _, what, lock in deferred]))
        else:
            wait.reset()
        pending = [(seed, arm) for seed, arm, _, _ in deferred]
    return [done[(seed, arm.name)] for seed, arm in order]


class _Wait:
    """A worker's wait for runs other workers hold: says on what and for how long, gives up after a while."""

    def __init__(self, n: int, prog, task, poll_s: float, timeout_s: float):
        self.n, self.prog, self.task = n, prog, task
        self.poll_s, self.timeout_s = poll_s, timeout_s
        self.since: float | None = None
        self.told: str | None = None

    def reset(self) -> None:
        """Some run finished: the clock starts again at the next wait."""
        self.since, self.told = None, None

    def tick(self, held: list[tuple[str, Path]]) -> float:
        """Note one more look at the held runs; returns how long to sleep before the next one."""
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        what, lock = held[0]
        who = holder(lock)
        more = f" and {len(held) - 1} more" if len(held) > 1 else ""
        line = f"N={self.n}: waiting for {what}{more} (held by {who or 'another worker'})"
        waited = now - self.since
        if waited > self.timeout_s:
            seen = f", last seen {duration_text(who.age_s)} ago" if who else ""
            raise WaitTimeoutError(
                f"{lock}: gave up after {duration_text(waited)} waiting for N={self.n} {what}{more} (held by "
                f"{who or 'another worker'}{seen}); that worker still finishes and writes the result; if it hangs, "
                "stop it and run again (--wait-timeout sets the wait)"
            )
        if self.prog is not None:
            self.prog.update(self.task, description=f"{line} for {duration_text(waited)}")
        if line != self.told:  # once per wait and whenever what it waits on changes
            (self.prog.console if self.prog is not None else _console).print(line)
            self.told = line
        # soon at first (a worker killed just now is taken over within seconds), then every poll_s
        return min(self.poll_s, 1.0 + waited / 10)


def _run_one(
    cfg: ExperimentConfig, stages: Stages, data: ExperimentData, n: int, arm: ArmSettings, seed: int,
    seg_cfg: dict[str, Any], synthetic: SyntheticSet | None,
) -> RunRecord:
    folder = run_dir(cfg.output, n, arm.name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    append_run_log(cfg.output, "start", n, arm.name, seed)
    seed_everything(seed)
    t0 = time.perf_counter()
    with progress_label(f"N={n} seed={seed} {arm.name}"):  # names the arm on the stage's own bars
        out = stages.run_arm(cfg, arm, seg_cfg, n, data, synthetic, folder)
    elapsed = round(time.perf_counter() - t0, 3)
    return RunRecord(
        n_labelled=n, arm=arm.name, seed=seed, segment_config=seg_cfg,
        timings={**out.pop("timings", {}), "run_s": elapsed},
        # the set it trained on (a closed-loop run trains on its own rounds' sets, kept in its loop record)
        synthetic_set=fingerprint(synthetic)["fingerprint"] if synthetic is not None and arm.kind == "synthetic"
        else None, machine=machine_facts(), **out,
    )


def selected_n(cfg: ExperimentConfig, only_n: list[int] | None) -> list[int]:
    if not only_n:
        return list(cfg.n_labelled)
    unknown = sorted(set(only_n) - set(cfg.n_labelled))
    if unknown:
        raise ConfigError(f"N = {unknown} is not among the config's n_labelled {cfg.n_labelled}")
    return [n for n in cfg.n_labelled if n in only_n]


def _generators_used(cfg: ExperimentConfig, n: int) -> list[str]:
    return sorted({a.generator for a in cfg.arms_at(n) if a.generator is not None})


def prepare_output(cfg: ExperimentConfig, resume: bool, overwrite: bool) -> None:
    # --overwrite means start over (stale runs must not be resumed), but only in a sweep folder of our own;
    # the demo runs its sweep in its own folder
    claim_output(cfg.output, "experiment sweep", overwrite=overwrite, resume=resume, accept=("demo",))
    save_config(cfg, cfg.output / "config.yaml")


def _write_result(cfg: ExperimentConfig, n: int, result: dict, overwrite: bool) -> Path:
    path = result_path(cfg, n)
    if path.is_file() and not overwrite:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old.get("config_hash") != result["config_hash"]:
            # not "--overwrite": that deletes the sweep folder, every finished run with it
            raise OverwriteError(
                f"{path} holds the result of another config (hash {old.get('config_hash')}, this config "
                f"{result['config_hash']}); every run is kept: move that file aside and run again, and this "
                "config's result is written from the finished runs"
            )
    write_json_atomic(path, result)
    return path


def _progress() -> StageProgress:
    # off a terminal: one line when a run starts (or the worker waits) and one when it is done
    return StageProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), line_share=0,
        line_on_description=True,
    )
