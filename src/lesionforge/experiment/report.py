"""Human-readable reports rebuilt from result JSONs alone: Markdown tables and PNG plots.

``write_report(result.json)`` writes ``<stem>.md`` beside the JSON with mDice per arm vs N (from every
sibling result of the same dataset and profile), miss rate by lesion band per arm, and a grid of real and
synthetic pairs with the mask outline. ``readme_table`` renders the headline table the README quotes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lesionforge.errors import DataError
from lesionforge.experiment.records import BANDS
from lesionforge.utils import save_figure_atomic, write_text_atomic

REQUIRED_KEYS = ("dataset", "n_labelled", "profile", "resolution", "code_version", "steps", "seeds", "arms",
                 "paired_diff")


def load_result(path: str | Path) -> dict[str, Any]:
    """Read a result JSON and check it has the protocol's keys; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "result file not found")
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON ({e})") from e
    missing = [k for k in REQUIRED_KEYS if k not in res]
    if missing:
        raise DataError(path, f"not an experiment result file (missing {missing})")
    return res


def sibling_results(path: str | Path) -> list[dict[str, Any]]:
    """Every result in the folder of ``path`` with the same dataset and profile, sorted by N."""
    res = load_result(path)
    found = [load_result(p) for p in sorted(Path(path).parent.glob(f"{res['dataset']}-n*-{res['profile']}.json"))]
    found = [r for r in found if r["dataset"] == res["dataset"] and r["profile"] == res["profile"]]
    return sorted(found or [res], key=lambda r: r["n_labelled"])


