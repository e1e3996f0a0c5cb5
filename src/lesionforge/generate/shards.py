"""A synthesis split into shards by sample index (e.g. one per Ray worker), merged into one output folder.

Every sample's choices and noise depend only on (run seed, sample index) (see :mod:`~lesionforge.generate.
synthesize`), so a shard drawing indices ``a..b`` makes the very bytes one process would. Each shard writes its
own part folder ``<out>/.parts/part-<k>`` (a killed shard resumes there); :func:`merge_parts` then moves the
parts' files into ``<out>`` and rewrites the manifest in index order atomically, so ``<out>`` equals the
one-process synthesis file for file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from lesionforge.data.manifest import Sample, read_manifest, write_manifest
from lesionforge.errors import DataError, OverwriteError
from lesionforge.generate.synthesize import MANIFEST, RUN_FILE
from lesionforge.utils import write_json_atomic

PARTS = ".parts"


def todo_indices(out_dir: str | Path, n: int) -> list[int]:
    """Sample indices of ``range(n)`` not yet in ``out_dir``'s manifest (all of them for a new folder)."""
    path = Path(out_dir) / MANIFEST
    done = {s.provenance.sample_index for s in read_manifest(path, resolve=False)} if path.is_file() else set()
    return [i for i in range(n) if i not in done]


def split_indices(indices: Sequence[int], shards: int) -> list[list[int]]:
    """``indices`` cut into at most ``shards`` contiguous, nearly equal, non-empty runs (in order)."""
    shards = max(1, min(shards, len(indices)))
    size, extra = divmod(len(indices), shards)
    out, start = [], 0
    for k in range(shards):
        stop = start + size + (k < extra)
        out.append(list(indices[start:stop]))
        start = stop
    return [part for part in out if part]


def part_dir(out_dir: str | Path, k: int) -> Path:
    return Path(out_dir) / PARTS / f"part-{k:04d}"


def merge_parts(out_dir: str | Path) -> list[Sample]:
    """Move every part's samples into ``out_dir`` and write the manifest (earlier rows, then the parts' rows by
    sample index) atomically; then remove the parts. Safe to rerun after a crash at any point."""
    out_dir = Path(out_dir)
    parts = sorted((out_dir / PARTS).glob("part-*")) if (out_dir / PARTS).is_dir() else []
    _merge_run_file(out_dir, parts)
    before = read_manifest(out_dir / MANIFEST, resolve=False) if (out_dir / MANIFEST).is_file() else []
    have = {s.id for s in before}
    new: dict[str, Sample] = {}
    for part in parts:
        if (part / MANIFEST).is_file():
            new.update({s.id: s for s in read_manifest(part / MANIFEST, resolve=False) if s.id not in have})
    rows = sorted(new.values(), key=lambda s: s.provenance.sample_index)
    for s in rows:
        for rel in (s.image, *s.masks):
            _move_inside(out_dir, Path(rel), [p for p in parts if (p / rel).is_file()])
    write_manifest(out_dir / MANIFEST, [*before, *rows])
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    return read_manifest(out_dir / MANIFEST, resolve=False)


def _move_inside(out_dir: Path, rel: Path, holders: list[Path]) -> None:
    """Move ``part/rel`` to ``out_dir/rel`` (each file by one atomic rename); already moved is fine."""
    if rel.is_absolute() or ".." in rel.parts:
        raise DataError(out_dir / PARTS, f"a part's manifest names {rel}, outside its folder")
    dst = out_dir / rel
    if holders:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(holders[0] / rel, dst)
    elif not dst.is_file():
        raise DataError(out_dir / PARTS, f"{rel} is in a part's manifest but in no part and not in {out_dir}")


def _merge_run_file(out_dir: Path, parts: list[Path]) -> None:
    """The parts drew with the same settings (one generator, sampler, seed), and ``out_dir`` with those too."""
    settings = [json.loads((p / RUN_FILE).read_text(encoding="utf-8")) for p in parts if (p / RUN_FILE).is_file()]
    if not settings:
        return
    if any(s != settings[0] for s in settings[1:]):
        raise OverwriteError(f"{out_dir / PARTS}: the parts were drawn with different settings; remove it")
    path = out_dir / RUN_FILE
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings[0]:
            changed = sorted(k for k in settings[0] if before.get(k) != settings[0][k])
            raise OverwriteError(f"{out_dir} holds a synthesis run with other {', '.join(changed)}; "
                                 "use another --out or --overwrite")
    else:
        write_json_atomic(path, settings[0])


def synthesize_on_ray(
    generator_dir: str | Path, out_dir: str | Path, n: int, *, shards: int | None = None, address: str | None = None,
    resources=None, max_retries: int | None = None, resume: bool = True, overwrite: bool = False, **options,
) -> list[Sample]:
    """:func:`~lesionforge.generate.synthesize.synthesize` split into ``shards`` Ray tasks by sample index
    (default: one per CPU of the cluster), then merged: the same files as one process. ``options`` are
    synthesize's (conditions, sampler, seed, ...); a killed shard is rerun by Ray and resumes its part."""
    from lesionforge.outputs import claim_output
    from lesionforge.raycluster import MAX_RETRIES, TaskResources, connect, submit, value

    ray = connect(address)
    resources = (resources or TaskResources()).resolved(ray)
    out_dir = claim_output(out_dir, "synthetic set", overwrite=overwrite, resume=resume)  # --overwrite: starts over
    merge_parts(out_dir)  # parts of an interrupted run count as drawn
    parts = split_indices(todo_indices(out_dir, n), shards or max(1, int(ray.cluster_resources().get("CPU", 1))))
    options.pop("progress", None)
    shared = ray.put(options)  # the conditions (backgrounds, real pairs) go to each node once
    refs = [submit(ray, f"synthesis shard {k}", resources, MAX_RETRIES if max_retries is None else max_retries,
                   _draw_part, str(generator_dir), str(part_dir(out_dir, k)), n, part, shared)
            for k, part in enumerate(parts)]
    value(ray, refs)
    return merge_parts(out_dir)


def _draw_part(generator_dir: str, part: str, n: int, indices: list[int], options: dict) -> int:
    from lesionforge.generate.synthesize import synthesize

    synthesize(generator_dir, part, n, indices=indices, resume=True, progress=False, **options)
    return len(indices)
