"""Turn a user's folder into ``list[Sample]``: paired folders, class folders, image-only folders, volumes.

Supported layouts (``read_dataset(root, layout="auto")`` detects them):

- ``pairs``: ``images/`` + ``masks/`` (or ``labels/``), optionally with class sub-folders inside both. A mask
  matches an image by stem: ``<stem>``, ``<stem>_mask``, ``<stem>_seg`` (also ``_label``, ``_gt``), each
  optionally followed by ``_<n>`` for several masks of one image; extensions may differ.
- ``mixed``: images and their ``_mask`` files side by side, in class sub-folders (BUSI as published) or not.
- ``images``: image files only (``images/`` or the folder itself), e.g. lesion-free backgrounds.
- ``volumes``: NIfTI files or DICOM series folders in ``images/`` (or ``imagesTr/``) with label volumes in
  ``labels/`` (or ``labelsTr/``, ``masks/``), sliced to 2D by :mod:`lesionforge.data.volumes`.

Ids are file stems relative to the image folder with ``/`` separators (``benign/benign (1)``).
"""

from __future__ import annotations

import re
from pathlib import Path

from lesionforge.data.io import IMAGE_EXTS
from lesionforge.data.layout import IMAGE_DIRS, MASK_DIRS, FolderScan, Layout, first_dir, is_volume
from lesionforge.data.manifest import Sample, read_manifest
from lesionforge.data.volumes import scan_volumes
from lesionforge.errors import DataError, DuplicateIdError, MissingMaskError, OrphanMaskError

#: ``_mask``, ``_seg``, ``_label``, ``_gt`` with an optional ``_<n>`` index (several masks for one image).
MASK_SUFFIX = re.compile(r"^(?P<base>.+?)_(?:mask|seg|label|labels|gt)(?:_(?P<n>\d+))?$", re.IGNORECASE)


def read_dataset(
    root: str | Path,
    layout: Layout = "auto",
    multiclass: bool = False,
    allow_missing_masks: bool = False,
    axis: int = 2,
    min_area: int = 1,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    allow_outside: bool | None = None,
    normalise: str = "auto",
    negatives: bool = False,
) -> list[Sample]:
    """Read a dataset folder (or a ``.jsonl`` manifest, see :func:`read_manifest` for ``allow_outside``) into
    samples, sorted by id.

    Raises :class:`MissingMaskError` for an image without a mask in a labelled layout (unless
    ``allow_missing_masks``: it becomes an image-only sample) and :class:`OrphanMaskError` for a mask without
    an image. ``multiclass``: volume slices are kept when any single label reaches ``min_area`` (else the
    union of labels). ``axis``, ``min_area`` (pixels), ``window``, ``percentiles``, ``normalise`` (``auto``,
    ``window``, ``zscore``) and ``negatives`` (keep foreground-free slices) apply to volumes
    (:mod:`lesionforge.data.volumes`).
    """
    root = Path(root)
    if root.is_file() and root.name.endswith(".jsonl"):
        return read_manifest(root, allow_outside=allow_outside)
    scan = scan_folder(root, layout, axis=axis, min_area=min_area, window=window, percentiles=percentiles,
                       multiclass=multiclass, normalise=normalise, negatives=negatives)
    if scan.problems:
        raise scan.problems[0]
    if scan.orphans:
        raise OrphanMaskError(scan.orphans[0], f"mask has no matching image ({len(scan.orphans)} orphan masks)")
    if scan.missing and not allow_missing_masks:
        raise MissingMaskError(scan.missing[0], f"image has no mask ({len(scan.missing)} images without masks)")
    return scan.samples


