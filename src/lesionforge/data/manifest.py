"""The sample record and its JSONL manifest.

A manifest row is one (image, mask) pair or one image-only sample. Real samples come from readers;
synthetic ones are written by ``lesionforge synthesize`` with their provenance filled in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lesionforge.config import describe_validation_error
from lesionforge.errors import DataError, DuplicateIdError
from lesionforge.outputs import is_inside
from lesionforge.utils import atomic_path

log = logging.getLogger(__name__)

#: Default of ``read_manifest(allow_outside=None)``; the CLI's ``--allow-outside-paths`` sets it.
_allow_outside = False


def allow_outside_paths(allow: bool = True) -> None:
    """Let every manifest read in this process name files outside its folder (the CLI's
    ``--allow-outside-paths``); by default such rows are refused."""
    global _allow_outside
    _allow_outside = allow


class SliceRef(BaseModel):
    """A 2D slice of a 3D volume: ``index`` along ``axis`` of the volume at ``Sample.image``."""

    model_config = ConfigDict(extra="forbid")
    axis: int
    index: int
    label: str | None = None  # label volume path, if any
    window: tuple[float, float] | None = None  # intensity clip range used
    zscore: tuple[float, float] | None = None  # (mean, std) of the clipped volume when z-score normalised
    area: int | None = None  # foreground pixels of this slice (0: a foreground-free slice, a negative)


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
    """Append rows in one ``write`` and fsync them (resumable jobs append each finished batch): a kill leaves
    at most one torn last line, which :func:`drop_torn_tail` removes on resume."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(s.to_row()) + "\n" for s in samples).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        view = memoryview(data)
        while view:  # one call unless the kernel writes less (signals, full disk): finish the rest
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_torn_tail(path: str | Path) -> int:
    """Cut a partial last row (no final newline: an append cut short by a kill) off an appended manifest,
    with a warning naming the file; returns the number of bytes dropped."""
    path = Path(path)
    with open(path, "rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: dropped a torn last row (%d bytes, an append cut short); its samples are drawn again",
                path, len(data) - keep)
    return len(data) - keep


def read_manifest(path: str | Path, resolve: bool = True, allow_outside: bool | None = None) -> list[Sample]:
    """Read a JSONL manifest. Relative paths are resolved against its folder when ``resolve``.

    Every file a row names must lie inside the manifest's folder (a relative path without a way out, or an
    absolute path into that folder); other rows are a :class:`DataError` naming the manifest and line unless
    ``allow_outside`` (None: the process default, see :func:`allow_outside_paths`)."""
    path = Path(path)
    allow = _allow_outside if allow_outside is None else allow_outside
    if not path.is_file():
        raise DataError(path, "manifest not found")
    out: list[Sample] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            s = Sample.model_validate(json.loads(line))
        except ValidationError as e:
            raise DataError(path, f"line {n}: not a valid manifest row ({describe_validation_error(e, Sample)})") from e
        except Exception as e:  # noqa: BLE001 - any parse problem is reported with its line
            raise DataError(path, f"line {n}: not a valid manifest row ({e})") from e
        if not allow:
            _check_inside(s, path, n)
        if resolve:
            s = _resolved(s, path.parent)
        out.append(s)
    return out


#: The manifests of a synthetic set folder, in the order looked for: the filtered one carries the filter's scores.
SET_MANIFESTS = ("manifest.filtered.jsonl", "manifest.jsonl")


