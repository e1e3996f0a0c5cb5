"""Label fidelity of every gallery generator: does a synthetic pair's mask mark the lesion in its image?

    python benchmarks/label_fidelity.py --dataset busi --n-samples 64 --threads 1

A segmenter trained on the N real labelled pairs only (the ``segment-cpu.yaml`` preset, selected on ``val``) scores
each generator's samples against their own masks, and, as a control, against the mask of the next sample in
the set (masks rolled by one). A generator whose masks are correct labels scores clearly above its control;
the segmenter's mDice on the real ``test`` split is the reference. The generators are the gallery's
(``runs/gallery/<dataset>-<kind>-n<N>``, made by ``benchmarks/generator_gallery.py``); kinds not trained
there are skipped and listed. Writes ``benchmarks/results/label-fidelity-<dataset>-cpu.json`` and rebuilds
``benchmarks/results/label-fidelity-cpu.md`` from every such file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from generator_gallery import KINDS, PRESET_NAME  # noqa: E402

from lesionforge.config import load_config  # noqa: E402
from lesionforge.data.arrays import PairArrays, load_arrays  # noqa: E402
from lesionforge.data.bands import BANDS, EMPTY, mask_group  # noqa: E402
from lesionforge.data.manifest import read_manifest  # noqa: E402
from lesionforge.experiment.config import load_experiment_config  # noqa: E402
from lesionforge.experiment.real_stages import LesionforgeStages  # noqa: E402
from lesionforge.experiment.stats import bootstrap_paired  # noqa: E402
from lesionforge.generate.config import SamplingConfig  # noqa: E402
from lesionforge.generate.synthesize import synthesize  # noqa: E402
from lesionforge.generate.trainbatch import make_mask_source  # noqa: E402
from lesionforge.presets import PRESETS_DIR  # noqa: E402
from lesionforge.segment.config import SegmentConfig  # noqa: E402
from lesionforge.segment.metrics import evaluate, score_masks  # noqa: E402
from lesionforge.segment.model_io import load_segmenter, predict  # noqa: E402
from lesionforge.segment.train import train_segmenter  # noqa: E402
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic  # noqa: E402


def own_vs_shuffled(model, synthetic: PairArrays) -> dict:
    """Per-image Dice of the segmenter's prediction against each sample's own mask and against the next
    sample's mask (the control), with the paired bootstrap of own − control."""
    pred = (predict(model, synthetic.images)[:, 0] >= 0.5).numpy()
    own = score_masks(pred, synthetic.masks > 0, synthetic.ids)
    control = score_masks(pred, np.roll(synthetic.masks, 1, axis=0) > 0, synthetic.ids)
    d_own = dict(zip(own.ids, own.dice.tolist(), strict=True))
    d_ctl = dict(zip(own.ids, control.dice.tolist(), strict=True))
    return {"n_samples": len(synthetic), "mdice_own_mask": own.mdice, "mdice_shuffled_mask": control.mdice,
            "own_minus_shuffled": bootstrap_paired(d_own, d_ctl), "miss_rate": own.summary()["miss_rate"],
            "by_band": _by_band(synthetic, own, control)}


