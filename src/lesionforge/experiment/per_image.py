"""Per-image, per-seed metrics in a result file, and the run records rebuilt from them.

PROTOCOL.md asks that every interval of a result file can be recomputed from the file alone. So the file keeps
the test image ids once (``image_ids``, and the ground-truth lesion counts per image in ``image_lesions``), and
each arm keeps in ``per_image``, per seed and aligned with those ids, its Dice, IoU and missed-lesion counts
(volumes also their 3D Dice per case of ``test_cases``). :func:`records_from_result` turns that back into
:class:`RunRecord` objects, so the code that wrote the intervals (``results.paired_diff``)
recomputes them, or compares any two arms the file did not pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lesionforge.data.bands import BANDS
from lesionforge.errors import DataError
from lesionforge.experiment.records import RunRecord

DIGITS = 6  # Dice/IoU kept to 1e-6: a bootstrap over ~200 images then moves by < 1e-6, the file stays small


def per_image_fields(
    by_arm: Mapping[str, list[RunRecord]], baseline: str
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``(top, blocks)``: the file's top-level ``image_ids`` and ``image_lesions`` (ground truth, the same for
    every run), and each arm's ``per_image`` block. Every run must be scored on the baseline's test images (and,
    for volumes, the cases of the file's ``test_cases``)."""
    base = by_arm.get(baseline) or []
    if not base:
        return {}, {}
    ref = base[0]
    ids, cases = list(ref.ids), list(ref.cases) if ref.cases is not None else None
    top: dict[str, Any] = {"image_ids": ids}
    if ref.lesions is not None:
        top["image_lesions"] = {"all": list(ref.lesions), **{b: list(ref.band_lesions[b]) for b in BANDS
                                                            if ref.band_lesions and b in ref.band_lesions}}
    return top, {name: _block(recs, ids, cases) for name, recs in by_arm.items() if recs}


def _block(recs: list[RunRecord], ids: list[str], cases: list[str] | None) -> dict[str, Any]:
    def aligned(r: RunRecord, values: list | None, keys: list[str]) -> list | None:
        if values is None:
            return None
        by_id = dict(zip(r.ids, values, strict=True))
        if set(by_id) != set(keys):
            raise ValueError(f"run {r.arm} seed {r.seed} was scored on other test images than the baseline")
        return [by_id[i] for i in keys]

    def rounded(values: list | None) -> list | None:
        return None if values is None else [None if v != v else round(float(v), DIGITS) for v in values]

    block: dict[str, Any] = {
        "seeds": [r.seed for r in recs],
        "dice": [rounded(aligned(r, r.dice, ids)) for r in recs],
        "iou": [rounded(aligned(r, r.iou, ids)) for r in recs],
    }
    if all(r.missed is not None for r in recs):
        block["missed"] = [aligned(r, r.missed, ids) for r in recs]
    if all(r.band_missed for r in recs):
        block["band_missed"] = {b: [aligned(r, r.band_missed[b], ids) for r in recs] for b in BANDS}
    if cases is not None and all(r.cases is not None for r in recs):
        block["dice3d"] = [rounded([dict(zip(r.cases, r.dice3d, strict=True))[c] for c in cases]) for r in recs]
    return block


def records_from_result(result: Mapping[str, Any], path: str | Path = "result") -> dict[str, list[RunRecord]]:
    """Rebuild every arm's per-seed run records (the fields the intervals use) from a result dict; a file
    written before per-image metrics were stored is a :class:`DataError` naming ``path``."""
    ids = result.get("image_ids")
    if ids is None or not all("per_image" in a for a in result.get("arms", {}).values()):
        raise DataError(path, "holds no per-image metrics (written before they were stored); rerun its sweep")
    lesions = result.get("image_lesions") or {}
    cases = result.get("test_cases")
    out: dict[str, list[RunRecord]] = {}
    for name, arm in result["arms"].items():
        block = arm["per_image"]
        recs = []
        for k, seed in enumerate(block["seeds"]):
            dice = [float("nan") if v is None else v for v in block["dice"][k]]
            iou = [float("nan") if v is None else v for v in block["iou"][k]]
            missed = block["missed"][k] if "missed" in block else None
            band_missed = {b: block["band_missed"][b][k] for b in BANDS} if "band_missed" in block else None
            recs.append(RunRecord(
                n_labelled=result["n_labelled"], arm=name, seed=seed, ids=list(ids), dice=dice, iou=iou,
                missed=missed, lesions=lesions.get("all") if missed is not None else None,
                band_missed=band_missed,
                band_lesions={b: lesions[b] for b in BANDS} if band_missed is not None and BANDS[0] in lesions
                else None,
                mdice=arm["mdice"][k], miou=arm["miou"][k], miss_rate=arm["miss_rate"][k],
                miss_rate_by_band={b: arm["miss_rate_by_band"][b][k] for b in BANDS},
                cases=list(cases) if "dice3d" in block else None,
                dice3d=block["dice3d"][k] if "dice3d" in block else None,
                mdice3d=(arm.get("mdice3d") or [None] * (k + 1))[k],
            ))
        out[name] = recs
    return out
