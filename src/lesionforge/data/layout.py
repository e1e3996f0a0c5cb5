"""Folder conventions shared by the 2D readers (:mod:`lesionforge.data.readers`) and the volume reader
(:mod:`lesionforge.data.volumes`): the layouts, the folder names they look for, what a volume file is, and what
a folder scan returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lesionforge.data.manifest import Sample
from lesionforge.errors import DataError

Layout = Literal["auto", "pairs", "mixed", "images", "volumes"]
IMAGE_DIRS = ("images", "imagesTr", "image", "imgs")
MASK_DIRS = ("masks", "labels", "labelsTr", "mask", "annotations", "ground_truth")
VOLUME_EXTS = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")


@dataclass
class FolderScan:
    """What a folder holds: ``samples`` found, plus ``missing`` image paths without a mask, ``orphans`` mask
    paths without an image (only in labelled layouts) and other ``problems`` (duplicate ids, unreadable or
    mismatched volumes), collected rather than raised. ``layout`` is the detected layout."""

    layout: str
    samples: list[Sample]
    missing: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    problems: list[DataError] = field(default_factory=list)


def first_dir(root: Path, names: tuple[str, ...], required: bool = True) -> Path | None:
    """The first of ``root/<name>`` that is a folder; a :class:`DataError` if none and ``required``."""
    for n in names:
        if (root / n).is_dir():
            return root / n
    if required:
        raise DataError(root, f"expected a sub-folder named one of {', '.join(names)}")
    return None


def is_volume(p: Path) -> bool:
    """True for a NIfTI/MHA/NRRD file or a folder holding ``.dcm`` files (a DICOM series)."""
    name = p.name.lower()
    if p.is_dir():
        return any(c.suffix.lower() == ".dcm" for c in p.iterdir())
    return any(name.endswith(e) for e in VOLUME_EXTS)
