"""``experiment run --executor ray``: every unit of a sweep as a Ray task, for a cluster of many machines.

The units of one N and what each waits for::

    generator training ──> synthesis shards (k) ──┐
    validator training ───────────────────────────┴─> synthetic set (merge, filter) ──> runs of its arms
    runs of arms without a generator: at once

Each unit calls the local runner's own stage code, writes where it writes and under the same cache keys, so a
Ray sweep and a local one give the same numbers and share (and resume) each other's outputs; the driver writes
the result JSON as the local runner does. Stages without the unit methods of
:class:`~lesionforge.experiment.real_stages.LesionforgeStages` (test fakes) get one task per synthetic set.

The output folder must be on a file system every node sees (as for several local workers). A task never leaves
a half-written result: records, markers, manifests and checkpoints are written atomically (temp file + rename)
and a rerun task resumes from the last checkpoint; retries are in :mod:`lesionforge.raycluster`. Tasks still
take the runner's claim files, so a Ray sweep may share its folder with local workers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from lesionforge.experiment.config import PASTE_METHOD, UNION_METHOD, ExperimentConfig, resolved_generator_config
from lesionforge.experiment.keys import cache_key
from lesionforge.experiment.locks import Busy
from lesionforge.experiment.records import RunRecord, record_path
from lesionforge.experiment.runner import SyntheticCache, ensure_run, filter_key, prepare_sweep, write_n_result
from lesionforge.experiment.stages import ExperimentData, Stages, SyntheticSet
from lesionforge.raycluster import MAX_RETRIES, TaskResources, connect, submit, value
from lesionforge.utils import write_json_atomic

POLL_S = 5.0  # how often a task looks again at a claim another worker holds


def run_experiment_ray(
    cfg: ExperimentConfig, stages: Stages | None = None, *, address: str | None = None, resume: bool = True,
    overwrite: bool = False, only_n: list[int] | None = None, resources: TaskResources | None = None,
    max_retries: int = MAX_RETRIES, shards: int | None = None,
) -> list[Path]:
    """Run the sweep of ``cfg`` on the Ray cluster at ``address`` (None: a local instance); returns the result
    JSON paths, as :func:`~lesionforge.experiment.runner.run_experiment`. ``shards``: synthesis shards per
    synthetic set (default: one per CPU of the cluster, at least a batch each)."""
    ray = connect(address)
    resources = (resources or TaskResources(num_cpus=float(cfg.threads or 1))).resolved(ray)
    n_values, stages, data = prepare_sweep(cfg, stages, resume, overwrite, only_n)
    data_ref = ray.put(data)  # shipped once to each node, not once per task
    graph = _Graph(ray, cfg, stages, data, data_ref, resources, max_retries, shards)
    pending = {n: graph.submit_n(n) for n in n_values}  # every N at once: the cluster fills itself
    paths = []
    for n in n_values:
        records = value(ray, pending[n])
        paths.append(write_n_result(cfg, n, data, records, SyntheticCache(cfg, stages, data, n), overwrite))
    return paths


class _Graph:
    """Submits the tasks of a sweep with their dependencies; a unit already made is not submitted."""

    def __init__(self, ray, cfg: ExperimentConfig, stages: Stages, data: ExperimentData, data_ref,
                 resources: TaskResources, max_retries: int, shards: int | None):
        self.ray, self.cfg, self.stages, self.data, self.data_ref = ray, cfg, stages, data, data_ref
        self.resources, self.max_retries = resources, max_retries
        self.shards = shards or max(1, int(ray.cluster_resources().get("CPU", 1) // resources.num_cpus))
        self.units = hasattr(stages, "generator_for")  # the real stages: train, draw and filter as separate tasks
        self._shared: dict[str, Any] = {}  # one task per generator / validator folder shared by several sets
        self._sets: dict[tuple[int, str], Any] = {}  # one task per synthetic set

    def _submit(self, name: str, fn, *args):
        return submit(self.ray, name, self.resources, self.max_retries, fn, *args)

    def submit_n(self, n: int) -> list:
        """Refs of the records of N in the runner's order: tasks for unfinished runs, finished ones read here."""
        cfg, sets = self.cfg, {}
        refs = []
        for seed in cfg.seeds:
            for arm in cfg.arms_at(n):
                if record_path(cfg.output, n, arm.name, seed).is_file():  # finished: read (and checked) here
                    refs.append(self.ray.put(ensure_run(cfg, self.stages, self.data, n, arm, seed, lambda: None)))
                    continue
                synth = None
                if arm.generator is not None:
                    if arm.generator not in sets:
                        sets[arm.generator] = self._synthetic(n, arm.generator)
                    synth = sets[arm.generator]
                refs.append(self._submit(f"run n{n}/{arm.name}/seed{seed}", _run, cfg, self.stages, n, arm.name,
                                         seed, self.data_ref, synth))
        return refs

    def _synthetic(self, n: int, name: str):
        """The task that makes (or reads) synthetic set ``name`` of N, submitted once (a union's parts are sets
        arms use too)."""
        if (n, name) not in self._sets:
            self._sets[(n, name)] = self._submit_synthetic(n, name)
        return self._sets[(n, name)]

    def _submit_synthetic(self, n: int, name: str):
        """The task that makes (or reads) synthetic set ``name`` of N, after the tasks it needs."""
        cfg, stages = self.cfg, self.stages
        cache = SyntheticCache(cfg, stages, self.data, n)
        label = f"n{n}/{name}"
        if cfg.generators[name].method == UNION_METHOD:  # after the sets it joins
            parts = [self._synthetic(n, p) for p in cfg.generators[name].of]
            return self._submit(f"synthetic {label}", _synthetic_set, cfg, stages, n, name, self.data_ref, None,
                                *parts)
        if cache.get(name, make=False) is not None or not self.units or cfg.generators[name].method == PASTE_METHOD:
            return self._submit(f"synthetic {label}", _synthetic_set, cfg, stages, n, name, self.data_ref)
        spec = cfg.generators[name]
        gen_key = cache_key(n, resolved_generator_config(cfg, spec).model_dump(mode="json"), spec.method,
                            spec.use_unlabelled)
        if gen_key not in self._shared:
            self._shared[gen_key] = self._submit(f"generator {label}", _train_generator, cfg, stages, n, name,
                                                 self.data_ref)
        gen = self._shared[gen_key]
        after = []
        if spec.filter is not None:
            val_key = cache_key(n, filter_key(cfg, name), spec.use_unlabelled)
            if val_key not in self._shared:
                self._shared[val_key] = self._submit(f"validator {label}", _train_validator, cfg, stages, n, name,
                                                     self.data_ref)
            after.append(self._shared[val_key])
        from lesionforge.generate.shards import split_indices, todo_indices

        synth_dir = cache.work_dir(name) / "synthetic"
        total = stages.synthesis_args(cfg, spec, n, self.data)["n"]
        todo = todo_indices(synth_dir, total)
        parts = split_indices(todo, min(self.shards, math.ceil(len(todo) / max(spec.batch_size, 1)) or 1))
        shards = [self._submit(f"synthesis {label} shard {k}", _synthesize_shard, cfg, stages, n, name,
                               self.data_ref, gen, k, part) for k, part in enumerate(parts)]
        return self._submit(f"synthetic {label}", _synthetic_set, cfg, stages, n, name, self.data_ref, gen,
                            *after, *shards)


