"""A synthetic set as the review page and the export see it, and where review decisions are written.

Decisions are written into the set's manifest itself (the single source of what a set holds): each
synthetic row gets ``provenance.reviews = {reviewer: {"decision": "accepted" | "rejected", "at": ...}}``.
Every decision rewrites the manifest at once through a temporary file and ``os.replace`` (a crash or a
closed tab loses nothing, and a reader never sees half a file), under an exclusive lock on
``.<manifest>.lock`` so that two review servers on the same set (two reviewers) never lose each other's
writes: each write re-reads the manifest under the lock and changes only its own reviewer's entry of one row.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lesionforge.data.manifest import Provenance, Sample, read_manifest, set_manifest, write_manifest
from lesionforge.errors import DataError

DECISIONS = ("accepted", "rejected")
AUDIT_NAMES = ("memorization.json", "memorization/memorization.json")


def find_manifest(set_dir: Path, manifest: Path | None = None) -> Path:
    """The manifest to review: ``manifest`` if given, else the set's filtered manifest, else its plain one."""
    if manifest is not None:
        if not manifest.is_file():
            raise DataError(manifest, "manifest not found")
        return manifest
    return set_manifest(set_dir)


def inside(root: Path, path: str | Path) -> Path | None:
    """``path`` (relative to ``root`` or absolute) resolved, or ``None`` when it lies outside ``root``
    (``..`` segments and symbolic links are followed before the check)."""
    root = root.resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root / p).resolve()
    return full if full.is_relative_to(root) else None


def load_audit(set_dir: Path, audit: Path | None) -> tuple[dict[str, dict], dict]:
    """The memorization audit's match per synthetic id and its settings (file, percentile, extractor, n_train);
    ``({}, {})`` when none is given or found beside the set."""
    if audit is None:
        audit = next((set_dir / n for n in AUDIT_NAMES if (set_dir / n).is_file()), None)
        if audit is None:
            return {}, {}
    if not audit.is_file():
        raise DataError(audit, "memorization audit not found")
    try:
        report = json.loads(audit.read_text(encoding="utf-8"))
        matches = {m["id"]: m for m in report["matches"]}
        info = {"file": str(audit), "percentile": report.get("percentile"), "n_train": report.get("n_train"),
                "extractor": (report.get("extractor") or {}).get("name")}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(audit, f"not a memorization audit (memorization.json): {e}") from e
    return matches, info


def flagged(match: dict | None) -> bool:
    return bool(match and (match.get("flagged_pixel") or match.get("flagged_feature")))


