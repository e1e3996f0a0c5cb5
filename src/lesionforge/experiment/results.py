"""The result file of one (dataset, N, profile): PROTOCOL.md's schema, built from the run records.

``benchmarks/results/<dataset>-n<N>-<profile>.json`` holds the protocol settings, code version, seeds, every
arm's per-seed metrics and its per-image ones (see :mod:`lesionforge.experiment.per_image`), the paired
differences against the baseline with 95 % CIs (and of every synthetic arm
against every copy-paste arm, the non-diffusion reference it must also beat), the generator/filter settings,
timings, and the paths of a few sample pairs for the report's grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from lesionforge.data.volumes import case_groups
from lesionforge.experiment import stats
from lesionforge.experiment.budget import budget_of, segment_config_for
from lesionforge.experiment.config import ExperimentConfig, uses_unlabelled
from lesionforge.experiment.keys import cache_key, settings_dump
from lesionforge.experiment.per_image import per_image_fields
from lesionforge.experiment.records import BANDS, RunRecord
from lesionforge.experiment.stages import ExperimentData, SyntheticSet
from lesionforge.utils import code_version

SCHEMA_VERSION = 2  # 2: per-image, per-seed metrics of every arm (image_ids, arms.*.per_image)


def result_path(cfg: ExperimentConfig, n: int) -> Path:
    """``<results_dir>/<dataset>-n<N>-<profile>.json``."""
    return cfg.results_dir / f"{cfg.dataset.name}-n{n}-{cfg.profile}.json"


def config_hash(cfg: ExperimentConfig) -> str:
    """Hash of every setting that shapes the numbers (not where outputs go, nor a worker's thread count); preset
    files count by content, not by where they lie (see :func:`settings_dump`)."""
    return cache_key(settings_dump(cfg, exclude={"output", "results_dir", "threads"}))


def build_result(
    cfg: ExperimentConfig, n: int, records: list[RunRecord], synthetic: dict[str, SyntheticSet],
    sources: dict[str, Any], grid: dict[str, list[dict[str, str]]], subsets: dict[str, list[str]] | None = None,
    quality: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the result dict of regime ``n`` from its run records (every arm x seed of the config);
    ``subsets`` (name -> test ids) get their own paired differences; ``quality`` (arm -> dict) becomes each
    synthetic arm's ``synthetic_quality``."""
    at_n = cfg.arms_at(n)
    by_arm = {a.name: sorted((r for r in records if r.arm == a.name), key=lambda r: r.seed) for a in at_n}
    arms = {name: _arm_summary(cfg, name, recs, synthetic) for name, recs in by_arm.items()}
    per_image_top, per_image = per_image_fields(by_arm, cfg.baseline_arm)
    for name, block in per_image.items():
        arms[name]["per_image"] = block
    for name, q in (quality or {}).items():
        if name in arms and arms[name]["kind"] == "synthetic":
            arms[name]["synthetic_quality"] = q
    base = by_arm[cfg.baseline_arm]
    volumetric = bool(base) and base[0].cases is not None
    paired = {
        name: paired_diff(recs, base, cfg.bootstrap_samples, cfg.bootstrap_seed, subsets)
        for name, recs in by_arm.items() if name != cfg.baseline_arm
    }
    seg = effective_segment_config(cfg)
    # every copy-paste arm (on the real images, or also onto the backgrounds) is a reference each diffusion arm
    # is compared with
    versus_copy_paste = {
        ref.name: {a.name: paired_diff(by_arm[a.name], by_arm[ref.name], cfg.bootstrap_samples, cfg.bootstrap_seed)
                   for a in at_n if a.kind == "synthetic" and not cfg.is_copy_paste_reference(a)}
        for ref in at_n if cfg.is_copy_paste_reference(ref) and ref.name != cfg.baseline_arm
    }
    return {
        "dataset": cfg.dataset.name, "n_labelled": n, "profile": cfg.profile, "resolution": cfg.resolution,
        "code_version": code_version(), "steps": seg["steps"], "batch_size": seg["batch_size"],
        "network": seg["network"], "features": list(seg["features"]), "lr": seg["lr"], "seeds": list(cfg.seeds),
        "segment_config": seg,
        "selection": "best val mDice checkpoint", "miss_fraction": cfg.miss_fraction,
        "bootstrap": {"samples": cfg.bootstrap_samples, "seed": cfg.bootstrap_seed,
                      "unit": "test images, paired by id, seeds averaged per image first",
                      **({"unit_mdice3d": "test cases (volumes), paired by case id, seeds averaged per case first"}
                         if volumetric else {})},
        "baseline_arm": cfg.baseline_arm, "n_test_images": len(base[0].ids) if base else 0,
        **({"n_test_cases": len(base[0].cases), "test_cases": list(base[0].cases),
            "per_slice_scope": "test slices with foreground; mdice3d: every slice of each test case"}
           if volumetric else {}),
        "test_lesions_by_band": _lesions_by_band(base[0]) if base else None,
        **per_image_top,
        "arms": arms, "paired_diff": paired,
        **({"closed_loop": closed_loop_results(cfg, by_arm, cfg.bootstrap_samples, cfg.bootstrap_seed)}
           if any(a.kind == "closed-loop" for a in at_n) else {}),
        "paired_vs_copy_paste": {k: v for k, v in versus_copy_paste.items() if v},
        "transfer": _transfer_summary(by_arm),
        "generators": {k: _generator_summary(cfg, k, s) for k, s in synthetic.items()},
        "unlabelled_images_used": any(uses_unlabelled(cfg, a.generator) for a in at_n if a.generator is not None),
        "timings": {name: _timing_summary(recs) for name, recs in by_arm.items()},
        "machines": machines(records),
        "data": sources, "samples": grid, "config_hash": config_hash(cfg),
        "config": cfg.model_dump(mode="json"), "schema_version": SCHEMA_VERSION,
    }


def machines(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The machines the runs ran on (processor, cores, torch, GPU; not the host name, which says nothing to a
    reader), each with the runs per arm it ran; runs recorded before machines were kept count as unrecorded."""
    found: dict[str, dict[str, Any]] = {}
    for r in records:
        m = {k: v for k, v in (r.machine or {}).items() if k not in ("host", "torch_threads")} or None
        key = json.dumps(m, sort_keys=True)
        entry = found.setdefault(key, {"machine": m, "runs": 0, "arms": {}})
        entry["runs"] += 1
        entry["arms"].setdefault(r.arm, []).append(r.seed)
    return [found[k] for k in sorted(found, key=lambda k: -found[k]["runs"])]


def _lesions_by_band(rec: RunRecord) -> dict[str, int] | None:
    """Ground-truth lesion counts of the test set per band (the same for every run)."""
    if rec.band_lesions is None:
        return None
    return {b: int(sum(rec.band_lesions.get(b, []))) for b in BANDS}


def effective_segment_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """The shared ``SegmentConfig`` fields (every default filled in) without the per-run seed and arm options."""
    return budget_of(segment_config_for(cfg, cfg.arm(cfg.baseline_arm), cfg.seeds[0]))


def _arm_summary(
    cfg: ExperimentConfig, name: str, recs: list[RunRecord], synthetic: dict[str, SyntheticSet]
) -> dict[str, Any]:
    arm = cfg.arm(name)
    out: dict[str, Any] = {
        "kind": arm.kind,
        "mdice": [r.mdice for r in recs], "miou": [r.miou for r in recs],
        "miss_rate": [r.miss_rate for r in recs],
        "miss_rate_by_band": {b: [r.miss_rate_by_band.get(b) for r in recs] for b in BANDS},
        "best_val_mdice": [r.best_val_mdice for r in recs],
    }
    if any(r.cases is not None for r in recs):
        out["mdice3d"] = [r.mdice3d for r in recs]
    for key in ("mdice", "miou", "miss_rate", "mdice3d"):
        if key not in out:
            continue
        m, s = stats.mean_std([np.nan if v is None else v for v in out[key]])
        out[f"{key}_mean"], out[f"{key}_std"] = _num(m), _num(s)
    subsets = sorted({k for r in recs for k in r.subsets})
    if subsets:
        out["subsets"] = {k: _metric_lists([r.subsets.get(k, {}) for r in recs]) for k in subsets}
    if arm.uses_copy_paste:
        out["copy_paste_p"] = arm.paste.prob
    if arm.kind == "closed-loop":
        out.update(closed_loop_arm_fields(cfg, arm, recs))
    if arm.kind == "synthetic":
        spec = cfg.generators[arm.generator]
        out.update({
            "method": spec.method, "generator": arm.generator, "ratio": arm.mixing.ratio,
            "filtered": arm.filtered and spec.filter is not None, "mixing": arm.mixing.mode,
            "n_per_real": spec.n_per_real,
        })
        if arm.mixing.mode in ("alpha", "patch-merge"):
            out["alpha"] = arm.mixing.alpha
        if arm.mixing.mode == "patch-merge":
            out["patch_size"] = arm.mixing.patch_size
        # set only where the arm sets them, so older results keep their fields
        for key in ("synthetic_until", "synthetic_border_ignore", "synthetic_pixel_filter",
                    "synthetic_pixel_filter_class"):
            if getattr(arm.mixing, key) is not None:
                out[key] = getattr(arm.mixing, key)
        s = synthetic.get(arm.generator)
        if s is not None:
            out["n_synthetic"] = s.info.get("n_kept" if out["filtered"] else "n_generated")
        draws: dict[str, list[int]] = {}
        for r in recs:
            if r.synthetic_set is not None:
                draws.setdefault(r.synthetic_set, []).append(r.seed)
        if draws:  # seeds by the set fingerprint they trained on: more than one key = runs on different draws
            out["set_draws"] = draws
    return out


def paired_diff(
    arm: list[RunRecord], base: list[RunRecord], n_boot: int = 2000, seed: int = 0,
    subsets: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Paired differences ``arm − base``: mdice and miou bootstrapped over images; miss_rate overall and by
    band as pooled lesion ratios bootstrapped over images (when per-image counts exist); mdice3d (volumes)
    bootstrapped over test cases, and mdice's ``over_cases`` (volumes): the per-slice mean resampled by case;
    each also over seeds when >= 3; and the same over images restricted to each named subset (``subsets[name]``
    = image ids)."""
    volumes = all(r.cases is not None for r in [*arm, *base]) and bool(arm) and bool(base)
    out: dict[str, Any] = _diffs(arm, base, n_boot, seed, by_case=volumes)
    if volumes:
        per_case = [stats.per_image_means([r.per_image("dice3d") for r in recs]) for recs in (arm, base)]
        out["mdice3d"] = {**stats.bootstrap_paired(*per_case, n_boot, seed), "unit": "cases"}
    for key, d in out.items():
        seeds = _seed_ci(arm, base, key)
        if seeds is not None:
            d["over_seeds"] = seeds
    if subsets:
        out["subsets"] = {name: _diffs(arm, base, n_boot, seed, set(ids)) for name, ids in subsets.items()}
    return out


def _diffs(
    arm: list[RunRecord], base: list[RunRecord], n_boot: int, seed: int, ids: set[str] | None = None,
    by_case: bool = False,
) -> dict[str, dict[str, Any]]:
    return {**_overlap_diffs(arm, base, n_boot, seed, ids, by_case), **_miss_diffs(arm, base, n_boot, seed, ids)}


def _overlap_diffs(
    arm: list[RunRecord], base: list[RunRecord], n_boot: int, seed: int, ids: set[str] | None = None,
    by_case: bool = False,
) -> dict[str, dict[str, Any]]:
    def means(recs: list[RunRecord], key: str) -> dict[str, float]:
        m = stats.per_image_means([r.per_image(key) for r in recs])
        return m if ids is None else {i: v for i, v in m.items() if i in ids}

    out = {}
    for metric, key in (("mdice", "dice"), ("miou", "iou")):
        a, b = means(arm, key), means(base, key)
        out[metric] = stats.bootstrap_paired(a, b, n_boot, seed)
        if by_case and metric == "mdice":
            # the same difference with each test case resampled with all its slices (a volume's slices are not
            # independent draws; the interval over slices treats them as if they were)
            d = stats.bootstrap_paired(a, b, n_boot, seed, groups=case_groups(a))
            out[metric]["over_cases"] = {"mean": d["mean"], "ci95": d["ci95"], "n_cases": d.get("n_groups", 0)}
    return out


def _miss_diffs(
    arm: list[RunRecord], base: list[RunRecord], n_boot: int, seed: int, ids: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, band in [("miss_rate", None), *((f"miss_rate_{b}", b) for b in BANDS)]:
        a, b = _lesion_counts(arm, band, ids), _lesion_counts(base, band, ids)
        if a is not None and b is not None:
            d = stats.ratio_bootstrap_paired(a, b, n_boot, seed)
            if d["n_images"] > 0:
                out[key] = d
    return out


def _seed_ci(arm: list[RunRecord], base: list[RunRecord], metric: str) -> dict | None:
    """Per-seed paired interval of ``mdice``, ``miou``, ``miss_rate`` or ``miss_rate_<band>``; seeds are
    matched by value so a missing seed cannot shift the pairing."""
    band = metric.removeprefix("miss_rate_")

    def value(r: RunRecord) -> float | None:
        return r.miss_rate_by_band.get(band) if band in BANDS else getattr(r, metric)

    b = {r.seed: value(r) for r in base}
    pairs = [(value(r), b[r.seed]) for r in arm if r.seed in b]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    if not pairs:
        return None
    return stats.seed_paired_ci([x for x, _ in pairs], [y for _, y in pairs])


def _lesion_counts(
    recs: list[RunRecord], band: str | None = None, ids: set[str] | None = None
) -> dict[str, tuple[float, float]] | None:
    """Per image id: (missed, lesions) summed over seeds, of one band or all; None without per-image counts."""
    out: dict[str, tuple[float, float]] = {}
    for r in recs:
        missed = r.missed if band is None else (r.band_missed or {}).get(band)
        total = r.lesions if band is None else (r.band_lesions or {}).get(band)
        if missed is None or total is None:
            return None
        for i, m, t in zip(r.ids, missed, total, strict=True):
            if ids is None or i in ids:
                a, b = out.get(i, (0.0, 0.0))
                out[i] = (a + m, b + t)
    return out


def _metric_lists(per_seed: list[dict[str, Any]]) -> dict[str, list]:
    keys = sorted({k for d in per_seed for k, v in d.items() if isinstance(v, int | float) or v is None})
    return {k: [d.get(k) for d in per_seed] for k in keys}


def _transfer_summary(by_arm: dict[str, list[RunRecord]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, recs in by_arm.items():
        for ds in sorted({k for r in recs for k in r.transfer}):
            out.setdefault(ds, {})[name] = _metric_lists([r.transfer.get(ds, {}) for r in recs])
    return out


def _generator_summary(cfg: ExperimentConfig, name: str, s: SyntheticSet) -> dict[str, Any]:
    return {"settings": cfg.generators[name].model_dump(mode="json"), **s.info}


def _timing_summary(recs: list[RunRecord]) -> dict[str, float]:
    keys = sorted({k for r in recs for k in r.timings})
    return {f"{k}_mean": round(float(np.mean([r.timings[k] for r in recs if k in r.timings])), 3) for k in keys}


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def write_grid_samples(
    cfg: ExperimentConfig, n: int, data: ExperimentData, synthetic: dict[str, SyntheticSet]
) -> dict[str, list[dict[str, str]]]:
    """Pick a few real and synthetic pairs for the report's grid; paths are relative to the results folder.

    Real pairs live in memory (preprocessed arrays), so they are written as PNGs under
    ``<output>/n<N>/grid``; synthetic pairs are referenced where the synthesizer wrote them.
    """
    from lesionforge.data.io import write_image, write_mask
    from lesionforge.data.manifest import kept, read_manifest

    k = cfg.grid_samples
    labelled = data.labelled(n)
    out: dict[str, list[dict[str, str]]] = {"real": []}
    folder = cfg.output / f"n{n}" / "grid"
    for i in range(min(k, len(labelled))):
        img, msk = folder / f"real_{i:02d}.png", folder / f"real_{i:02d}_mask.png"
        write_image(img, labelled.images[i])
        write_mask(msk, labelled.masks[i])
        out["real"].append({"id": labelled.ids[i], "image": _rel(img, cfg), "mask": _rel(msk, cfg)})
    for name, s in synthetic.items():
        manifest = s.filtered_manifest or s.manifest
        if not Path(manifest).is_file():
            continue
        rows = [r for r in kept(read_manifest(manifest)) if r.masks][:k]
        out[f"synthetic:{name}"] = [
            {"id": r.id, "image": _rel(Path(r.image), cfg), "mask": _rel(Path(r.masks[0]), cfg)} for r in rows
        ]
    return out


def _rel(path: Path, cfg: ExperimentConfig) -> str:
    return os.path.relpath(Path(path).resolve(), cfg.results_dir.resolve())


# Closed-loop arms (docs/loop.md): ``arms.<closed-loop arm>`` gets the arm's settings and, per seed, each round's
# targets and counts; ``closed_loop.<arm>`` the miss rate in the bands the loop targeted for it, its open-loop arm
# and the baseline, and the paired differences closed-loop minus open-loop.

def closed_loop_arm_fields(cfg, arm, recs: list[RunRecord]) -> dict[str, Any]:
    """Settings and per-seed round records of a closed-loop arm (``arms.<name>``)."""
    spec = cfg.generators[arm.generator]
    return {
        "method": spec.method, "generator": arm.generator, "ratio": arm.mixing.ratio, "mixing": arm.mixing.mode,
        "filtered": arm.filtered and spec.filter is not None, "n_per_real": spec.n_per_real,
        "loop_settings": arm.loop.model_dump(mode="json"),
        "n_synthetic": [r.loop["n_kept"] if r.loop else None for r in recs],
        "n_generated": [r.loop["n_generated"] if r.loop else None for r in recs],
        "rounds": [[{k: rd.get(k) for k in ("round", "n_requested", "n_generated", "n_kept", "targeted",
                                            "band_shares", "real_band_shares", "diagnosis", "steered")}
                    for rd in (r.loop or {}).get("rounds", [])] for r in recs],
        "targeted_bands": [(r.loop or {}).get("targeted_bands") for r in recs],
        "fairness": [(r.loop or {}).get("fairness") for r in recs],
    }


def _targeted_counts(rec: RunRecord, bands: list[str]) -> tuple[int, int] | None:
    if rec.band_missed is None or rec.band_lesions is None:
        return None
    return (sum(sum(rec.band_missed.get(b, [])) for b in bands), sum(sum(rec.band_lesions.get(b, [])) for b in bands))


def closed_loop_results(cfg, by_arm: dict[str, list[RunRecord]], n_boot: int, seed: int) -> dict[str, Any]:
    """``closed_loop.<arm>``: targeted-band miss rates against open loop and baseline, paired differences."""
    out: dict[str, Any] = {}
    for arm in cfg.arms:
        if arm.kind != "closed-loop" or arm.name not in by_arm:
            continue
        ref = arm.loop.open_loop_arm
        compared = {arm.name: by_arm[arm.name], ref: by_arm[ref], cfg.baseline_arm: by_arm[cfg.baseline_arm]}
        targets = {r.seed: (r.loop or {}).get("targeted_bands") or [] for r in by_arm[arm.name]}
        per_seed: dict[str, list] = {}
        pooled: dict[str, Any] = {}
        for name, recs in compared.items():
            counts = {r.seed: _targeted_counts(r, targets.get(r.seed, [])) for r in recs}
            per_seed[name] = [None if not c or c[1] == 0 else c[0] / c[1] for c in counts.values()]
            missed = sum(c[0] for c in counts.values() if c)
            lesions = sum(c[1] for c in counts.values() if c)
            pooled[name] = {"missed": missed, "lesions": lesions, "miss_rate": missed / lesions if lesions else None}
        out[arm.name] = {
            "open_loop_arm": ref, "targeted_bands_by_seed": {str(k): v for k, v in targets.items()},
            "miss_rate_targeted": per_seed, "miss_rate_targeted_pooled": pooled,
            "paired_vs_open_loop": paired_diff(by_arm[arm.name], by_arm[ref], n_boot, seed),
        }
    return out


def paired_from_result(result: dict[str, Any], arm: str, ref: str, path: str | Path = "result") -> dict[str, Any]:
    """``arm − ref`` paired over images (and over seeds) recomputed from a result file alone, with the file's
    bootstrap settings: the stored intervals again, or a pair of arms the file did not compare. A file of volume
    slices also gets the difference at the ends and in the middle of each test structure
    (:func:`~lesionforge.data.volumes.position_subsets`), so files written before the runner stored those
    subsets show them too."""
    from lesionforge.data.volumes import position_subsets
    from lesionforge.errors import DataError
    from lesionforge.experiment.per_image import records_from_result
    from lesionforge.segment.metrics import is_volumetric

    recs = records_from_result(result, path)
    for name in (arm, ref):
        if name not in recs:
            raise DataError(path, f"has no arm {name!r} (arms: {', '.join(recs)})")
    boot = result.get("bootstrap", {})
    ids = result.get("image_ids") or []
    subsets = position_subsets(ids) if is_volumetric(ids) else None
    return paired_diff(recs[arm], recs[ref], boot.get("samples", 2000), boot.get("seed", 0), subsets)