def _pm(values: list, digits: int = 3) -> str:
    a = np.array([np.nan if v is None else v for v in values], dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return "n/a"
    std = a.std(ddof=1) if a.size > 1 else 0.0
    return f"{a.mean():.{digits}f} ± {std:.{digits}f}"


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None or not np.isfinite(d["mean"]):
        return "n/a"
    lo, hi = d["ci95"]
    rel = d.get("relative_pct")
    rel_s = f" ({rel:+.1f} %)" if rel is not None else ""
    return f"{d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{rel_s}"


def _rel(d: dict | None) -> str:
    if not d:
        return "n/a"
    rel = d.get("relative_pct")
    return f"{d['mean']:+.3f}" + (f" ({rel:+.1f} %)" if rel is not None else "")


def _arm_label(name: str, arm: dict) -> str:
    if arm.get("kind") != "synthetic":
        return name
    mixing = {
        "ratio": f"{arm.get('ratio')}:1 synthetic:real",
        "alpha": f"alpha {arm.get('alpha')}",
        "patch-merge": f"patch-merge alpha {arm.get('alpha')}, {arm.get('patch_size')} px",
    }.get(arm.get("mixing"), arm.get("mixing"))
    if arm.get("synthetic_until") is not None:  # the pairs leave the batches after this share of the steps
        mixing += f" for the first {arm['synthetic_until']:.0%} of steps"
    if arm.get("synthetic_border_ignore") is not None:
        mixing += f", label border {arm['synthetic_border_ignore']} px ignored"
    if arm.get("synthetic_pixel_filter") is not None:  # FreeMask's noisy-region filter, its tolerance margin
        label = arm.get("synthetic_pixel_filter_class")
        mixing += (f", {label + ' ' if label else ''}pixels above {arm['synthetic_pixel_filter']:g}x the validator's "
                   "real loss ignored")
    filt = "filtered" if arm.get("filtered") else "unfiltered"
    paste = f", + copy-paste p {arm['copy_paste_p']}" if arm.get("copy_paste_p") is not None else ""
    return f"{name} ({arm.get('method')}, {mixing}, {filt}{paste})"


def arms_table(res: dict[str, Any]) -> str:
    """Markdown table: per arm, mean ± std over seeds of mDice, mIoU, miss rate (overall and by band)."""
    vol = any("mdice3d" in a for a in res["arms"].values())  # a volume dataset: 3D Dice per case beside
    head = ("| arm | mDice | mIoU | miss rate | miss small | miss medium | miss large |"
            + (" mDice 3D |" if vol else "") + "\n" + "|---" * (8 if vol else 7) + "|")
    rows = []
    for name, a in res["arms"].items():
        bands = a.get("miss_rate_by_band", {})
        rows.append(
            f"| {_arm_label(name, a)} | {_pm(a['mdice'])} | {_pm(a['miou'])} | {_pm(a['miss_rate'])} | "
            + " | ".join(_pm(bands.get(b, [])) for b in BANDS) + " |"
            + (f" {_pm(a.get('mdice3d', []))} |" if vol else "")
        )
    return "\n".join([head, *rows])


def diff_table(diffs: dict[str, Any], ref: str = "baseline") -> str:
    """Markdown table of paired differences (arm − ``ref``) with 95 % CIs over images (and over seeds)."""
    vol = any("mdice3d" in d for d in diffs.values())  # volumes: 3D Dice bootstrapped over test cases
    head = (f"| arm − {ref} | ΔmDice [95 % CI] | ΔmIoU [95 % CI] | Δmiss rate [95 % CI] | Δmiss small [95 % CI] | "
            "ΔmDice over seeds |" + (" ΔmDice over cases [95 % CI] | ΔmDice 3D over cases [95 % CI] |" if vol else "")
            + "\n" + "|---" * (8 if vol else 6) + "|")
    rows = []
    for name, d in diffs.items():
        small = d.get("miss_rate_small")
        small_s = _ci(small) if small and "ci95" in small else _rel(small)
        rows.append(f"| {name} | {_ci(d.get('mdice'))} | {_ci(d.get('miou'))} | {_ci(d.get('miss_rate'))} | "
                    f"{small_s} | {_ci(d.get('mdice', {}).get('over_seeds'))} |"
                    + (f" {_ci(d.get('mdice', {}).get('over_cases'))} | {_ci(d.get('mdice3d'))} |" if vol else ""))
    return "\n".join([head, *rows])


def subset_diff_table(res: dict[str, Any], ref: str = "baseline") -> str:
    """Markdown table of paired differences restricted to each named test subset (bootstrap over its images)."""
    head = f"| subset | arm − {ref} | ΔmDice [95 % CI] | Δmiss rate [95 % CI] |\n|---|---|---|---|"
    rows = [
        f"| {sub} | {name} | {_ci(d.get('mdice'))} | {_ci(d.get('miss_rate'))} |"
        for name, arm in res["paired_diff"].items() for sub, d in arm.get("subsets", {}).items()
    ]
    return "\n".join([head, *rows])


def groups_table(groups: dict[str, dict[str, dict[str, list]]]) -> str:
    """Markdown table of per-seed metrics by group (a named subset or a transfer dataset) and arm."""
    head = "| set | arm | mDice | mIoU | miss rate | miss small |\n|---|---|---|---|---|---|"
    rows = [
        f"| {g} | {arm} | {_pm(m.get('mdice', []))} | {_pm(m.get('miou', []))} | {_pm(m.get('miss_rate', []))} | "
        f"{_pm(m.get('miss_rate_small', []))} |"
        for g, arms in groups.items() for arm, m in arms.items()
    ]
    return "\n".join([head, *rows])


def generators_table(res: dict[str, Any]) -> str:
    """Markdown table of each generator's synthetic set: size, filter acceptance and threshold, timings."""
    head = ("| generator | method | generated | kept | acceptance | threshold | validator Dice kept / rejected | "
            "train s | synthesis img/s |\n|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, g in res["generators"].items():
        f, t = g.get("filter") or {}, g.get("timings", {})

        def num(v, fmt: str = ".3f") -> str:
            return "—" if v is None else format(v, fmt)

        rows.append(
            f"| {name} | {g.get('settings', {}).get('method')} | {g.get('n_generated')} | {g.get('n_kept', '—')} | "
            f"{num(f.get('acceptance_rate'), '.1%')} | {f.get('threshold_rule', '—')} | "
            f"{num(f.get('mean_dice_kept'))} / {num(f.get('mean_dice_rejected'))} | "
            f"{num(t.get('generator_train_s') or t.get('train_generator_s'), '.0f')} | "
            f"{num(t.get('synthesis_images_per_s'), '.2f')} |"
        )
    return "\n".join([head, *rows])


def quality_table(res: dict[str, Any]) -> str | None:
    """Markdown table of each synthetic arm's ``synthetic_quality`` (None when no arm has one: older files)."""
    rows, extractors = [], set()
    for name, arm in res["arms"].items():
        q = arm.get("synthetic_quality")
        if not q:
            continue
        extractors.add(q.get("extractor", "n/a"))
        if "fid" not in q:
            rows.append(f"| {name} | {q.get('n_synthetic', 0)} | {q.get('skipped', 'n/a')} | | | | | | |")
            continue
        ms, mem = q["mask_stats"], q["memorization"]

        def area(d: dict) -> str:
            return "—" if d.get("area_share_mean") is None else f"{d['area_share_mean']:.1%}"

        def parts(d: dict) -> str:  # None when every mask is empty
            return "—" if d.get("components_mean") is None else f"{d['components_mean']:.2f}"

        rows.append(
            f"| {name} | {q['n_synthetic']} | {q['fid']:.3f} | {1000 * q['kid']:.2f} ± {1000 * q['kid_std']:.2f} | "
            f"{q['ms_ssim']:.3f} / {q['ms_ssim_real']:.3f} | {area(ms['synthetic'])} / {area(ms['real'])} | "
            f"{parts(ms['synthetic'])} / {parts(ms['real'])} | "
            f"{ms['synthetic']['n_empty']} / {ms['real']['n_empty']} | {mem['flagged_share']:.1%} |"
        )
    if not rows:
        return None
    head = (f"Features `{', '.join(sorted(extractors))}`; FID/KID against the real test images; pairs are "
            "synthetic / real test; "
            "memorized = share of synthetic images nearer a training image than 99 % of real-to-real nearest "
            "neighbours (docs/quality.md).\n\n"
            "| arm | images | FID | KID x 1000 | MS-SSIM | lesion area | components | empty masks | memorized |\n"
            "|---|---|---|---|---|---|---|---|---|")
    return "\n".join([head, *rows])


def readme_table(paths: list[str | Path]) -> str:
    """The headline Markdown table the README quotes, rendered from result files (never typed by hand)."""
    results = [(p, load_result(p)) for p in paths]
    # volume results (MRI/CT) add the 3D Dice per test case beside the per-slice mDice; 2D rows show "—" there
    vol = any("mdice3d" in a for _, res in results for a in res["arms"].values())
    head = ("| dataset | N | profile | arm | mDice (mean ± std) | ΔmDice vs baseline [95 % CI] | "
            "ΔmDice vs copy-paste [95 % CI] |"
            + (" 3D Dice per case (mean ± std) | Δ3D Dice vs baseline [95 % CI, cases] |" if vol else "")
            + " file |\n" + "|---" * (10 if vol else 8) + "|")
    rows = []
    for p, res in results:
        # the first copy-paste arm is the column's reference (the headline configs have one); results written
        # before the comparison existed say so instead of leaving a blank
        vs_cp = next(iter(res["paired_vs_copy_paste"].values()), {}) if "paired_vs_copy_paste" in res else None
        for name, a in res["arms"].items():
            d = res["paired_diff"].get(name, {}).get("mdice")
            c = (vs_cp or {}).get(name, {}).get("mdice")
            c_s = _ci(c) if c else ("n/a (older file)" if vs_cp is None and a.get("kind") == "synthetic" else "—")
            d3 = res["paired_diff"].get(name, {}).get("mdice3d")
            v_s = (f" {_pm(a['mdice3d']) if 'mdice3d' in a else '—'} | {_ci(d3) if d3 else '—'} |" if vol else "")
            rows.append(f"| {res['dataset']} | {res['n_labelled']} | {res['profile']} | {_arm_label(name, a)} | "
                        f"{_pm(a['mdice'])} | {_ci(d) if d else '—'} | {c_s} |{v_s} `{Path(p).name}` |")
    return "\n".join([head, *rows])


def plot_mdice_vs_n(results: list[dict[str, Any]], path: Path) -> Path:
    """mDice per arm vs N (mean over seeds, error bars = std)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    arms = list(dict.fromkeys(a for r in results for a in r["arms"]))
    for k, name in enumerate(arms):
        pts = [(r["n_labelled"], r["arms"][name]["mdice"]) for r in results if name in r["arms"]]
        ns = np.array([p[0] for p in pts], dtype=float) * (1 + 0.02 * (k - len(arms) / 2))  # dodge overlaps
        means = [np.mean(v) for _, v in pts]
        stds = [np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v in pts]
        ax.errorbar(ns, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    n_values = sorted({r["n_labelled"] for r in results})
    ax.set_xticks(n_values, [str(n) for n in n_values])
    ax.minorticks_off()
    ax.set_xlabel("labelled images N")
    ax.set_ylabel("test mDice")
    ax.set_title(f"{results[0]['dataset']} ({results[0]['profile']}, {len(results[0]['seeds'])} seeds)")
    ax.legend(fontsize=8)
    save_figure_atomic(fig, path)
    return path


def plot_miss_by_band(res: dict[str, Any], path: Path) -> Path:
    """Lesion miss rate by area band (< 1 %, 1–5 %, > 5 % of the image) per arm, mean ± std over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    names = list(res["arms"])
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        bands = res["arms"][name].get("miss_rate_by_band", {})
        vals = [np.array([np.nan if v is None else v for v in bands.get(b, [])], dtype=float) for b in BANDS]
        # a band without lesions stays empty (NaN draws no bar) rather than showing a misleading 0
        means = [np.nanmean(v) if np.any(~np.isnan(v)) else np.nan for v in vals]
        stds = [np.nanstd(v) if np.any(~np.isnan(v)) else 0.0 for v in vals]
        ax.bar(np.arange(3) + k * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(np.arange(3) + width * (len(names) - 1) / 2, ["small <1 %", "medium 1–5 %", "large >5 %"])
    ax.set_ylabel(f"miss rate (cover < {res.get('miss_fraction', 0.1)})")
    ax.set_title(f"{res['dataset']} N={res['n_labelled']}")
    ax.legend(fontsize=8)
    save_figure_atomic(fig, path)
    return path


def plot_sample_grid(res: dict[str, Any], base: Path, path: Path) -> Path | None:
    """Rows of real and synthetic pairs (image with the mask outline in green); None when no files exist."""
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    from lesionforge.data.io import read_image, read_mask

    rows = []
    for group, items in res.get("samples", {}).items():
        pairs = [(base / it["image"], base / it["mask"]) for it in items]
        pairs = [(i, m) for i, m in pairs if i.is_file() and m.is_file()]
        if pairs:
            rows.append((group, pairs))
    if not rows:
        return None
    cols = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.4 * cols, 1.5 * len(rows)), squeeze=False)
    for r, (group, pairs) in enumerate(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(pairs):
                img = read_image(pairs[c][0], channels=3).copy()
                img[find_boundaries(read_mask(pairs[c][1]) > 0, mode="inner")] = (0, 255, 0)
                ax.imshow(img)
        axes[r][0].set_title(group, fontsize=8, loc="left")
    save_figure_atomic(fig, path)
    return path


def write_report(result_json: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``<stem>.md`` and its PNGs (into ``out_dir``, default the JSON's folder); returns the .md path."""
    result_json = Path(result_json)
    res = load_result(result_json)
    out = Path(out_dir) if out_dir is not None else result_json.parent
    stem = result_json.stem
    vs_n = plot_mdice_vs_n(sibling_results(result_json), out / f"{stem}-mdice-vs-n.png")
    bands = plot_miss_by_band(res, out / f"{stem}-miss-by-band.png")
    grid = plot_sample_grid(res, result_json.parent, out / f"{stem}-samples.png")
    write_text_atomic(out / f"{stem}.md", _markdown(res, result_json.name, vs_n, bands, grid))
    return out / f"{stem}.md"


def machines_line(machines: list[dict[str, Any]]) -> str:
    """The result's ``machines`` in words: each machine with how many runs it made."""
    parts = []
    for m in machines:
        d = m["machine"]
        what = ("not recorded (runs made before run records kept it)" if d is None else
                f"{d.get('processor')}, {d.get('cpus_usable')} cores usable, torch {d.get('torch')}"
                + (f", GPU {d['gpu']}" if d.get("gpu") else ""))
        parts.append(f"{what}: {m['runs']} runs")
    return "; ".join(parts)


def _markdown(res: dict[str, Any], name: str, vs_n: Path, bands: Path, grid: Path | None) -> str:
    seg = (f"{res.get('network', '?')} features {res.get('features', '?')}, {res['steps']} steps of batch "
           f"{res.get('batch_size', '?')}, {res.get('selection', 'best val checkpoint')}")
    lines = [
        f"# {res['dataset']}, N = {res['n_labelled']} labelled, profile {res['profile']} ({res['resolution']} px)",
        "",
        f"Generated from `{name}` (code `{res['code_version']}`), seeds {res['seeds']}, "
        f"{res.get('n_test_images', '?')} test images"
        + (f" (slices with foreground of {res['n_test_cases']} test volumes; the 3D Dice reassembles every slice "
           "of each volume and is bootstrapped over cases)" if res.get("n_test_cases") else "")
        + f". Segmentation (identical for every arm): {seg}. "
        f"Lesion miss fraction {res.get('miss_fraction', 0.1)}; test lesions by band "
        f"{res.get('test_lesions_by_band') or 'n/a'}. Unlabelled images used: "
        f"{'yes' if res.get('unlabelled_images_used') else 'no'}."
        + (f" Machines: {machines_line(res['machines'])}." if res.get("machines") else ""),
        "", "## Test metrics (mean ± std over seeds)", "", arms_table(res), "",
        "## Paired difference against the baseline", "",
        "Bootstrap over test images (paired by image id, seeds averaged per image first; miss rates as pooled "
        f"lesion ratios; {res.get('bootstrap', {}).get('samples', '?')} resamples); the last column is a "
        "Student-t interval over seeds (paired by seed).", "", diff_table(res["paired_diff"]), "",
    ]
    for ref, diffs in res.get("paired_vs_copy_paste", {}).items():
        lines += [f"Synthetic arms against `{ref}`, the non-diffusion reference they must also beat (same "
                  "pairing):", "", diff_table(diffs, ref), ""]
    lines += [f"![mDice vs N]({vs_n.name})", "", f"![miss rate by band]({bands.name})", ""]
    lines += _subset_lines(res)
    if res.get("transfer"):
        lines += ["## Transfer (models scored unchanged on other datasets)", "", groups_table(res["transfer"]), ""]
    if grid is not None:
        lines += ["## Real and synthetic pairs (mask outline in green)", "", f"![samples]({grid.name})", ""]
    if res.get("generators"):
        lines += ["## Synthetic sets", "", generators_table(res), ""]

    lines += closed_loop_lines(res)
    quality = quality_table(res)
    if quality:
        lines += ["## Synthetic set quality and memorization (kept samples for filtered arms)", "", quality, ""]
    return "\n".join(lines)


def _subset_lines(res: dict[str, Any]) -> list[str]:
    """The named-subset section: per-seed metrics by arm and the subset's own paired differences."""
    subsets: dict[str, dict[str, dict[str, list]]] = {}
    for arm, a in res["arms"].items():
        for g, m in a.get("subsets", {}).items():
            subsets.setdefault(g, {})[arm] = m
    has_diffs = any(d.get("subsets") for d in res["paired_diff"].values())
    if not (subsets or has_diffs):
        return []
    lines = ["## Named test subsets (e.g. flat = Kvasir's sessile polyps)", ""]
    if subsets:
        lines += [groups_table(subsets), ""]
    if has_diffs:
        lines += [subset_diff_table(res), ""]
    return lines


def closed_loop_lines(res: dict[str, Any]) -> list[str]:
    """The report's closed-loop section: targeted-band miss rates and the paired differences against open loop."""
    lines: list[str] = []
    for name, cl in (res.get("closed_loop") or {}).items():
        ref = cl["open_loop_arm"]
        pooled = cl["miss_rate_targeted_pooled"]

        def rate(arm: str, pooled: dict = pooled) -> str:
            p = pooled.get(arm) or {}
            return "n/a" if p.get("miss_rate") is None else f"{p['miss_rate']:.3f} ({p['missed']}/{p['lesions']})"

        targets = ", ".join(f"seed {s}: {'/'.join(b) or 'none'}" for s, b in cl["targeted_bands_by_seed"].items())
        lines += [f"## Closed loop: `{name}` against open loop `{ref}`", "",
                  f"Bands the loop targeted (drawn above their natural share in some round): {targets}.", "",
                  "| arm | test miss rate in the targeted bands (pooled over seeds) |", "|---|---|",
                  *(f"| {arm} | {rate(arm)} |" for arm in pooled), "",
                  f"Paired difference `{name}` − `{ref}` (same pairing as above):", "",
                  diff_table({name: cl["paired_vs_open_loop"]}, ref), ""]
    return lines