@dataclass
class ReviewSet:
    """A set folder, its manifest, its memorization audit and (optionally) the real manifest the audit used."""

    root: Path
    manifest: Path
    samples: list[Sample]  # paths resolved
    audit: dict[str, dict] = field(default_factory=dict)
    real: list[Sample] = field(default_factory=list)  # paths resolved
    audit_info: dict = field(default_factory=dict)
    real_manifest: Path | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _undo: dict[str, list[tuple[str, dict | None]]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, set_dir: str | Path, manifest: Path | None = None, audit: Path | None = None,
             real: Path | None = None, real_split: str | None = None) -> ReviewSet:
        root = Path(set_dir).resolve()
        if not root.is_dir():
            raise DataError(root, "set folder not found")
        path = find_manifest(root, manifest).resolve()
        if not path.is_relative_to(root):
            raise DataError(path, f"the manifest must lie inside the set folder {root}")
        samples = read_manifest(path)
        for s in samples:  # paths read from the manifest stay inside the set folder
            for p in (s.image, *s.masks):
                if inside(root, p) is None:
                    raise DataError(path, f"sample {s.id!r}: {p} lies outside the set folder {root}")
        real_rows = [s for s in read_manifest(real) if s.origin == "real" and real_split in (None, s.split)] \
            if real is not None else []
        matches, info = load_audit(root, audit)
        return cls(root, path, samples, matches, real_rows, info, real)

    @property
    def synthetic(self) -> list[Sample]:
        return [s for s in self.samples if s.origin == "synthetic"]

    def sample(self, sid: str) -> Sample | None:
        return self._by_id.get(("set", sid))

    def real_sample(self, sid: str) -> Sample | None:
        return self._by_id.get(("real", sid))

    def __post_init__(self) -> None:
        self._by_id = {("set", s.id): s for s in self.samples} | {("real", s.id): s for s in self.real}

    def rows(self, reviewer: str) -> list[dict]:
        """What the grid shows of each synthetic sample, with ``reviewer``'s own decision only."""
        decisions = self.decisions()
        real_ids = {s.id for s in self.real}
        out = []
        for s in self.synthetic:
            val = (s.provenance.validation if s.provenance else None) or {}
            m = self.audit.get(s.id)
            nearest = m.get("pixel_nearest_id") if m else None
            out.append({
                "id": s.id, "image": str(Path(s.image).relative_to(self.root)), "has_mask": s.has_mask,
                "dice": val.get("dice"), "confidence": val.get("confidence"), "kept": val.get("kept"),
                "flagged": flagged(m), "nearest_id": nearest,
                "nearest_distance": m.get("pixel_distance") if m else None,
                "nearest_shown": nearest in real_ids, "generator": s.provenance.generator if s.provenance else None,
                "decision": decisions.get(s.id, {}).get(reviewer, {}).get("decision"),
                "n_other_reviews": len(set(decisions.get(s.id, {})) - {reviewer}),
            })
        return out

    def decisions(self) -> dict[str, dict[str, dict]]:
        """``{sample id: {reviewer: {"decision", "at"}}}`` as now on disk."""
        return {s.id: dict(s.provenance.reviews) for s in read_manifest(self.manifest, resolve=False)
                if s.provenance and s.provenance.reviews}

    def decide(self, reviewer: str, sid: str, decision: str | None) -> dict | None:
        """Write ``reviewer``'s decision on ``sid`` (``None`` clears it) into the manifest; returns the entry."""
        if decision is not None and decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        entry = {"decision": decision, "at": datetime.now(UTC).isoformat(timespec="seconds")} if decision else None
        before = self._write(reviewer, sid, entry)
        self._undo.setdefault(reviewer, []).append((sid, before))
        return entry

    def undo(self, reviewer: str) -> str | None:
        """Restore ``reviewer``'s entry before their last decision (in this server's session); returns its id."""
        stack = self._undo.get(reviewer) or []
        if not stack:
            return None
        sid, before = stack.pop()
        self._write(reviewer, sid, before)
        return sid

    def _write(self, reviewer: str, sid: str, entry: dict | None) -> dict | None:
        """Set (or with ``None`` remove) ``reviewer``'s entry of one synthetic row; returns the entry it had."""
        with self._locked():
            rows = read_manifest(self.manifest, resolve=False)
            i = next((k for k, s in enumerate(rows) if s.id == sid and s.origin == "synthetic"), None)
            if i is None:
                raise KeyError(sid)
            prov = rows[i].provenance or Provenance()
            reviews = dict(prov.reviews or {})
            before = reviews.pop(reviewer, None)
            if entry is not None:
                reviews[reviewer] = entry
            rows[i] = rows[i].model_copy(update={"provenance": prov.model_copy(update={"reviews": reviews or None})})
            mode = self.manifest.stat().st_mode
            write_manifest(self.manifest, rows)
            os.chmod(self.manifest, stat.S_IMODE(mode))  # the temporary file was private (0600): keep the user's mode
            k = next(k for k, s in enumerate(self.samples) if s.id == sid)  # the copy in memory follows the file
            mine = self.samples[k].provenance or Provenance()
            self.samples[k] = self.samples[k].model_copy(update={"provenance": mine.model_copy(update={
                "reviews": reviews or None})})
            self._by_id[("set", sid)] = self.samples[k]
        return before

    def _locked(self):
        return file_lock(self.manifest.with_name(f".{self.manifest.name}.lock"), self._lock)


@contextmanager
def file_lock(lock_path: Path, thread_lock: threading.Lock) -> Iterator[None]:
    """Hold ``thread_lock`` (this server's threads) and an exclusive ``flock`` on ``lock_path`` (other
    processes, e.g. a second reviewer's server on the same set)."""
    with thread_lock, open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
