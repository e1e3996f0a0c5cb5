"""Per-run records: what one finished (N, arm, seed) run stores, read back on resume.

A run record holds the per-image test metrics (for pairing by image id), the aggregated metrics, the
segmentation settings it was trained with, and timings. It is written atomically to
``<output>/n<N>/<arm>/seed<S>/run.json`` only when the run has finished, so its presence means "done".

The run log ``<output>/runs.log`` (JSON lines) tells every start and end of a run by any worker: which host
and process, when. A run resumed after a killed worker shows two starts and one "done"; a run done twice
would show two "done" lines.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lesionforge.data.bands import BANDS
from lesionforge.errors import DataError
from lesionforge.utils import write_json_atomic

__all__ = ["BANDS", "RunRecord"]  # BANDS: re-exported for the result readers (one definition: data.bands)


class RunRecord(BaseModel):
    """One finished run. Per-image lists are aligned with ``ids``; ``missed``/``lesions`` (and per band
    ``band_missed``/``band_lesions``) are optional per-image lesion counts, used to bootstrap miss rates over
    images when present."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    n_labelled: int
    arm: str
    seed: int
    ids: list[str]
    dice: list[float]
    iou: list[float]
    missed: list[int] | None = None
    lesions: list[int] | None = None
    band_missed: dict[str, list[int]] | None = None  # per band: missed lesions per image
    band_lesions: dict[str, list[int]] | None = None  # per band: lesions per image
    mdice: float
    miou: float
    miss_rate: float | None
    miss_rate_by_band: dict[str, float | None]
    cases: list[str] | None = None  # volume datasets: test case ids, aligned with ``dice3d``
    dice3d: list[float] | None = None  # per case: 3D Dice of the volume reassembled from its slice predictions
    mdice3d: float | None = None
    subsets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    transfer: dict[str, dict[str, Any]] = Field(default_factory=dict)
    best_val_mdice: float | None = None
    segment_config: dict[str, Any] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict)
    loop: dict[str, Any] | None = None  # closed-loop arms: every round's targets, counts and diagnosis summary
    #: synthetic arms: the content fingerprint of the set this run trained on (set_fingerprint.fingerprint), so a
    #: sweep whose runs were carried between machines shows which draw of a rebuilt set each run used
    synthetic_set: str | None = None
    #: where the run ran (devices.machine_facts); None in records written before it was kept
    machine: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _aligned(self) -> RunRecord:
        n = len(self.ids)
        for name in ("dice", "iou", "missed", "lesions"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} values for {n} image ids")
        for name in ("band_missed", "band_lesions"):
            for band, v in (getattr(self, name) or {}).items():
                if len(v) != n:
                    raise ValueError(f"{name}[{band}] has {len(v)} values for {n} image ids")
        if (self.cases is None) != (self.dice3d is None) or len(self.cases or []) != len(self.dice3d or []):
            raise ValueError("cases and dice3d must be given together, one value per case")
        missing = [b for b in BANDS if b not in self.miss_rate_by_band]
        if missing:
            raise ValueError(f"miss_rate_by_band lacks bands {missing}")
        return self

    def per_image(self, metric: str) -> dict[str, float]:
        """``{image id: value}`` of ``dice`` or ``iou``; ``{case id: value}`` of ``dice3d``."""
        if metric == "dice3d":
            return dict(zip(self.cases or [], self.dice3d or [], strict=True))
        return dict(zip(self.ids, getattr(self, metric), strict=True))


def run_dir(output: Path, n: int, arm: str, seed: int) -> Path:
    """Folder of one run: ``<output>/n<N>/<arm>/seed<S>``."""
    return Path(output) / f"n{n}" / arm / f"seed{seed}"


def record_path(output: Path, n: int, arm: str, seed: int) -> Path:
    return run_dir(output, n, arm, seed) / "run.json"


def write_record(path: Path, record: RunRecord) -> None:
    """Write a run record atomically (a crash never leaves a half-written 'finished' marker)."""
    write_json_atomic(path, record.model_dump(mode="json"))


def read_record(path: Path) -> RunRecord:
    """Read a run record; a corrupt or foreign file is a :class:`DataError` naming it."""
    try:
        return RunRecord.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as e:
        raise DataError(path, f"not a valid experiment run record ({e}); delete it to rerun that run") from e


def run_log_path(output: Path) -> Path:
    return Path(output) / "runs.log"


def append_run_log(output: Path, event: str, n: int, arm: str, seed: int) -> None:
    """Append one event line to the sweep's run log: one ``O_APPEND`` write (lines of concurrent workers
    never interleave) and an fsync."""
    line = json.dumps({"event": event, "n_labelled": n, "arm": arm, "seed": seed, "host": socket.gethostname(),
                       "pid": os.getpid(), "time": round(time.time(), 3)}) + "\n"
    fd = os.open(run_log_path(output), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_run_log(output: Path) -> list[dict[str, Any]]:
    """The run log's events, oldest first (none when there is no log). A torn last line (a worker killed
    mid-write) is skipped."""
    path = run_log_path(output)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events
