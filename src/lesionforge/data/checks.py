"""Input checks: every problem of a dataset reported at once, each naming its file.

One pass decodes each image and mask once (two threads: Pillow and OpenCV release the GIL while decoding),
checks them, and hashes the image for duplicate and split-leakage detection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field

from lesionforge.data.hashing import (
    NEAR_DUPLICATE_DISTANCE,
    exact_duplicate_groups,
    near_duplicate_groups,
    perceptual_hash,
    pixel_digest,
)
from lesionforge.data.io import image_from_array, is_grey, mask_from_array, read_array
from lesionforge.data.layout import FolderScan, Layout
from lesionforge.data.manifest import Sample
from lesionforge.data.readers import scan_folder
from lesionforge.data.splits import BenchmarkSplit, load_benchmark_split
from lesionforge.errors import DataError, SizeMismatchError

#: Problem kinds that make a dataset unusable as is (the ``kind`` of the matching error class).
ERROR_KINDS = ("no_images", "missing_mask", "orphan_mask", "size_mismatch", "corrupt_file", "channel_count",
               "non_binary_mask", "duplicate_id")
#: Named warnings: the data is usable, but maybe not as the user thinks (``split_*`` only with ``splits``).
NOTICE_KINDS = ("no_masks", "link_outside_folder", "jpeg_noise_mask")


class Issue(BaseModel):
    """One problem: the sample id (if known), the file at fault, and what is wrong."""

    id: str | None
    file: str
    message: str


class CheckReport(BaseModel):
    """Result of :func:`check_dataset`; ``model_dump_json()`` gives the ``--json`` output.

    ``errors``/``notices`` map a kind (``missing_mask``, ``jpeg_noise_mask`` ...) to its issues;
    duplicate and leakage lists hold groups of ids.
    """

    root: str
    layout: str
    n_images: int
    n_mask_files: int
    n_image_only: int
    grey_images: int
    colour_images: int
    merged_multi_mask: list[str]
    lesion_free: list[str]
    errors: dict[str, list[Issue]]
    notices: dict[str, list[Issue]]
    exact_duplicates: list[list[str]]
    near_duplicates: list[list[str]]
    near_duplicate_distance: int
    split_leakage: list[dict[str, str]] = Field(default_factory=list)
    seconds: float

    @property
    def ok(self) -> bool:
        """True when there is no error and no split leakage."""
        return not any(self.errors.values()) and not self.split_leakage

    def counts(self) -> dict[str, int]:
        """Number of items per category (errors, notices, groups)."""
        out = {"images": self.n_images, "mask_files": self.n_mask_files, "image_only": self.n_image_only,
               "grey_images": self.grey_images, "colour_images": self.colour_images,
               "merged_multi_mask": len(self.merged_multi_mask), "lesion_free": len(self.lesion_free)}
        out |= {k: len(v) for k, v in self.errors.items()}
        out |= {k: len(v) for k, v in self.notices.items()}
        out |= {"exact_duplicate_groups": len(self.exact_duplicates),
                "near_duplicate_groups": len(self.near_duplicates), "split_leakage_groups": len(self.split_leakage)}
        return out


@dataclass
class _Inspection:
    """What one sample's pass found."""

    issues: list[tuple[str, Issue]] = field(default_factory=list)
    notices: list[tuple[str, Issue]] = field(default_factory=list)
    grey: bool | None = None
    lesion_free: bool = False
    digest: str | None = None
    phash: str | None = None


def inspect_sample(sample: Sample, multiclass: bool = False) -> _Inspection:
    """Decode one sample's image and masks once, collecting every problem instead of raising."""
    out = _Inspection()
    try:
        if sample.slice is not None:
            from lesionforge.data.volumes import read_slice

            image, merged = read_slice(sample, multiclass=multiclass)
        else:
            image = image_from_array(read_array(sample.image), sample.image)
            merged = _check_masks(sample, image.shape[:2], multiclass, out)
    except DataError as e:
        out.issues.append((e.kind, Issue(id=sample.id, file=e.path, message=e.problem)))
        return out
    out.grey = is_grey(image)
    out.digest = pixel_digest(image)
    out.phash = perceptual_hash(image)
    out.lesion_free = merged is not None and sample.has_mask and not merged.any()
    return out