def scan_folder(root: str | Path, layout: Layout = "auto", **volume_options) -> FolderScan:
    """List a folder's samples; problems are collected in the result, not raised.

    No 2D image is decoded (volumes are read to find the slices to keep). Images without masks become
    image-only samples and are also listed in ``missing``. ``volume_options`` go to
    :func:`lesionforge.data.volumes.scan_volumes` (ignored for 2D layouts).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "volumes":
        return scan_volumes(root, **volume_options)
    if layout == "pairs":
        return _scan_pairs(first_dir(root, IMAGE_DIRS), first_dir(root, MASK_DIRS))
    if layout == "mixed":
        return _scan_mixed(root)
    if layout == "images":
        image_dir = first_dir(root, IMAGE_DIRS, required=False) or root
        problems: list[DataError] = []
        images = _index_images(image_dir, problems)
        return FolderScan("images", [_sample(rid, p, []) for rid, p in sorted(images.items())], problems=problems)
    raise DataError(root, f"unknown layout {layout!r}; use auto, pairs, mixed, images or volumes")


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root`` from its folder names and file kinds."""
    image_dir = first_dir(root, IMAGE_DIRS, required=False)
    if image_dir is not None:
        if any(is_volume(p) for p in image_dir.iterdir()):
            return "volumes"
        return "pairs" if first_dir(root, MASK_DIRS, required=False) else "images"
    files = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DataError(root, "no image files found (expected images/ + masks/, class folders or image files)")
    return "mixed" if any(MASK_SUFFIX.match(p.stem) for p in files) else "images"


def _rel_stem(path: Path, base: Path) -> str:
    return path.relative_to(base).with_suffix("").as_posix()


def _index_images(folder: Path, problems: list[DataError], skip_masks: bool = False) -> dict[str, Path]:
    """Map relative stem -> image file under ``folder``; a second file with one stem is a problem."""
    out: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in IMAGE_EXTS or p.name.startswith(".") or not p.is_file():
            continue
        if skip_masks and MASK_SUFFIX.match(p.stem):
            continue
        rid = _rel_stem(p, folder)
        if rid in out:
            problems.append(DuplicateIdError(p, f"two image files share the id {rid!r} (also {out[rid].name})"))
            continue
        out[rid] = p
    return out


def _mask_key(rel_stem: str, images: dict[str, Path]) -> tuple[str | None, int]:
    """The image id a mask belongs to and its order among that image's masks (-1 for a bare ``<stem>``)."""
    if rel_stem in images:
        return rel_stem, -1
    m = MASK_SUFFIX.match(rel_stem)
    if m and m["base"] in images:
        return m["base"], int(m["n"] or 0)
    return None, 0


def _sample(rid: str, image: Path, masks: list[tuple[int, Path]]) -> Sample:
    """A sample; the class is the first sub-folder of the id; no mask file means image-only."""
    cls = rid.split("/")[0] if "/" in rid else None
    paths = [str(p) for _, p in sorted(masks)]
    return Sample(id=rid, image=str(image), masks=paths, has_mask=bool(paths), **{"class": cls})


def _assemble(
    images: dict[str, Path], mask_files: list[tuple[str, Path]], layout: str, problems: list[DataError]
) -> FolderScan:
    by_image: dict[str, list[tuple[int, Path]]] = {}
    orphans = []
    for rel, p in mask_files:
        key, order = _mask_key(rel, images)
        if key is None:
            orphans.append(str(p))
        else:
            by_image.setdefault(key, []).append((order, p))
    samples, missing = [], []
    for rid, img in sorted(images.items()):
        samples.append(_sample(rid, img, by_image.get(rid, [])))
        if not samples[-1].has_mask:
            missing.append(str(img))
    return FolderScan(layout, samples, missing, orphans, problems)


def _scan_pairs(image_dir: Path, mask_dir: Path) -> FolderScan:
    problems: list[DataError] = []
    images = _index_images(image_dir, problems)
    masks = [(_rel_stem(p, mask_dir), p) for p in sorted(mask_dir.rglob("*"))
             if p.suffix.lower() in IMAGE_EXTS and p.is_file() and not p.name.startswith(".")]
    return _assemble(images, masks, "pairs", problems)


def _scan_mixed(root: Path) -> FolderScan:
    problems: list[DataError] = []
    images = _index_images(root, problems, skip_masks=True)
    masks = [(_rel_stem(p, root), p) for p in sorted(root.rglob("*"))
             if p.suffix.lower() in IMAGE_EXTS and p.is_file() and MASK_SUFFIX.match(p.stem)]
    return _assemble(images, masks, "mixed", problems)
