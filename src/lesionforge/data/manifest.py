"""The sample record and its JSONL manifest.

A manifest row is one (image, mask) pair or one image-only sample. Real samples come from readers;
synthetic ones are written by ``lesionforge synthesize`` with their provenance filled in.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lesionforge.errors import DataError, DuplicateIdError
from lesionforge.utils import atomic_path


class SliceRef(BaseModel):
    """A 2D slice of a 3D volume: ``index`` along ``axis`` of the volume at ``Sample.image``."""

    model_config = ConfigDict(extra="forbid")
    axis: int
    index: int
    label: str | None = None  # label volume path, if any
    window: tuple[float, float] | None = None  # intensity clip range used


class Provenance(BaseModel):
    """How a synthetic sample was made. Fields stay ``None`` for real samples."""

    model_config = ConfigDict(extra="allow")
    generator: str | None = None  # kind: mask2image, joint, edge-text, inpaint
    checkpoint: str | None = None  # checkpoint folder
    checkpoint_hash: str | None = None
    seed: int | None = None
    prompt: str | None = None
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    mask_source: str | None = None
    source_id: str | None = None  # real sample the condition came from
    background_id: str | None = None
    validation: dict[str, Any] | None = None  # filter scores: dice, confidence, kept, threshold
    review: str | None = None  # accepted / rejected by a person (single-reviewer form)
    # per-reviewer decisions written by ``lesionforge review``: {reviewer: {"decision": ..., "at": ISO time}}
    reviews: dict[str, dict[str, str]] | None = None
    code_version: str | None = None


class Sample(BaseModel):
    """One sample. Paths are absolute or relative to the manifest's folder.

    ``masks`` holds zero or more mask files; several are merged by union. ``label_class`` is the class
    sub-folder (e.g. ``benign``) when the dataset has one.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    id: str
    image: str
    masks: list[str] = Field(default_factory=list)
    has_mask: bool = True  # False: image-only (background / unlabelled)
    split: str | None = None
    label_class: str | None = Field(default=None, alias="class")
    origin: Literal["real", "synthetic"] = "real"
    slice: SliceRef | None = None
    provenance: Provenance | None = None

    def to_row(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def write_manifest(path: str | Path, samples: Iterable[Sample]) -> Path:
    """Write samples as JSONL atomically. Ids must be unique."""
    path = Path(path)
    seen: set[str] = set()
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            if s.id in seen:
                raise DuplicateIdError(path, f"sample id {s.id!r} appears twice")
            seen.add(s.id)
            f.write(json.dumps(s.to_row()) + "\n")
    return path


def append_manifest(path: str | Path, samples: Iterable[Sample]) -> None:
    """Append rows (used by resumable jobs: each finished sample is appended and flushed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s.to_row()) + "\n")
        f.flush()


def read_manifest(path: str | Path, resolve: bool = True) -> list[Sample]:
    """Read a JSONL manifest. Relative paths are resolved against its folder when ``resolve``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found")
    out: list[Sample] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            s = Sample.model_validate(json.loads(line))
        except Exception as e:  # noqa: BLE001 - any parse problem is reported with its line
            raise DataError(path, f"line {n}: not a valid manifest row ({e})") from e
        if resolve:
            s = _resolved(s, path.parent)
        out.append(s)
    return out


def _resolved(s: Sample, root: Path) -> Sample:
    def r(p: str) -> str:
        return p if Path(p).is_absolute() else str((root / p).resolve())

    return s.model_copy(update={"image": r(s.image), "masks": [r(m) for m in s.masks]})