def set_manifest(path: str | Path) -> Path:
    """``path`` itself when it is a manifest file, else the first of :data:`SET_MANIFESTS` in the set folder."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in SET_MANIFESTS:
            if (path / name).is_file():
                return path / name
        raise DataError(path, f"no manifest in the set folder (looked for {', '.join(SET_MANIFESTS)})")
    raise DataError(path, "manifest not found")


def review_status(sample: Sample, reviewer: str | None = None) -> str | None:
    """A person's verdict on a synthetic sample: "accepted", "rejected" or ``None`` (not reviewed).

    With several reviewers a sample is rejected when anyone rejected it, accepted when someone accepted it and
    nobody rejected it; with ``reviewer`` only that person's decision counts."""
    prov = sample.provenance
    if prov is None:
        return None
    reviews = {r: e.get("decision") for r, e in (prov.reviews or {}).items()}
    if reviewer is not None:
        return reviews.get(reviewer)
    decisions = set(reviews.values()) | ({prov.review} if prov.review else set())
    if "rejected" in decisions:
        return "rejected"
    return "accepted" if "accepted" in decisions else None


def filter_ran(samples: Iterable[Sample]) -> bool:
    """Whether a validator filter scored this set: some synthetic row carries ``provenance.validation``."""
    return any(s.origin == "synthetic" and s.provenance is not None and s.provenance.validation for s in samples)


def is_kept(sample: Sample, filtered: bool) -> bool:
    """The one meaning of "kept" (``--kept-only``, filtered arms, result files; see docs/filtering.md).

    A real row is always kept (the filter and the reviewers judge synthetic samples). A synthetic row is kept
    iff no reviewer rejected it and the filter kept it (``provenance.validation.kept`` true). A row the filter
    never scored counts as kept only when no filter ran on the set (``filtered`` false, see :func:`filter_ran`):
    in a filtered set an unscored row was never checked (e.g. drawn after the filter ran), so it cannot pass for
    a checked one, while in an unfiltered set nothing was removed and every row stands."""
    if sample.origin != "synthetic":
        return True
    if review_status(sample) == "rejected":
        return False
    validation = sample.provenance.validation if sample.provenance is not None else None
    if validation:
        return validation.get("kept") is True
    return not filtered


def kept(samples: list[Sample]) -> list[Sample]:
    """The rows of one set that are kept (:func:`is_kept`), in order."""
    filtered = filter_ran(samples)
    return [s for s in samples if is_kept(s, filtered)]


def read_set(path: str | Path, *, origin: str | None = None, split: str | None = None, kept_only: bool = False,
             labelled_only: bool = False, resolve: bool = True) -> list[Sample]:
    """The rows of a manifest, or of a synthetic set folder (:func:`set_manifest`), that a caller asked for.

    ``origin`` (``real`` / ``synthetic``) and ``split`` keep those rows; ``kept_only`` the kept ones (:func:`kept`,
    judged on the whole set); ``labelled_only`` those with a mask. Nothing left is a :class:`DataError` naming the
    manifest and the selection."""
    manifest = set_manifest(path)
    rows = read_manifest(manifest, resolve=resolve)
    if kept_only:
        rows = kept(rows)
    rows = [s for s in rows if origin in (None, s.origin) and split in (None, s.split)
            and (s.has_mask or not labelled_only)]
    if not rows:
        wanted = [f"{k}={v!r}" for k, v in (("origin", origin), ("split", split)) if v is not None]
        wanted += ["kept only"] * kept_only + ["labelled only"] * labelled_only
        raise DataError(manifest, f"no samples to use ({', '.join(wanted) or 'empty manifest'})")
    return rows


def _check_inside(s: Sample, path: Path, line: int) -> None:
    files = [s.image, *s.masks, *([s.slice.label] if s.slice is not None and s.slice.label else [])]
    for f in files:
        if not is_inside(Path(path.parent, f), path.parent):
            raise DataError(path, f"line {line} (id {s.id!r}): {f} is outside the manifest's folder; move the "
                                  "files in, or pass --allow-outside-paths (allow_outside=True) if you trust it")


def _resolved(s: Sample, root: Path) -> Sample:
    def r(p: str) -> str:
        return p if Path(p).is_absolute() else str((root / p).resolve())

    return s.model_copy(update={"image": r(s.image), "masks": [r(m) for m in s.masks]})
