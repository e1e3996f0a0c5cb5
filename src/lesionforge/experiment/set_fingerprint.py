"""The content fingerprint of a sweep's synthetic sets, to tell whether a set rebuilt on another machine is the
one the carried runs trained on (see :mod:`lesionforge.experiment.carry`).

A set is rebuilt from its config with the same seeds; on the same hardware and library versions it comes out
bit for bit the same, elsewhere it may not (floating-point order). The fingerprint hashes every drawn image and
mask file and the ids the filter kept, so a rebuilt set either matches or is recorded as a different draw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lesionforge.data.manifest import is_kept, read_manifest
from lesionforge.experiment.stages import SyntheticSet
from lesionforge.utils import file_sha256, write_json_atomic

CARRIED = "carried-sets.json"  # in the output folder: the fingerprints of the sets the carried runs used


def fingerprint(s: SyntheticSet) -> dict[str, Any]:
    """``{"fingerprint": 16 hex, "n_samples", "n_kept"}`` of a made set (its filtered manifest when filtered)."""
    rows = sorted(read_manifest(s.filtered_manifest or s.manifest), key=lambda r: r.id)
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r.id, file_sha256(r.image), [file_sha256(m) for m in r.masks],
                             is_kept(r, s.filtered_manifest is not None)]).encode())
    return {"fingerprint": h.hexdigest()[:16], "n_samples": len(rows),
            "n_kept": sum(is_kept(r, s.filtered_manifest is not None) for r in rows)}


def sweep_fingerprints(output: Path) -> dict[str, dict[str, Any]]:
    """Fingerprint of every made set under ``<output>/cache``, by its folder name (N, generator, settings key)."""
    out = {}
    for marker in sorted((Path(output) / "cache").glob("synthetic-n*/synthetic.json")):
        s = SyntheticSet.from_dict(json.loads(marker.read_text(encoding="utf-8")))
        out[marker.parent.name] = fingerprint(s)
    return out


def note_carried(output: Path, sets: dict[str, dict[str, Any]]) -> None:
    """Keep the fingerprints of carried sets in the output folder (earlier notes are kept)."""
    path = Path(output) / CARRIED
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json_atomic(path, {**sets, **old})


def compare_with_carried(output: Path, work_dir: Path, s: SyntheticSet) -> dict[str, Any] | None:
    """For a set just made: ``{"then", "now", "same"}`` against the carried runs' set of the same folder name,
    or None when no carried run used it."""
    path = Path(output) / CARRIED
    then = json.loads(path.read_text(encoding="utf-8")).get(work_dir.name) if path.is_file() else None
    if then is None:
        return None
    now = fingerprint(s)
    return {"then": then["fingerprint"], "now": now["fingerprint"], "same": then["fingerprint"] == now["fingerprint"]}
