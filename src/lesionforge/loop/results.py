"""What a result file says about closed-loop arms: settings, every round, and the comparison with open loop.

``arms.<closed-loop arm>`` gets the arm's settings and, per seed, each round's targets and counts;
``closed_loop.<arm>`` gets the miss rate in the bands the loop targeted (per seed, on that seed's targeted
bands, and pooled over seeds) for the closed-loop arm, its open-loop arm and the baseline, and the paired
differences closed-loop minus open-loop (mDice, mIoU, miss rates with bootstrap intervals, as ``paired_diff``).
"""

from __future__ import annotations

from typing import Any

from lesionforge.experiment.records import RunRecord


def arm_fields(cfg, arm, recs: list[RunRecord]) -> dict[str, Any]:
    """Settings and per-seed round records of a closed-loop arm (``arms.<name>``)."""
    spec = cfg.generators[arm.generator]
    return {
        "method": spec.method, "generator": arm.generator, "ratio": arm.ratio, "mixing": arm.mixing,
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
    from lesionforge.experiment.results import paired_diff

    out: dict[str, Any] = {}
    for arm in cfg.arms:
        if arm.kind != "closed-loop":
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


def report_lines(res: dict[str, Any]) -> list[str]:
    """The report's closed-loop section: targeted-band miss rates and the paired differences against open loop."""
    from lesionforge.experiment.report import diff_table

    lines: list[str] = []
    for name, cl in (res.get("closed_loop") or {}).items():
        ref = cl["open_loop_arm"]
        pooled = cl["miss_rate_targeted_pooled"]

        def rate(arm: str, pooled: dict = pooled) -> str:
            p = pooled.get(arm) or {}
            return "n/a" if p.get("miss_rate") is None else f"{p['miss_rate']:.3f} ({p['missed']}/{p['lesions']})"

        targets = ", ".join(f"seed {s}: {'/'.join(b) or 'none'}" for s, b in cl["targeted_bands_by_seed"].items())
        lines += [f"## Closed loop: `{name}` against open loop `{ref}`", "",
                  f"Bands the loop targeted (drawn above an even share in some round): {targets}.", "",
                  "| arm | test miss rate in the targeted bands (pooled over seeds) |", "|---|---|",
                  *(f"| {arm} | {rate(arm)} |" for arm in pooled), "",
                  f"Paired difference `{name}` − `{ref}` (same pairing as above):", "",
                  diff_table({name: cl["paired_vs_open_loop"]}, ref), ""]
    return lines
