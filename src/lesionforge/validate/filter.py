"""The synthetic-sample filter: score every synthetic pair with a validator, keep those whose lesion lands
where the intended mask says, and write the scores into a new manifest. Files are never deleted.

Lesion samples are kept when Dice(predicted, intended) >= threshold. Automatic thresholds, chosen on real
``val`` pairs only and never below ``AUTO_FLOOR``:

- ``contrast`` (default): the threshold that best separates real val images scored against their own masks
  from the same images scored against wrong masks (another image's mask; their own mask shifted a quarter
  image), i.e. the maximum of Youden's J = keep rate of true pairs - keep rate of wrong pairs. It is what the
  filter is for: telling a pair whose lesion is where the mask says from one whose lesion is not.
- ``percentile``: the 10th percentile of the validator's Dice on real val images (a synthetic pair is kept
  when its lesion is found at least as well as in 90 % of real images). It ignores how high a wrong mask
  scores, so a weak validator gets a threshold that keeps most wrong pairs too.

Lesion-free samples (empty intended mask) are kept when the predicted foreground fraction is at most
``empty_fraction_max``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.bands import band_index
from lesionforge.data.manifest import Provenance, Sample, read_manifest, write_manifest
from lesionforge.errors import ConfigError, DataError, OverwriteError
from lesionforge.utils import write_json_atomic
from lesionforge.validate.scores import confidence_scores, dice_scores, foreground_fractions
from lesionforge.validate.validator import Validator, load_validator, val_scores

AutoRule = Literal["contrast", "percentile"]
AUTO_PERCENTILE = 10.0
#: The automatic threshold never drops below this: a pair whose lesion the validator misses is never kept.
AUTO_FLOOR = 0.1
DEFAULT_EMPTY_FRACTION_MAX = 0.01


@dataclass
class FilterReport:
    """Outcome of :func:`filter_manifest`; also written beside the output manifest as ``*.filter.json``."""

    manifest: str
    validator: str
    validator_kind: str
    threshold: float
    threshold_rule: str
    empty_fraction_max: float
    n_scored: int
    n_kept: int
    n_lesion_free: int
    mean_dice_kept: float | None
    mean_dice_rejected: float | None
    rejected_ids: list[str] = field(default_factory=list)
    keep_best: int | None = None  # at most this many kept samples per source (see :func:`best_per_source`)
    keep_share: float | None = None  # at most this share of each source's draws kept (see :func:`source_quotas`)
    keep_bands: bool = False  # keep_best with the kept lesions' size bands in the shares drawn (:func:`best_by_band`)

    @property
    def acceptance_rate(self) -> float:
        return self.n_kept / self.n_scored if self.n_scored else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "acceptance_rate": self.acceptance_rate}


def auto_threshold(validator: Validator, val: PairArrays | None = None, rule: AutoRule = "contrast",
                   percentile: float = AUTO_PERCENTILE, floor: float = AUTO_FLOOR) -> tuple[float, str]:
    """The automatic threshold by ``rule`` (module docstring) from real ``val`` pairs, or without ``val`` from
    the val scores stored when the validator was trained. Returns (threshold, rule stated in words)."""
    if val is not None:
        scores, source = val_scores(validator, val), f"{len(val)} real val pairs given"
    else:
        scores, source = validator.info, f"real val scores stored in {validator.path}"
    dice, wrong = scores.get("val_dice"), scores.get("val_dice_mismatched")
    if not dice:
        raise ConfigError(
            f"{validator.path}: no real val Dice to choose the threshold from; pass val data or a threshold"
        )
    if rule == "percentile":
        value = max(float(np.percentile(np.asarray(dice), percentile)), floor)
        return value, (f"auto: {percentile:g}th percentile of validator Dice on real val lesion images, at least "
                       f"{floor:g} ({source})")
    if rule != "contrast":
        raise ConfigError(f"unknown automatic threshold rule {rule!r}; use 'contrast' or 'percentile'")
    if not wrong:
        raise ConfigError(
            f"{validator.path}: the contrast rule needs val images scored against wrong masks; pass val data "
            "(at least 2 lesion images) or use the percentile rule"
        )
    value, keep_true, keep_wrong = contrast_threshold(np.asarray(dice), np.asarray(wrong), floor)
    return value, (f"auto: Dice threshold that best separates real val images with their own masks from the "
                   f"same images with wrong masks (max keep-rate difference: keeps {keep_true:.0%} of true and "
                   f"{keep_wrong:.0%} of wrong val pairs), at least {floor:g} ({source})")


def contrast_threshold(true_dice: np.ndarray, wrong_dice: np.ndarray, floor: float = AUTO_FLOOR
                       ) -> tuple[float, float, float]:
    """The threshold t >= floor maximising mean(true >= t) - mean(wrong >= t) (the lowest such t: when two
    thresholds separate equally well, keep more). Returns (t, keep rate of true, keep rate of wrong)."""
    cands = np.unique(np.concatenate([true_dice, [floor]]))
    cands = cands[cands >= floor]
    keep_true = (true_dice[None, :] >= cands[:, None]).mean(axis=1)
    keep_wrong = (wrong_dice[None, :] >= cands[:, None]).mean(axis=1)
    best = int(np.argmax(keep_true - keep_wrong))
    return float(cands[best]), float(keep_true[best]), float(keep_wrong[best])


def score_pairs(validator: Validator, images: np.ndarray, intended: np.ndarray) -> dict[str, np.ndarray]:
    """Scores of uint8 images (N, H, W, C) against intended masks (N, H, W): ``dice``, ``confidence``,
    ``foreground_fraction`` (each float (N,)) and ``lesion_free`` (bool (N,), intended mask empty)."""
    prob = validator.predict_arrays(images)
    return {
        "dice": dice_scores(prob, intended), "confidence": confidence_scores(prob),
        "foreground_fraction": foreground_fractions(prob),
        "lesion_free": ~(intended > 0).any(axis=(1, 2)),
    }


def keep_decisions(scores: dict[str, np.ndarray], threshold: float,
                   empty_fraction_max: float = DEFAULT_EMPTY_FRACTION_MAX) -> np.ndarray:
    """bool (N,): lesion samples need Dice >= threshold, lesion-free ones little predicted foreground."""
    return np.where(scores["lesion_free"], scores["foreground_fraction"] <= empty_fraction_max,
                    scores["dice"] >= threshold)


def best_per_source(dice: np.ndarray, kept: np.ndarray, sources: list[str | None],
                    k: int | dict[str, int]) -> np.ndarray:
    """``kept`` with at most ``k`` samples kept per source (the real pair a sample's mask came from; ``k`` a
    number, or one per source as :func:`source_quotas` gives): those with the highest validator Dice, earlier
    samples first on ties. Samples without a source are left as they are.
    Drawing many pairs per real image and keeping the best few is how a filter can raise precision without
    repeating the same few pairs (issue 13)."""
    out = kept.copy()
    groups: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        if src is not None and kept[i]:
            groups.setdefault(src, []).append(i)
    for src, members in groups.items():
        ranked = sorted(members, key=lambda i: (-float(dice[i]), i))
        out[ranked[k if isinstance(k, int) else k[src]:]] = False
    return out


def best_by_band(dice: np.ndarray, kept: np.ndarray, sources: list[str | None], bands: np.ndarray,
                 k: int) -> np.ndarray:
    """:func:`best_per_source` (at most ``k`` per source, the best by validator Dice), with the kept samples'
    lesion size bands (``bands``: 0 small, 1 medium, 2 large, 3 lesion-free) in the shares the passing samples
    were drawn in.

    Why: a validator finds a large lesion more easily than a small one, so ranking each source's draws by Dice
    keeps the large jitters of its mask and the set loses its small lesions (Kvasir-SEG N = 32: 3 % small kept
    of 4 % drawn, 16 % medium of 21 %). Band quotas are set over the whole set (largest remainder, ties to the
    smaller band), not per source, where a band drawn 1 time in 16 would round to 0 in every source. The bands
    are filled smallest first, each in descending Dice: a sample is kept while its source has fewer than ``k``
    and its band is under quota (filled in one Dice order over all bands, a source's two slots went to its
    large jitters before its small ones came up, and the small quota was never reached: 1 small kept where 3
    were due, session 18). Then sources still short of ``k`` take their best remaining samples whatever the
    band (so every source keeps as many as :func:`best_per_source` would). Written here: it is this one
    selection rule; no library has it. Samples without a source are left as they are."""
    out = kept.copy()
    cand = [i for i, src in enumerate(sources) if src is not None and kept[i]]
    out[cand] = False
    total = sum(min(c, k) for c in Counter(sources[i] for i in cand).values())
    drawn = dict(sorted(Counter(int(bands[i]) for i in cand).items()))  # smaller band first: ties go to it
    quota = _apportion(total, {b: float(c) for b, c in drawn.items()}, drawn)
    have: dict[str, int] = {}
    for relax in (False, True):
        # strict pass: the smallest band first; relaxed pass: whatever the band, in descending Dice
        order = sorted(cand, key=lambda i: (0 if relax else int(bands[i]), -float(dice[i]), i))
        for i in order:
            src, b = sources[i], int(bands[i])
            if out[i] or have.get(src, 0) >= k or (not relax and quota[b] <= 0):
                continue
            out[i], have[src] = True, have.get(src, 0) + 1
            quota[b] -= 1
    return out


def source_quotas(sources: list[str], share: float, weights: Sequence[float] | None = None) -> dict[str, int]:
    """How many of each source's draws to keep so that ``share`` of all draws are kept, each source's quota
    proportional to its draws (largest remainder, ties to the earlier source). With the same number of draws per
    source this is ``keep_best = share x draws``; it is the same rule for a set whose draws per source differ,
    such as a closed-loop round steered towards some sources (experiment/loop_arm.py).

    ``weights`` (one per draw): quotas proportional to each source's summed weights instead, the same total kept
    and no source keeping more than it drew (a closed loop that steers by what it keeps, ``LoopSettings.steer_by``;
    its weights are bounded, so a group is kept less, never dropped)."""
    if not 0.0 < share <= 1.0:
        raise ConfigError(f"keep share must be in (0, 1], got {share}")
    counts: dict[str, int] = {}
    for src in sources:
        counts[src] = counts.get(src, 0) + 1
    total = int(round(len(sources) * share))
    if weights is not None:
        if len(weights) != len(sources) or min(weights, default=1.0) <= 0:
            raise ConfigError(f"keep weights: need {len(sources)} positive weights, got {len(weights)}")
        mass: dict[str, float] = {}
        for src, w in zip(sources, weights, strict=True):
            mass[src] = mass.get(src, 0.0) + float(w)
        return _apportion(total, mass, counts)
    exact = {src: c * share for src, c in counts.items()}
    quota = {src: int(np.floor(e + 1e-9)) for src, e in exact.items()}
    left = total - sum(quota.values())
    for src in sorted(counts, key=lambda s: -(exact[s] - quota[s]))[: max(left, 0)]:
        quota[src] += 1
    return quota


def _apportion(total: int, mass: dict[str, float], caps: dict[str, int]) -> dict[str, int]:
    """``total`` split over the keys in proportion to ``mass``, none above its cap: the shares of capped keys
    go to the rest (water filling), then largest remainder (ties to the earlier key). Written here because it is
    this one rule; no library we use apportions with caps."""
    free = {k for k in mass if caps[k] > 0}
    left = float(min(total, sum(caps.values())))
    exact = dict.fromkeys(mass, 0.0)
    while free and left > 1e-9:
        m = sum(mass[k] for k in free)
        over = {k for k in free if left * mass[k] / m >= caps[k]}
        if not over:
            for k in free:
                exact[k] = left * mass[k] / m
            break
        for k in over:
            exact[k] = float(caps[k])
        left -= sum(caps[k] for k in over)
        free -= over
    out = {k: int(np.floor(exact[k] + 1e-9)) for k in mass}
    short = min(total, sum(caps.values())) - sum(out.values())
    for k in sorted((k for k in mass if out[k] < caps[k]), key=lambda k: -(exact[k] - out[k]))[: max(short, 0)]:
        out[k] += 1
    return out


def _draw_group(sample: Sample) -> str:
    """The group a synthetic sample is ranked in for ``keep_share``: its source pair, else the size band its
    mask was drawn in (a size-controlled lesion has no source), else one group of all the rest."""
    prov = sample.provenance
    if prov is not None and prov.source_id is not None:
        return prov.source_id
    band = ((prov.model_extra or {}).get("mask_info") or {}).get("band_drawn") if prov is not None else None
    return f"band:{band}" if band is not None else "other"


def filter_manifest(
    manifest_path: str | Path, validator_dir: str | Path, out_path: str | Path | None = None,
    threshold: Literal["auto"] | float = "auto", val: PairArrays | None = None, in_place: bool = False,
    overwrite: bool = False, empty_fraction_max: float = DEFAULT_EMPTY_FRACTION_MAX, auto_rule: AutoRule = "contrast",
    keep_best: int | None = None,
    keep_share: float | None = None,
    keep_weights: Sequence[float] | None = None,
    keep_bands: bool = False,
) -> FilterReport:
    """Score the synthetic samples of a manifest and write ``Provenance.validation`` for each.

    Writes a new manifest at ``out_path`` (default ``<name>.filtered.jsonl`` beside the input), or rewrites
    the input when ``in_place``; real rows are copied unchanged; no image or mask file is touched.
    ``threshold``: ``"auto"`` (by ``auto_rule``, see :func:`auto_threshold`) or a Dice value in [0, 1].
    ``keep_best``: of the samples that pass, keep at most this many per source (:func:`best_per_source`).
    ``keep_share``: instead, keep at most this share of each source's draws (:func:`source_quotas`; samples
    without a source are grouped by the band their mask was drawn in); with ``keep_weights`` (one per synthetic
    row, in manifest order) each source's quota follows its summed weights (:func:`source_quotas`).
    ``keep_bands``: with ``keep_best``, the kept lesions' size bands in the shares drawn (:func:`best_by_band`).
    """
    if keep_best is not None and keep_best < 1:
        raise ConfigError(f"keep_best must be at least 1, got {keep_best}")
    if keep_best is not None and keep_share is not None:
        raise ConfigError("give keep_best or keep_share, not both")
    if keep_bands and keep_best is None:
        raise ConfigError("keep_bands balances keep_best's choice over lesion sizes; give keep_best too")
    if keep_weights is not None and keep_share is None:
        raise ConfigError("keep_weights reweight keep_share's quotas; give keep_share too")
    manifest_path = Path(manifest_path)
    out = _output_path(manifest_path, out_path, in_place, overwrite)
    validator = load_validator(validator_dir)
    if threshold == "auto":
        thr, rule = auto_threshold(validator, val, auto_rule)
    elif 0.0 <= float(threshold) <= 1.0:
        thr, rule = float(threshold), f"given: Dice >= {float(threshold):g}"
    else:
        raise ConfigError(f"threshold must be 'auto' or a Dice value in [0, 1], got {threshold!r}")
    rows = read_manifest(manifest_path, resolve=out.parent.resolve() != manifest_path.parent.resolve())
    synthetic = [i for i, s in enumerate(rows) if s.origin == "synthetic"]
    if not synthetic:
        raise DataError(manifest_path, "no synthetic samples (origin='synthetic') to filter")
    resolved = read_manifest(manifest_path)
    arrays = load_arrays([resolved[i] for i in synthetic], validator.resolution, validator.image_channels)
    scores = score_pairs(validator, arrays.images, arrays.masks)
    kept = keep_decisions(scores, thr, empty_fraction_max)
    common = {"threshold": thr, "threshold_rule": rule, "empty_fraction_max": empty_fraction_max,
              "validator": str(validator.path), "validator_kind": validator.kind, "validator_hash": validator.hash}
    if keep_best is not None:
        sources = [(rows[i].provenance.source_id if rows[i].provenance else None) for i in synthetic]
        if keep_bands:
            area = (arrays.masks > 0).reshape(len(arrays.masks), -1).mean(axis=1)
            bands = np.where(scores["lesion_free"], 3, np.atleast_1d(band_index(area)))
            kept = best_by_band(scores["dice"], kept, sources, bands, keep_best)
            common["keep_bands"] = True
        else:
            kept = best_per_source(scores["dice"], kept, sources, keep_best)
        common["keep_best"] = keep_best
    elif keep_share is not None:
        groups = [_draw_group(rows[i]) for i in synthetic]
        kept = best_per_source(scores["dice"], kept, groups, source_quotas(groups, keep_share, keep_weights))
        common["keep_share"] = keep_share
        if keep_weights is not None:
            common["keep_weighted"] = True
    for j, i in enumerate(synthetic):
        rows[i] = _with_validation(rows[i], {
            "dice": None if scores["lesion_free"][j] else float(scores["dice"][j]),
            "confidence": float(scores["confidence"][j]),
            "foreground_fraction": float(scores["foreground_fraction"][j]), "kept": bool(kept[j]), **common})
    write_manifest(out, rows)
    report = _report(out, validator, thr, rule, empty_fraction_max, scores, kept, [rows[i].id for i in synthetic])
    report.keep_best, report.keep_share, report.keep_bands = keep_best, keep_share, keep_bands
    write_json_atomic(out.with_suffix(".filter.json"), report.to_dict())
    return report


def _output_path(manifest_path: Path, out_path: str | Path | None, in_place: bool, overwrite: bool) -> Path:
    if in_place:
        if out_path is not None and Path(out_path).resolve() != manifest_path.resolve():
            raise ConfigError("give either an output path or in_place, not both")
        return manifest_path
    out = Path(out_path) if out_path is not None else manifest_path.with_name(f"{manifest_path.stem}.filtered.jsonl")
    if out.resolve() == manifest_path.resolve():
        raise OverwriteError(f"{out}: output is the input manifest; pass in_place / --in-place to rewrite it")
    if out.exists() and not overwrite:
        raise OverwriteError(f"{out} exists; pass overwrite / --overwrite to replace it")
    return out


def _with_validation(sample: Sample, validation: dict) -> Sample:
    prov = sample.provenance or Provenance()
    return sample.model_copy(update={"provenance": prov.model_copy(update={"validation": validation})})


def _report(out: Path, validator: Validator, thr: float, rule: str, empty_max: float,
            scores: dict[str, np.ndarray], kept: np.ndarray, ids: list[str]) -> FilterReport:
    lesion = ~scores["lesion_free"]

    def mean(sel: np.ndarray) -> float | None:
        return float(scores["dice"][sel].mean()) if sel.any() else None

    return FilterReport(
        manifest=str(out), validator=str(validator.path), validator_kind=validator.kind, threshold=thr,
        threshold_rule=rule, empty_fraction_max=empty_max, n_scored=len(ids), n_kept=int(kept.sum()),
        n_lesion_free=int((~lesion).sum()), mean_dice_kept=mean(lesion & kept),
        mean_dice_rejected=mean(lesion & ~kept), rejected_ids=[s for s, k in zip(ids, kept, strict=True) if not k],
    )


def list_rejected(manifest_path: str | Path) -> list[Sample]:
    """Synthetic samples a filter run marked as rejected (``provenance.validation.kept`` is false)."""
    # only lists rows (opens no file they name), so rows naming files elsewhere are fine here
    return [s for s in read_manifest(manifest_path, resolve=False, allow_outside=True)
            if s.provenance and s.provenance.validation and s.provenance.validation.get("kept") is False]