def _check_masks(sample: Sample, shape: tuple[int, int], multiclass: bool, out: _Inspection) -> np.ndarray | None:
    """Merged mask, or None when the sample has none or one of its masks is bad (problems go to ``out``)."""
    if not sample.has_mask:
        return None
    merged = np.zeros(shape, np.uint8)
    ok = True
    for path in sample.masks:
        try:
            mask, notice = mask_from_array(read_array(path), path, multiclass)
            if mask.shape != shape:
                raise SizeMismatchError(path, f"mask size {mask.shape[1]}x{mask.shape[0]} != image size "
                                              f"{shape[1]}x{shape[0]} ({Path(sample.image).name})")
        except DataError as e:
            out.issues.append((e.kind, Issue(id=sample.id, file=e.path, message=e.problem)))
            ok = False
            continue
        if notice:
            out.notices.append(("jpeg_noise_mask", Issue(id=sample.id, file=str(path), message=notice)))
        np.maximum(merged, mask, out=merged)
    return merged if ok else None


def check_dataset(
    root: str | Path,
    splits: str | Path | BenchmarkSplit | None = None,
    layout: Layout = "auto",
    multiclass: bool = False,
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
    **volume_options,
) -> CheckReport:
    """Check a dataset folder and report every problem at once (nothing raised for bad files).

    ``splits`` (a split file, benchmark name or :class:`BenchmarkSplit`) enables the leakage check: near-
    duplicate groups whose members sit in different splits. ``progress(done, total)`` is called per sample.
    """
    start = time.perf_counter()
    split_name = None if splits is None or isinstance(splits, BenchmarkSplit) else str(splits)
    if split_name is not None:
        splits = load_benchmark_split(split_name)  # a bad split file is said before the long pass, not after
    scan = scan_folder(root, layout, **volume_options)
    samples = scan.samples
    results = _inspect_all(samples, multiclass, workers, progress)
    errors, notices = _collect_issues(scan, results)
    _dataset_level_issues(Path(root), samples, errors, notices)
    if splits is not None:
        notices |= split_problems({s.id for s in samples}, splits, split_name)
    hashed = [(s.id, r) for s, r in zip(samples, results, strict=True) if r.phash is not None]
    ids = [i for i, _ in hashed]
    file_of = {s.id: s.image for s in samples}
    near = _across_files(near_duplicate_groups(ids, [r.phash for _, r in hashed], near_duplicate_distance), file_of)
    return CheckReport(
        root=str(root), layout=scan.layout, n_images=len(samples),
        n_mask_files=sum(len(s.masks) for s in samples), n_image_only=sum(not s.has_mask for s in samples),
        grey_images=sum(r.grey is True for r in results), colour_images=sum(r.grey is False for r in results),
        merged_multi_mask=[s.id for s in samples if len(s.masks) > 1],
        lesion_free=[s.id for s, r in zip(samples, results, strict=True) if r.lesion_free],
        errors=errors, notices=notices,
        exact_duplicates=_across_files(exact_duplicate_groups(ids, [r.digest for _, r in hashed]), file_of),
        near_duplicates=near, near_duplicate_distance=near_duplicate_distance,
        split_leakage=split_leakage(near, splits) if splits is not None else [],
        seconds=round(time.perf_counter() - start, 2),
    )


def _across_files(groups: list[list[str]], file_of: dict[str, str]) -> list[list[str]]:
    """Groups spanning more than one file: neighbouring slices of one volume are alike by nature."""
    return [g for g in groups if len({file_of[i] for i in g}) > 1]


def _inspect_all(
    samples: list[Sample], multiclass: bool, workers: int, progress: Callable[[int, int], None] | None
) -> list[_Inspection]:
    results = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for n, r in enumerate(pool.map(lambda s: inspect_sample(s, multiclass), samples), 1):
            results.append(r)
            if progress:
                progress(n, len(samples))
    return results


