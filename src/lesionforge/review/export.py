"""``lesionforge export``: the curated training set of a reviewed synthetic set.

Exported: the synthetic pairs people accepted that the memorization audit did not flag (flagged near copies
only with ``include_flagged``), together with the real pairs of the real manifest. Written as (a) ``plain/``
(``images/``, ``masks/`` as 0/255 PNG, ``manifest.jsonl``), (b) nnU-Net v2's raw layout
``nnunet/DatasetXXX_Name/`` (``imagesTr/<case>_0000.png``, ``labelsTr/<case>.png`` with labels 0/1,
``dataset.json``) and (c) ``datasheet.md`` plus ``export.json`` (provenance, counts, decisions, flags).

Review rule (several reviewers, :func:`lesionforge.data.manifest.review_status`): a sample counts as accepted
when at least one reviewer accepted it and none rejected it; with ``reviewer`` only that person's decisions count.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lesionforge.data.arrays import load_sample
from lesionforge.data.io import is_grey, read_image, write_image, write_mask
from lesionforge.data.manifest import Sample, review_status, write_manifest
from lesionforge.errors import ConfigError
from lesionforge.outputs import claim_output
from lesionforge.review.store import ReviewSet, flagged
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic

CASE_CHARS = re.compile(r"[^A-Za-z0-9-]+")


@dataclass
class Case:
    case: str  # nnU-Net case identifier
    sample: Sample
    origin: str


def select(rs: ReviewSet, include_flagged: bool = False, reviewer: str | None = None) -> tuple[list[Case], dict]:
    """The cases to export (real first, then synthetic) and the counts for the datasheet."""
    counts: Counter = Counter()
    chosen: list[tuple[str, Sample]] = [("real", s) for s in rs.real]
    for s in rs.synthetic:
        val = (s.provenance.validation if s.provenance else None) or {}
        kept = val.get("kept")
        status = review_status(s, reviewer)
        is_flagged = flagged(rs.audit.get(s.id))
        counts["synthetic"] += 1
        counts[{True: "filter_kept", False: "filter_rejected", None: "filter_unscored"}[kept]] += 1
        counts[f"review_{status or 'none'}"] += 1
        counts["flagged"] += is_flagged
        if status != "accepted":
            continue
        if is_flagged and not include_flagged:
            counts["accepted_flagged_left_out"] += 1
            continue
        counts["accepted_filter_rejected"] += kept is False  # a person overrode the filter
        counts["accepted_flagged_included"] += is_flagged
        chosen.append(("synthetic", s))
    cases, used = [], set()
    for origin, s in chosen:
        base = f"{'real' if origin == 'real' else 'syn'}-{CASE_CHARS.sub('-', s.id).strip('-')}"
        case, k = base, 1
        while case in used:  # two ids that differ only in dropped characters
            k += 1
            case = f"{base}-{k}"
        used.add(case)
        cases.append(Case(case, s, origin))
    counts["exported_real"] = len(rs.real)
    counts["exported_synthetic"] = len(cases) - len(rs.real)
    return cases, dict(counts)


def export_set(rs: ReviewSet, out: str | Path, dataset_id: int = 501, name: str = "Lesionforge",
               include_flagged: bool = False, reviewer: str | None = None, overwrite: bool = False,
               progress: bool = False) -> dict:
    """Write the export (module docstring) into ``out``; returns the summary also written as export.json."""
    if not 1 <= dataset_id <= 999:
        raise ConfigError(f"nnU-Net dataset ids are 1-999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"dataset name {name!r}: use letters, digits, '_' or '-'")
    cases, counts = select(rs, include_flagged, reviewer)
    if not cases:
        raise ConfigError(f"{rs.manifest}: nothing to export (no accepted synthetic pair and no real manifest)")
    out = claim_output(out, "export", overwrite=overwrite)
    nn = out / "nnunet" / f"Dataset{dataset_id:03d}_{name}"
    (nn / "imagesTr").mkdir(parents=True, exist_ok=True)
    # nnU-Net needs one channel count: grey (also RGB with identical channels) only when every image is grey.
    # Decided before writing: decoding is cheap, PNG encoding is not, so nothing is written twice.
    channels = 1 if all(is_grey(_image(c.sample)) for c in _track(cases, progress, "Reading")) else 3
    rows = []
    for c in _track(cases, progress, "Writing"):
        image, mask = load_sample(c.sample, channels=channels)
        label = (mask > 0).astype(np.uint8)
        write_image(out / "plain" / "images" / f"{c.case}.png", image)
        write_mask(out / "plain" / "masks" / f"{c.case}.png", label)
        shutil.copyfile(out / "plain" / "images" / f"{c.case}.png", nn / "imagesTr" / f"{c.case}_0000.png")
        write_image(nn / "labelsTr" / f"{c.case}.png", label)  # nnU-Net wants the label values 0/1 themselves
        rows.append(c.sample.model_copy(update={"id": c.case, "image": f"images/{c.case}.png",
                                                "masks": [f"masks/{c.case}.png"], "has_mask": True,
                                                "slice": None, "split": "train"}))
    write_manifest(out / "plain" / "manifest.jsonl", rows)
    (nn / "imagesTs").mkdir(parents=True, exist_ok=True)
    dataset_json = {
        "name": name, "description": f"lesionforge export of {rs.root.name}",
        "channel_names": {"0": "R", "1": "G", "2": "B"} if channels == 3 else {"0": "grey"},
        "labels": {"background": 0, "lesion": 1}, "numTraining": len(cases), "file_ending": ".png",
    }
    write_json_atomic(nn / "dataset.json", dataset_json)
    summary = {"set": str(rs.root), "manifest": str(rs.manifest), "reviewer": reviewer,
               "include_flagged": include_flagged, "audit": bool(rs.audit), "counts": counts, "channels": channels,
               "nnunet_dataset": str(nn.relative_to(out)), "cases": {c.case: [c.origin, c.sample.id] for c in cases},
               "code_version": code_version()}
    write_json_atomic(out / "export.json", summary)
    write_text_atomic(out / "datasheet.md", datasheet(rs, summary, cases))
    return summary


def _audit_line(info: dict) -> str:
    return (f"`{info.get('file')}` ({info.get('extractor')} features, {info.get('n_train')} training images); a "
            f"sample is flagged when it is as close to a training image as the closest {info.get('percentile')} % "
            "of real-to-real nearest-neighbour pairs (docs/quality.md)")


def _image(sample: Sample) -> np.ndarray:
    return load_sample(sample)[0] if sample.slice is not None else read_image(sample.image)


def _track(cases: list[Case], progress: bool, what: str):
    if not progress:
        return cases
    from rich.progress import track

    return track(cases, description=what, transient=True)


def datasheet(rs: ReviewSet, summary: dict, cases: list[Case]) -> str:
    """The Markdown datasheet: where the pairs came from and which decisions chose them."""
    n = summary["counts"]
    gens = Counter((c.sample.provenance.generator if c.sample.provenance else None) or "unknown"
                   for c in cases if c.origin == "synthetic")
    ckpts = sorted({c.sample.provenance.checkpoint_hash or c.sample.provenance.checkpoint or "unknown"
                    for c in cases if c.origin == "synthetic" and c.sample.provenance})
    rule = (f"decisions of reviewer `{summary['reviewer']}`" if summary["reviewer"]
            else "accepted by at least one reviewer and rejected by none")
    reviewers = sorted({r for s in rs.synthetic if s.provenance and s.provenance.reviews for r in s.provenance.reviews})
    flagged_ids = sorted(s.id for s in rs.synthetic if flagged(rs.audit.get(s.id)))
    lines = [
        f"# Datasheet: {summary['nnunet_dataset'].split('/')[-1]}", "",
        "## Provenance",
        f"- synthetic set: `{summary['set']}` (manifest `{Path(summary['manifest']).name}`)",
        f"- generators: {', '.join(f'{g} ({k})' for g, k in sorted(gens.items())) or 'none exported'}",
        f"- generator checkpoints: {', '.join(f'`{c}`' for c in ckpts) or 'none exported'}",
        f"- real pairs: {n.get('exported_real', 0)} from `{rs.real_manifest}`" if rs.real_manifest else
        "- real pairs: none (no real manifest given)",
        f"- written by lesionforge {summary['code_version']}", "",
        "## Counts",
        "| | n |", "|---|---:|",
        f"| synthetic samples in the set | {n.get('synthetic', 0)} |",
        f"| kept by the validator filter | {n.get('filter_kept', 0)} |",
        f"| rejected by the validator filter | {n.get('filter_rejected', 0)} |",
        f"| not scored by the filter | {n.get('filter_unscored', 0)} |",
        f"| accepted in review | {n.get('review_accepted', 0)} |",
        f"| rejected in review | {n.get('review_rejected', 0)} |",
        f"| not reviewed | {n.get('review_none', 0)} |",
        f"| flagged as near copies by the memorization audit | {n.get('flagged', 0)} |",
        f"| accepted but flagged, left out | {n.get('accepted_flagged_left_out', 0)} |",
        f"| accepted but flagged, included (--include-flagged) | {n.get('accepted_flagged_included', 0)} |",
        f"| accepted although the filter rejected them | {n.get('accepted_filter_rejected', 0)} |",
        f"| **exported synthetic pairs** | {n.get('exported_synthetic', 0)} |",
        f"| **exported real pairs** | {n.get('exported_real', 0)} |", "",
        "## Decisions",
        f"- review rule: {rule}; reviewers in the manifest: {', '.join(reviewers) or 'none'}",
        "- memorization audit: " + (_audit_line(rs.audit_info) if summary["audit"]
                                    else "**none found**: near copies could not be checked"),
        f"- flagged samples: {', '.join(flagged_ids) or 'none'}", "",
        "## Layout",
        "- `plain/images/<case>.png`, `plain/masks/<case>.png` (0/255), `plain/manifest.jsonl` (provenance kept)",
        f"- `{summary['nnunet_dataset']}/imagesTr/<case>_0000.png`, `labelsTr/<case>.png` (0/1), `dataset.json`",
        "- case names: `real-<id>` and `syn-<id>`; `export.json` maps each case to its origin and sample id", "",
    ]
    return "\n".join(lines)
