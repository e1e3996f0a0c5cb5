"""Where segmentation data come from: a dataset folder or a manifest, optional id lists, synthetic sets."""

from __future__ import annotations

import json
from pathlib import Path

from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.manifest import Sample, read_manifest
from lesionforge.data.readers import read_dataset
from lesionforge.errors import DataError


def read_samples(
    path: str | Path, ids: list[str] | None = None, labelled_only: bool = True, whole_volumes: bool = False
) -> list[Sample]:
    """Samples of a dataset folder (any layout :func:`read_dataset` knows) or of a JSONL manifest file.

    ``ids`` keeps those ids in that order (each must exist; a volume's case id stands for its slices);
    ``labelled_only`` drops image-only samples, which carry no ground truth to train or score on;
    ``whole_volumes`` keeps the foreground-free slices of volumes too (for 3D metrics)."""
    from lesionforge.data.splits import expand_cases

    path = Path(path)
    samples = read_manifest(path) if path.is_file() else read_dataset(path, negatives=whole_volumes)
    if ids is not None:
        ids = expand_cases(ids, samples, negative_share=1.0 if whole_volumes else 0.0)
        by_id = {s.id: s for s in samples}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DataError(path, f"{len(missing)} requested ids not found, e.g. {missing[:3]}")
        samples = [by_id[i] for i in ids]
    if labelled_only:
        if samples and not any(s.has_mask for s in samples):
            raise DataError(path, f"no masks: {len(samples)} images, none with a mask (a labelled dataset is "
                                  "images/ + masks/ or a manifest whose rows have masks)")
        samples = [s for s in samples if s.has_mask]
    if not samples:
        raise DataError(path, "no labelled samples")
    return samples


def read_id_list(path: str | Path, key: str | None = None) -> list[str]:
    """Ids from a text file (one a line) or a JSON file (a list, or a mapping where ``key`` picks the list;
    ``low_data_subsets.32`` style dotted keys reach nested lists, as in the benchmark split files)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "id list not found")
    if path.suffix.lower() != ".json":
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    obj = json.loads(path.read_text(encoding="utf-8"))
    for part in key.split(".") if key else []:
        if not isinstance(obj, dict) or part not in obj:
            raise DataError(path, f"no key {part!r} (from {key!r})")
        obj = obj[part]
    if not isinstance(obj, list):
        raise DataError(path, f"expected a list of ids{f' at {key!r}' if key else ''}; pass a key")
    return [str(i) for i in obj]


def read_id_spec(spec: str) -> list[str]:
    """Ids from ``FILE`` or ``FILE:KEY`` (e.g. ``splits/kvasir-seg.json:low_data_subsets.32``)."""
    head, sep, key = spec.rpartition(".json:")
    return read_id_list(head + ".json", key) if sep else read_id_list(spec)


def load_pairs(
    path: str | Path, resolution: int, channels: int | None = 3, ids: list[str] | None = None,
    whole_volumes: bool = False,
) -> PairArrays:
    """Labelled pairs of a folder or manifest, preprocessed to ``resolution`` (cached on disk);
    ``whole_volumes``: see :func:`read_samples`."""
    return load_arrays(read_samples(path, ids, whole_volumes=whole_volumes), resolution, channels)


def twins_of(samples: list[Sample]) -> dict[str, list[int]]:
    """Real id -> indices (into ``samples``) of its synthetic twins, from ``provenance.source_id``."""
    twins: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.provenance is not None and s.provenance.source_id is not None:
            twins.setdefault(s.provenance.source_id, []).append(i)
    return twins