def _until_free(fn):
    """``fn()``, looking again every :data:`POLL_S` while another worker (a local one) holds its claim."""
    while True:
        try:
            return fn()
        except Busy:
            time.sleep(POLL_S)


# The task bodies (module-level: Ray ships them by reference).

def _train_generator(cfg: ExperimentConfig, stages, n: int, name: str, data: ExperimentData) -> dict[str, Any]:
    t0 = time.perf_counter()
    synth_dir = SyntheticCache(cfg, stages, data, n).work_dir(name) / "synthetic"
    gen = stages.generator_for(cfg, cfg.generators[name], n, data, synth_dir)
    return {"dir": str(gen), "seconds": time.perf_counter() - t0}


def _train_validator(cfg: ExperimentConfig, stages, n: int, name: str, data: ExperimentData) -> str | None:
    path = stages.validator_for(cfg, cfg.generators[name], n, data)
    return None if path is None else str(path)


def _synthesize_shard(cfg: ExperimentConfig, stages, n: int, name: str, data: ExperimentData, gen: dict[str, Any],
                      k: int, indices: list[int]) -> dict[str, Any]:
    from lesionforge.generate.shards import part_dir
    from lesionforge.generate.synthesize import synthesize

    start = time.time()
    synth_dir = SyntheticCache(cfg, stages, data, n).work_dir(name) / "synthetic"
    args = stages.synthesis_args(cfg, cfg.generators[name], n, data)
    synthesize(gen["dir"], part_dir(synth_dir, k), **args, indices=indices, resume=True, progress=False)
    return {"n": len(indices), "start": start, "end": time.time()}


def _synthetic_set(cfg: ExperimentConfig, stages, n: int, name: str, data: ExperimentData,
                   gen: dict[str, Any] | None = None, *after: Any) -> SyntheticSet:
    """Merge the shards (if any) and make the set with the runner's own code: it finds the generator, the
    samples and the validator made and only filters; the set's timings are then the tasks' own."""
    cache = SyntheticCache(cfg, stages, data, n)
    synth_dir = cache.work_dir(name) / "synthetic"
    shards = [a for a in after if isinstance(a, dict)]
    if shards:
        from lesionforge.generate.shards import merge_parts

        merge_parts(synth_dir)
    made_before = cache.get(name, make=False) is not None
    s = _until_free(lambda: cache.get(name))
    if gen is not None and shards and not made_before:
        span = max(a["end"] for a in shards) - min(a["start"] for a in shards)
        drawn = sum(a["n"] for a in shards)
        s.info["timings"].update(train_generator_s=round(gen["seconds"], 3), synthesize_s=round(span, 3),
                                 synthesis_images_per_s=round(drawn / max(span, 1e-9), 3), synthesis_shards=len(shards))
        write_json_atomic(cache.work_dir(name) / "synthetic.json", s.to_dict())
    return s


def _run(cfg: ExperimentConfig, stages, n: int, arm_name: str, seed: int, data: ExperimentData,
         synthetic: SyntheticSet | None) -> RunRecord:
    arm = next(a for a in cfg.arms if a.name == arm_name)
    return _until_free(lambda: ensure_run(cfg, stages, data, n, arm, seed, lambda: synthetic))
