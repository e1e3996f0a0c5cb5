"""Output folders a command owns, and paths read from files that must stay inside a folder.

Every command that writes a folder claims it with :func:`claim_output`: a new or empty folder gets a marker
file (``.lesionforge-output.json``: kind, folder name, code version). Writing, resuming and ``--overwrite``
then act only on a folder holding the same kind's marker; any other non-empty folder (a dataset, a user's
files, another command's output) is refused with a one-line :class:`OverwriteError`, ``--overwrite``
included, and ``--overwrite`` of an own folder deletes that folder only. A folder written by an older
lesionforge (no marker) is adopted when it holds its kind's own state file and nothing this kind does not
write. No library does this ownership bookkeeping, so it is written here, once.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from lesionforge.errors import CheckpointError, OverwriteError
from lesionforge.utils import code_version, file_sha256, write_json_atomic

MARKER = ".lesionforge-output.json"


@dataclass(frozen=True)
class Kind:
    """An output kind: the command that writes it, whether it resumes, and how an older run is recognised:
    ``signature`` (name patterns, one must be present: the kind's own state files) and ``contents`` (every
    top-level name pattern such a folder may hold)."""

    command: str
    resumable: bool
    signature: tuple[str, ...]
    contents: tuple[str, ...]


# "screen": benchmarks/screen.py's rows, kept in the sweep folder whose generator and synthetic caches it shares
_EXPERIMENT = ("config.yaml", "cache", "data", "n[0-9]*", "screen")
KINDS: dict[str, Kind] = {
    "generator run": Kind(
        "train generator", True, ("config.yaml", "checkpoint-*", "lesionforge.json"),
        ("config.yaml", "checkpoint-*", ".tmp-checkpoint-*", "samples", "unet", "controlnet", "scheduler",
         "lesionforge.json", "loss.png", "train_info.json")),
    "synthetic set": Kind(
        "synthesize", True, ("synthesis.json",),
        ("synthesis.json", "manifest*.jsonl", "manifest*.json", "images", "masks", ".parts")),
    "segmentation run": Kind(
        "segment train", True, ("last.json", "run.json"),
        ("config.yaml", "best", "last-*", "last.json", "run.json")),
    "autoencoder run": Kind(
        "train autoencoder", True, ("autoencoder.yaml",),
        ("autoencoder.yaml", "train_state", "metrics.json", "config.json", "*.safetensors")),
    "validator run": Kind(
        "train validator", True, ("validator.json", "train_state"),
        ("validator.json", "train_state", "segmenter", "codec", "scheduler")),
    "extractor run": Kind(
        "train extractor", True, ("extractor_config.json", "train_state.pt"),
        ("extractor_config.json", "train_state.pt", "model.safetensors")),
    "mask export": Kind("conditioning masks", False, ("masks.jsonl",), ("masks.jsonl", "masks")),
    "edge-map export": Kind("conditioning edges", False, ("edges.jsonl",), ("edges.jsonl", "edges")),
    "quality report": Kind("quality", False, ("quality.json",), ("quality.json", "quality.md")),
    "memorization audit": Kind(
        "memorization", False, ("memorization.json",), ("memorization.json", "memorization_flagged.png")),
    "export": Kind("export", False, ("export.json",), ("export.json", "datasheet.md", "plain", "nnunet")),
    "experiment sweep": Kind("experiment run", True, ("config.yaml", "n[0-9]*"), _EXPERIMENT),
    "closed loop": Kind("loop", True, ("loop.json",), ("loop.json", "round[0-9]*", "final")),
    "demo": Kind("demo", True, ("summary.json", "data"), (*_EXPERIMENT, "data", "results", "summary.json")),
}


def claim_output(path: str | Path, kind: str, *, overwrite: bool = False, resume: bool = False,
                 accept: tuple[str, ...] = ()) -> Path:
    """Create or re-open the output folder ``path`` of ``kind`` (a key of :data:`KINDS`); returns it.

    A new or empty folder is created and marked. A folder holding this kind's marker (or, to continue only,
    one of ``accept``: the demo folder for its sweep) is continued with ``resume``, emptied and re-marked
    with ``overwrite``, refused otherwise. Any other non-empty folder is refused, whatever the flags."""
    path, spec = Path(path), KINDS[kind]
    if path.exists() and not path.is_dir():
        raise OverwriteError(f"{path}: is a file, not a folder; choose a folder for the {kind}")
    # the marker's own temporary file (atomic write in progress by a second worker) does not make it non-empty
    entries = [e.name for e in path.iterdir() if not e.name.startswith((MARKER, f".{MARKER}."))] \
        if path.is_dir() else []
    if not entries:
        return _mark(path, kind)
    owner = _owner(path, kind, entries)
    if owner != kind and (overwrite or owner not in accept):
        raise OverwriteError(f"{path}: holds {_a(owner)} (written by `lesionforge {KINDS[owner].command}`), not "
                             f"{_a(kind)}; nothing was {'deleted' if overwrite else 'written'}: choose another folder")
    if overwrite:
        shutil.rmtree(path)  # an own folder, identified by its marker: start over
        return _mark(path, kind)
    if not resume:
        how = "pass --overwrite to start over" + (" or --resume to continue it" if spec.resumable else "")
        raise OverwriteError(f"{path}: holds an earlier {owner}; {how}")
    return path


def _owner(path: Path, kind: str, entries: list[str]) -> str:
    """The kind named by the folder's marker; an unmarked folder is adopted when it is recognisably an older
    run of ``kind``, else refused with what to do."""
    marker = path / MARKER
    if marker.is_file():
        try:
            owner = json.loads(marker.read_text(encoding="utf-8"))["kind"]
        except (ValueError, KeyError, TypeError) as e:
            raise OverwriteError(f"{marker}: unreadable output marker ({e}); choose another folder") from e
        if owner not in KINDS:
            raise OverwriteError(f"{marker}: unknown output kind {owner!r}; choose another folder")
        return owner
    spec = KINDS[kind]
    # ``.<name>.<random>`` files are temporaries of atomic writes a killed run left behind
    foreign = [e for e in sorted(entries)
               if not any(fnmatch.fnmatchcase(e, p) or fnmatch.fnmatchcase(e, f".{p}.*") for p in spec.contents)]
    own_state = any(fnmatch.fnmatchcase(e, p) for e in entries for p in spec.signature)
    if own_state and not foreign:
        _mark(path, kind)  # an older lesionforge's run of this kind: adopt it
        return kind
    if own_state:  # an older run with something else beside it: only the user can tell
        raise OverwriteError(f"{path}: holds {foreign[0]!r}, which `lesionforge {spec.command}` does not write; "
                             f"nothing was written or deleted: if this is {_a(kind)} of an older lesionforge, move "
                             "that out to continue it, else use a new or empty folder")
    why = f"holds {foreign[0]!r}, which `lesionforge {spec.command}` does not write" if foreign else \
        f"holds none of the files of {_a(kind)}"
    raise OverwriteError(f"{path}: not empty and not {_a(kind)} ({why}); nothing was written or deleted: "
                         "use a new or empty folder")


def _a(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _mark(path: Path, kind: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path / MARKER, {"kind": kind, "name": path.name, "code_version": code_version()})
    return path


def child_path(folder: str | Path, name: str, source: str | Path) -> Path:
    """``folder / name`` for a ``name`` read from the state file ``source``: a relative path without ``..``
    (a crafted state file must not make a command read, replace or delete anything outside its folder)."""
    p = Path(name)
    if not name or p.is_absolute() or ".." in p.parts or p.drive:
        raise CheckpointError(f"{source}: names {name!r}, which is not inside {folder}; "
                              "the state file is damaged or was edited: use a new output folder")
    return Path(folder) / p


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` lies in ``root`` (compared lexically on absolute paths: symlinks are not followed,
    so a dataset folder of symlinked files stays readable)."""
    p, r = os.path.abspath(path), os.path.abspath(root)
    return os.path.commonpath([p, r]) == r


def announce_resume(folder: str | Path, where: str) -> None:
    """One console line (stderr) saying that a run continues and from where."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"resuming {folder} from {where}")


def dir_hash(path: str | Path) -> str:
    """Short content hash of every file under a folder (names + bytes): identifies a checkpoint."""
    h = hashlib.sha256()
    for p in sorted(Path(path).rglob("*")):
        if p.is_file() and p.name != MARKER:  # the output marker names the code version, not the content
            h.update(str(p.relative_to(path)).encode())
            h.update(file_sha256(p).encode())
    return h.hexdigest()[:16]