IssueMap = dict[str, list[Issue]]


def _collect_issues(scan: FolderScan, results: list[_Inspection]) -> tuple[IssueMap, IssueMap]:
    """``(errors, notices)`` by kind, from the folder scan and every sample's inspection."""
    errors: dict[str, list[Issue]] = {k: [] for k in ERROR_KINDS}
    id_of = {s.image: s.id for s in scan.samples}
    errors["missing_mask"] = [Issue(id=id_of.get(p), file=p, message="image has no mask") for p in scan.missing]
    errors["orphan_mask"] = [Issue(id=None, file=p, message="mask has no matching image") for p in scan.orphans]
    for e in scan.problems:
        errors.setdefault(e.kind, []).append(Issue(id=None, file=e.path, message=e.problem))
    notices: dict[str, list[Issue]] = {k: [] for k in NOTICE_KINDS}
    for r in results:
        for kind, issue in r.issues:
            errors.setdefault(kind, []).append(issue)
        for kind, issue in r.notices:
            notices.setdefault(kind, []).append(issue)
    return errors, notices


def _dataset_level_issues(root: Path, samples: list[Sample], errors: IssueMap, notices: IssueMap) -> None:
    """Problems of the folder as a whole: no images, images but no masks at all, files reached through a
    symbolic link that leads outside the folder (the dataset is then not self-contained, and a later change
    there changes it)."""
    if not samples:
        errors["no_images"].append(Issue(id=None, file=str(root), message="no images found"))
    elif not any(s.has_mask for s in samples):
        notices["no_masks"].append(Issue(
            id=None, file=str(root),
            message=f"{len(samples)} images and no masks: fine as lesion-free backgrounds or unlabelled images; "
                    "segmentation and generator training need masks (images/ + masks/)"))
    inside = root.resolve()
    for s in samples:
        for p in [s.image, *s.masks]:
            target = Path(p).resolve()
            if not target.is_relative_to(inside):
                notices["link_outside_folder"].append(
                    Issue(id=s.id, file=str(p), message=f"symbolic link leads outside the dataset, to {target}"))


def split_problems(ids: set[str], splits: str | Path | BenchmarkSplit, name: str | None = None) -> IssueMap:
    """Named warnings about a split against the dataset's ``ids``: an empty ``val``/``test`` list
    (``empty_split``) and ids the split lists that the dataset lacks (``split_ids_missing``, one issue per
    split)."""
    split = splits if isinstance(splits, BenchmarkSplit) else load_benchmark_split(splits)
    where = name or (split.dataset if isinstance(splits, BenchmarkSplit) else str(splits))
    out: IssueMap = {"empty_split": [], "split_ids_missing": []}
    for name in ("val", "test"):
        if not getattr(split, name):
            out["empty_split"].append(Issue(id=None, file=where, message=f"the {name} split is empty"))
    for name in ("train", "val", "test"):
        listed = getattr(split, name)
        missing = [i for i in listed if i not in ids]
        if missing:
            out["split_ids_missing"].append(Issue(
                id=None, file=where,
                message=f"{len(missing)} of {len(listed)} {name} ids are not in the dataset, e.g. {missing[:3]}"))
    return out


def split_leakage(groups: list[list[str]], splits: str | Path | BenchmarkSplit) -> list[dict[str, str]]:
    """Near-duplicate groups whose ids fall in more than one split, as ``{id: split}`` maps. A volume slice
    not listed itself is placed by its case (split files of volume datasets list cases)."""
    from lesionforge.data.volumes import case_of

    split = splits if isinstance(splits, BenchmarkSplit) else load_benchmark_split(splits)
    where = split.split_of()
    for i in {i for g in groups for i in g} - set(where):
        case = case_of(i)
        if case in where:
            where[i] = where[case]
    out = []
    for g in groups:
        placed = {i: where[i] for i in g if i in where}
        if len(set(placed.values())) > 1:
            out.append(placed)
    return out