def _by_band(synthetic: PairArrays, own, control) -> dict[str, dict]:
    """The same scores per protocol size band of each sample's own mask (area share): does the drawn image follow
    a small mask as well as a large one? (A generator that draws structure beyond a thin mask teaches a
    segmenter to leave such tissue unlabelled; the MRI arms lose most at a structure's thin ends.)"""
    group = {i: mask_group(m) for i, m in zip(synthetic.ids, synthetic.masks, strict=True)}
    rows = np.array([group[i] for i in own.ids])  # an empty mask (a negative) is its own group, not a small lesion
    out = {}
    for b in (*BANDS, EMPTY):
        sel = np.flatnonzero(rows == b)
        if len(sel):
            out[b] = {"n_samples": int(len(sel)), "mdice_own_mask": float(own.dice[sel].mean()),
                      "mdice_shuffled_mask": float(control.dice[sel].mean()),
                      "miss_rate": own.summary(sel)["miss_rate"]}
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run(dataset: str, n: int = 64, n_samples: int = 64, work: Path = ROOT / "runs" / "gallery",
        results: Path = ROOT / "benchmarks" / "results", segment_config: Path = PRESETS_DIR / "segment-cpu.yaml",
        segment_steps: int | None = None, sample_steps: int = 100, command: str | None = None) -> dict:
    cfg = load_experiment_config(ROOT / "benchmarks" / "configs" / f"{dataset}-cpu.yaml",
                                 {"n_labelled": [n], "output": str(work / f"{dataset}-data")})
    data = LesionforgeStages().load_data(cfg)
    labelled = data.labelled(n)
    scfg = load_config(segment_config, SegmentConfig, {"steps": segment_steps} if segment_steps else None)
    t0 = time.perf_counter()
    seg = train_segmenter(scfg, labelled, data.val, work / f"{dataset}-segmenter-n{n}", resume=True)
    model = load_segmenter(seg.best_checkpoint)
    out = {"dataset": dataset, "profile": "cpu", "resolution": cfg.resolution, "n_labelled": n,
           "segmenter": {"config": _rel(segment_config), "steps": scfg.steps, "best_val_mdice": seg.best_val_mdice,
                         "test_mdice": evaluate(model, data.test).mdice,
                         "seconds": round(time.perf_counter() - t0, 1)},
           "real_labelled": own_vs_shuffled(model, labelled), "generators": {}, "skipped": []}
    for kind in KINDS:
        generator = work / f"{dataset}-{kind}-n{n}"
        if not (generator / "lesionforge.json").is_file():
            out["skipped"].append(kind)
            continue
        folder = work / f"{dataset}-{kind}-n{n}-fidelity"
        t = time.perf_counter()
        jitter = make_mask_source("jitter", labelled, cfg.resolution) if kind in ("mask2image", "inpaint") else None
        with torch.no_grad():
            synthesize(generator, folder, n_samples, real=labelled, masks_from=jitter, seed=0,
                       sampling=SamplingConfig(sampler="ddpm", steps=sample_steps, guidance_scale=1.0), resume=True,
                       progress=False,
                       backgrounds=data.backgrounds if kind == "inpaint" else None)
        synthetic = load_arrays(read_manifest(folder / "manifest.jsonl"), cfg.resolution, cfg.dataset.channels,
                                cache_dir=None)  # scratch set, remade per run: no array cache
        scores = own_vs_shuffled(model, synthetic)
        out["generators"][kind] = {"generator": _rel(generator), "sampler": "ddpm", "steps": sample_steps,
                                   "guidance_scale": 1.0, **scores, "seconds": round(time.perf_counter() - t, 1)}
        typer.echo(f"{dataset} {kind}: own {scores['mdice_own_mask']:.3f} shuffled "
                   f"{scores['mdice_shuffled_mask']:.3f}")
    out.update(code_version=code_version(), command=command)
    write_json_atomic(results / f"label-fidelity-{dataset}-cpu.json", out)
    write_report(results)
    return out


def write_report(results: Path) -> None:
    """``label-fidelity-cpu.md`` from every ``label-fidelity-<dataset>-cpu.json``."""
    lines = ["# Label fidelity of the gallery generators (cpu profile, 64 px)", "",
             "Written by `benchmarks/label_fidelity.py` from `label-fidelity-*-cpu.json`. A segmenter trained on "
             "the real labelled pairs only scores each generator's samples (DDPM, guidance 1, seed 0) "
             "against their own masks and against the next sample's mask (control). Own well above control: the "
             "mask marks the lesion the image shows.", ""]
    for f in sorted(results.glob("label-fidelity-*-cpu.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        s = r["segmenter"]
        lines += [f"## {r['dataset']}, N = {r['n_labelled']}", "",
                  f"Segmenter: `{s['config']}`, {s['steps']} steps, val mDice {s['best_val_mdice']:.3f}, real test "
                  f"mDice {s['test_mdice']:.3f}. Command: `{r['command']}` (code {r['code_version'][:7]}).", "",
                  "| set | samples | DDPM steps | mDice, own mask | mDice, shuffled mask | own − shuffled [95 % CI] "
                  "| lesions missed |", "|---|---|---|---|---|---|---|"]
        for name, g in [("real labelled (train)", r["real_labelled"]), *r["generators"].items()]:
            d = g["own_minus_shuffled"]
            lines.append(f"| {name} | {g['n_samples']} | {g.get('steps', '—')} | {g['mdice_own_mask']:.3f} | "
                         f"{g['mdice_shuffled_mask']:.3f} "
                         f"| {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                         f"{100 * g['miss_rate']:.0f} % |")
        if r["skipped"]:
            lines += ["", f"Not trained in the gallery, skipped: {', '.join(r['skipped'])}."]
        lines.append("")
    write_text_atomic(results / "label-fidelity-cpu.md", "\n".join(lines))


def main(
    dataset: str = typer.Option(..., help="kvasir-seg or busi."),
    n: int = typer.Option(64, help="Labelled pairs: the gallery generators' N."),
    n_samples: int = typer.Option(64, help="Samples drawn per generator."),
    work: Path = typer.Option(ROOT / "runs" / "gallery", help="The gallery's work folder."),
    threads: int | None = typer.Option(None, help="torch threads."),
) -> None:
    if dataset not in PRESET_NAME:
        raise typer.BadParameter(f"dataset in {sorted(PRESET_NAME)}")
    if threads:
        torch.set_num_threads(threads)
    run(dataset, n, n_samples, work, command="python benchmarks/label_fidelity.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    typer.run(main)
