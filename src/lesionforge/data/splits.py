"""Train/val/test splits: the benchmark split files, group-aware splits of a user's data, and assignment.

A split file is JSON with ``train``/``val``/``test`` id lists, nested ``low_data_subsets`` (``{"16": [...]}``,
each drawn from ``train`` and contained in the next larger one), optional ``normal_backgrounds`` (lesion-free
images for inpainting) and ``near_duplicate_groups`` (a count or the groups themselves).

A split of a volume dataset may list cases instead of slices (``"unit": "case ..."``, e.g. msd-hippocampus):
:func:`expand_cases` turns each case id into the ids of its slices, so a low-data subset of N counts N volumes and
no volume can straddle two splits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lesionforge.config import describe_validation_error
from lesionforge.data.hashing import connected_groups
from lesionforge.data.manifest import Sample
from lesionforge.errors import ConfigError, DataError
from lesionforge.utils import write_json_atomic

SPLIT_NAMES = ("train", "val", "test")


class BenchmarkSplit(BaseModel):
    """A split of sample ids. ``low_data(n)`` gives the ``n``-image labelled subset of ``train``."""

    model_config = ConfigDict(extra="forbid")
    dataset: str = "custom"
    train: list[str]
    val: list[str]
    test: list[str]
    normal_backgrounds: list[str] = Field(default_factory=list)
    low_data_subsets: dict[int, list[str]] = Field(default_factory=dict)
    near_duplicate_groups: int | list[list[str]] = 0
    seed: int | None = None
    unit: str | None = None  # what an id names, e.g. "case (3D volume)"; free text, for people

    @model_validator(mode="after")
    def _consistent(self) -> BenchmarkSplit:
        seen: dict[str, str] = {}
        for name in (*SPLIT_NAMES, "normal_backgrounds"):
            for i in getattr(self, name):
                if i in seen:
                    raise ValueError(f"id {i!r} is in both {seen[i]} and {name}")
                seen[i] = name
        train = set(self.train)
        previous: set[str] = set()
        for n in sorted(self.low_data_subsets):
            ids = set(self.low_data_subsets[n])
            if len(ids) != n or not ids <= train or not previous <= ids:
                raise ValueError(f"low_data_subsets[{n}] must hold {n} train ids and contain the smaller subsets")
            previous = ids
        return self

    def low_data(self, n: int) -> list[str]:
        """The nested ``n``-image labelled training subset."""
        if n not in self.low_data_subsets:
            raise KeyError(f"no low-data subset of {n} images; have {sorted(self.low_data_subsets)}")
        return list(self.low_data_subsets[n])

    def split_of(self) -> dict[str, str]:
        """Map id -> ``train``/``val``/``test``/``normal_backgrounds``."""
        return {i: name for name in (*SPLIT_NAMES, "normal_backgrounds") for i in getattr(self, name)}


def split_search_dirs() -> list[Path]:
    """Where split names are looked up: ``$LESIONFORGE_SPLITS``, ``benchmarks/splits`` and
    ``../shared/benchmark/splits`` of the current folder, then of the source checkout (an installed package
    has none, hence the current folder and the variable)."""
    env = os.environ.get("LESIONFORGE_SPLITS")
    dirs = [Path(env)] if env else []
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        dirs += [base / "benchmarks" / "splits", base.parent / "shared" / "benchmark" / "splits"]
    return list(dict.fromkeys(dirs))


def load_benchmark_split(path_or_name: str | Path) -> BenchmarkSplit:
    """Read a split file, by path or by name (``"kvasir-seg"`` -> ``<search dir>/kvasir-seg.json``)."""
    path = Path(path_or_name)
    if not path.is_file():
        candidates = [d / f"{path_or_name}.json" for d in split_search_dirs()]
        found = [c for c in candidates if c.is_file()]
        if not found and (path.suffix == ".json" or len(path.parts) > 1):
            raise DataError(path, "split file not found")
        if not found:
            raise DataError(path, f"split {str(path_or_name)!r} not found: give the path of its JSON file, or set "
                                  f"LESIONFORGE_SPLITS to the folder holding {path.name}.json (looked in "
                                  f"{', '.join(str(c.parent) for c in candidates)})")
        path = found[0]
    try:
        return BenchmarkSplit.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not a valid split file ({e})") from e
    except ValidationError as e:
        raise DataError(path, f"not a valid split file ({describe_validation_error(e, BenchmarkSplit)})") from e


def save_split(split: BenchmarkSplit, path: str | Path) -> Path:
    """Write a split as JSON atomically (``low_data_subsets`` keys become strings, as in the benchmark)."""
    write_json_atomic(path, split.model_dump(mode="json"))
    return Path(path)


def make_splits(
    samples: Sequence[Sample],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    groups: list[list[str]] | None = None,
    low_data_sizes: Sequence[int] = (16, 32, 64, 128),
    dataset: str = "custom",
) -> BenchmarkSplit:
    """Split labelled samples into train/val/test by ``fractions``, keeping each group (e.g. near-duplicates
    from :func:`lesionforge.data.hashing.near_duplicate_groups`) inside one split.

    Image-only samples (``has_mask=False``) become ``normal_backgrounds``. Low-data subsets are nested
    prefixes of a seeded shuffle of ``train`` (sizes larger than ``train`` are skipped).
    """
    _check_fractions(fractions)
    labelled = [s.id for s in samples if s.has_mask]
    units = _units(labelled, groups or [])
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(units))
    # largest groups first so they cannot overshoot a small split at the end; ties keep the seeded order
    order = sorted(order, key=lambda i: -len(units[i]))
    targets = np.array(fractions) * len(labelled)
    filled = [[], [], []]
    for i in order:
        k = int(np.argmax(targets - np.array([len(f) for f in filled])))
        filled[k] += units[i]
    train = sorted(filled[0])
    shuffled = [train[i] for i in rng.permutation(len(train))]
    subsets = {n: sorted(shuffled[:n]) for n in low_data_sizes if n <= len(train)}
    group_list = [sorted(g) for g in (groups or []) if len(g) > 1]
    return BenchmarkSplit(
        dataset=dataset, train=train, val=sorted(filled[1]), test=sorted(filled[2]),
        normal_backgrounds=sorted(s.id for s in samples if not s.has_mask), low_data_subsets=subsets,
        near_duplicate_groups=group_list, seed=seed,
    )


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")


def _units(ids: list[str], groups: list[list[str]]) -> list[list[str]]:
    """Partition ``ids`` into indivisible units: overlapping groups are merged, the rest are singletons."""
    pos = {i: k for k, i in enumerate(ids)}
    pairs = []
    for g in groups:
        members = [pos[i] for i in g if i in pos]
        pairs += [(members[0], m) for m in members[1:]]
    rows, cols = np.array(pairs, int).reshape(-1, 2).T
    return connected_groups(ids, rows, cols)


def make_user_splits(
    root: str | Path,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    layout: str = "auto",
    allow_missing_masks: bool = True,
    max_distance: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BenchmarkSplit:
    """Read a dataset folder, group its near-duplicate images (perceptual hash) and the slices of each volume,
    and :func:`make_splits`."""
    from lesionforge.data.hashing import NEAR_DUPLICATE_DISTANCE, hash_samples, near_duplicate_groups
    from lesionforge.data.readers import read_dataset

    _check_fractions(fractions)  # before the slow part
    samples = read_dataset(root, layout, allow_missing_masks=allow_missing_masks)
    if not samples:
        raise DataError(root, "no images found: nothing to split")
    if not any(s.has_mask for s in samples):
        raise DataError(root, f"nothing to split: {len(samples)} images, none with a mask (splits hold labelled "
                              "images; image-only folders are lesion-free backgrounds)")
    hashes = hash_samples(samples, progress=progress)
    distance = NEAR_DUPLICATE_DISTANCE if max_distance is None else max_distance
    groups = near_duplicate_groups([s.id for s in samples], hashes, distance)
    return make_splits(samples, fractions, seed, groups + volume_groups(samples), dataset=Path(root).name)


def volume_groups(samples: Sequence[Sample]) -> list[list[str]]:
    """Slices of one volume, as groups: a patient's slices must never straddle splits."""
    by_volume: dict[str, list[str]] = {}
    for s in samples:
        if s.slice is not None:
            by_volume.setdefault(s.image, []).append(s.id)
    return [g for g in by_volume.values() if len(g) > 1]


def expand_cases(ids: Sequence[str], samples: Sequence[Sample], negative_share: float = 0.0) -> list[str]:
    """Sample ids of a split list: a case id (a volume whose slices are among ``samples``) becomes its slices, any
    other id stays as it is (an id in neither is left for the caller to report).

    A case gives, in slice order, every slice with foreground and the foreground-free slices (``SliceRef.area ==
    0``, read with ``negatives=True``) that make up ``negative_share`` of its slices as far as it has them (0: none,
    0.5: as many as it has foreground slices, 1: all), evenly spaced along the volume: deterministic and per case,
    so nested case subsets stay nested."""
    from lesionforge.data.volumes import case_of, slice_order

    if not 0.0 <= negative_share <= 1.0:
        raise ValueError(f"negative_share must lie in [0, 1], got {negative_share}")
    by_case: dict[str, list[Sample]] = {}
    for s in samples:
        case = case_of(s.id) if s.slice is not None else None
        if case is not None:
            by_case.setdefault(case, []).append(s)
    out: list[str] = []
    for i in ids:
        slices = sorted(by_case.get(i, []), key=lambda s: slice_order(s.id))
        if not slices:
            out.append(i)
            continue
        empty = [s.id for s in slices if s.slice.area == 0]
        fg = [s.id for s in slices if s.slice.area != 0]
        want = len(empty) if negative_share >= 1 else round(negative_share * len(fg) / (1 - negative_share))
        pick = np.unique(np.linspace(0, len(empty) - 1, min(want, len(empty))).round().astype(int)) if empty else []
        chosen = {empty[k] for k in pick}
        out += [s.id for s in slices if s.id in chosen or s.slice.area != 0]
    return out


def assign_splits(samples: Sequence[Sample], split: BenchmarkSplit) -> list[Sample]:
    """Copies of ``samples`` with ``Sample.split`` set from ``split`` (``None`` for ids it does not list)."""
    where = split.split_of()
    return [s.model_copy(update={"split": where.get(s.id)}) for s in samples]
