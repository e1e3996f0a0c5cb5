"""Generator gallery (issue 3): train one generator kind at the cpu profile on a benchmark dataset, sample it,
and commit a grid of its samples beside the real images they came from, with the training time and command.

    python benchmarks/generator_gallery.py --dataset kvasir-seg --kind mask2image
    python benchmarks/generator_gallery.py --dataset busi --kind inpaint --steps 2000 --batch-size 8
    python benchmarks/generator_gallery.py --dataset kvasir-seg --kind inpaint --n 32 \
        --generator benchmarks/runs/kvasir-seg-cpu/cache/generators/inpaint-...   # render a trained one

Data as in the headline configs (``benchmarks/configs/<dataset>-cpu.yaml``): the N labelled pairs of the
split's low-data subset; ``inpaint`` also learns, self-supervised, from the unlabelled rest of ``train`` and
the lesion-free backgrounds (colon-normal for Kvasir-SEG, BUSI's ``normal_backgrounds``). Training resumes
from ``--work``. Writes ``docs/generators/<stem>.png``, stem ``<dataset>-<kind>`` (``-n<N>`` added when N is
not 64, so a low-N entry sits beside the N = 64 one) (top row: the real image or background each
sample was made from, with its mask outline if it has one; bottom row: the sample with its label outline),
``docs/generators/<stem>-loss.png``, ``benchmarks/results/generator-<stem>-cpu.json``,
and rebuilds ``docs/generator-gallery.md`` from every such JSON.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import typer

from lesionforge.data.arrays import PairArrays
from lesionforge.data.io import read_image, read_mask, write_image
from lesionforge.data.manifest import read_manifest
from lesionforge.experiment.config import load_experiment_config
from lesionforge.experiment.real_stages import LesionforgeStages
from lesionforge.generate.config import SamplingConfig, load_generator_config
from lesionforge.generate.models import read_meta
from lesionforge.generate.synthesize import synthesize
from lesionforge.generate.trainbatch import make_mask_source
from lesionforge.generate.trainer import train_generator
from lesionforge.presets import PRESETS_DIR
from lesionforge.quality.metrics import mask_stats as quality_mask_stats
from lesionforge.quality.metrics import speckle
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
PRESET_NAME = {"kvasir-seg": "kvasir", "busi": "busi"}
KINDS = ("mask2image", "joint", "edge-text", "inpaint")
N_SAMPLES = 8


def outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """RGB copy of ``image`` with the inner boundary of ``mask`` drawn in green."""
    from skimage.segmentation import find_boundaries

    rgb = image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)
    rgb = rgb.copy()
    if mask is not None and mask.any():
        rgb[find_boundaries(mask > 0, mode="inner")] = (0, 255, 0)
    return rgb


def grid_image(top: list[np.ndarray], bottom: list[np.ndarray], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Two rows of equally sized RGB tiles, upscaled ``scale``x (nearest) with white gaps."""
    return grid_rows_image([top, bottom], scale, gap)


def grid_rows_image(rows: list[list[np.ndarray]], scale: int = 2, gap: int = 2) -> np.ndarray:
    """Rows of equally sized RGB tiles, upscaled ``scale``x (nearest) with white gaps."""
    tiles = [[np.kron(t, np.ones((scale, scale, 1), np.uint8)) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    out = np.full((len(rows) * h + (len(rows) + 1) * gap, len(rows[0]) * (w + gap) + gap, 3), 255, np.uint8)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            out[y:y + h, x:x + w] = t
    return out


def _source_tiles(samples, labelled: PairArrays, backgrounds: PairArrays | None, res: int) -> list[np.ndarray]:
    """Per sample: the background it was painted into, or the real pair its condition came from."""
    tiles = []
    for s in samples:
        p = s.provenance
        if p.background_id is not None and backgrounds is not None:
            i = backgrounds.ids.index(p.background_id)
            tiles.append(outline(backgrounds.images[i], None))
        elif p.source_id is not None and p.source_id in labelled.ids:
            i = labelled.ids.index(p.source_id)
            tiles.append(outline(labelled.images[i], labelled.masks[i]))
        else:  # joint: nothing conditions the sample; show a real pair for reference
            i = len(tiles) % len(labelled)
            tiles.append(outline(labelled.images[i], labelled.masks[i]))
    return tiles


def mask_stats(masks: np.ndarray) -> dict:
    """Shape summary of binary masks (N, H, W): how many are empty, mean lesion area (fraction of the image) and
    mean connected components per non-empty mask. For ``joint``, whose masks are generated, set beside the real
    labelled masks it shows whether the model draws lesions of a plausible size and count. The statistics are
    :func:`lesionforge.quality.metrics.mask_stats`' (8-connected components), in this report's keys: the area is
    over every mask here, empty ones counted as 0."""
    st = quality_mask_stats(masks)
    lesions = st["n"] - st["n_empty"]
    return {"n": st["n"], "empty": st["n_empty"],
            "area_frac_mean": (st["area_share_mean"] or 0.0) * lesions / st["n"] if st["n"] else 0.0,
            "components_mean": st["components_mean"] or 0.0}


def run(dataset: str, kind: str, n: int = 64, steps: int | None = None, batch_size: int | None = None,
        generator: Path | None = None, work: Path = ROOT / "runs" / "gallery", docs: Path = ROOT / "docs",
        results: Path = ROOT / "benchmarks" / "results", command: str | None = None,
        sample_steps: int | None = None, sampler: str | None = None, guidance_scale: float | None = None,
        compare: list[tuple[str, int, float]] | None = None) -> dict:
    """Train (or load) the generator, sample it, write the grid, the result JSON and the gallery page.

    ``sampler`` / ``sample_steps`` / ``guidance_scale``: how the grid is sampled (default: the preset's).
    ``compare``: (sampler, steps, guidance) settings drawn on the same conditions and seed into a second grid,
    ``docs/generators/<dataset>-<kind>-samplers.png`` (one row each under the sources), with the
    :func:`speckle` of each and of the real labelled lesions in the result JSON."""
    cfg = load_experiment_config(ROOT / "benchmarks" / "configs" / f"{dataset}-cpu.yaml",
                                 {"n_labelled": [n], "output": str(work / f"{dataset}-data")})
    data = LesionforgeStages().load_data(cfg)
    labelled = data.labelled(n)
    inpaint = kind == "inpaint"
    unlabelled, backgrounds = (data.unlabelled(n), data.backgrounds) if inpaint else (None, None)
    preset = PRESETS_DIR / f"generator-{kind}-{PRESET_NAME[dataset]}-cpu.yaml"
    over = {k: v for k, v in {"steps": steps, "batch_size": batch_size}.items() if v is not None}
    gcfg = load_generator_config(preset, over)
    t0 = time.perf_counter()
    if generator is None:
        generator = work / f"{dataset}-{kind}-n{n}"
        train_generator(gcfg, labelled, generator, unlabelled=unlabelled, backgrounds=backgrounds, resume=True)
    meta = read_meta(generator)
    synth_dir = work / f"{dataset}-{kind}-n{n}-samples"
    masks_from = make_mask_source("jitter", labelled, cfg.resolution) if kind in ("mask2image", "inpaint") else None

    def draw(folder: Path, how: tuple[str, int, float]) -> tuple[list, float]:
        shutil.rmtree(folder, ignore_errors=True)  # scratch output of this script, remade each time
        t = time.perf_counter()
        synthesize(generator, folder, N_SAMPLES, masks_from=masks_from, backgrounds=backgrounds, real=labelled,
                   seed=0, sampling=SamplingConfig(sampler=how[0], steps=how[1], guidance_scale=how[2]), resume=False,
                   progress=False)
        return read_manifest(folder / "manifest.jsonl"), time.perf_counter() - t

    def tiles(rows) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        imgs = np.stack([read_image(s.image, channels=cfg.dataset.channels) for s in rows])
        msks = np.stack([read_mask(s.masks[0]) for s in rows])
        return [outline(i, m) for i, m in zip(imgs, msks, strict=True)], imgs, msks

    how = (sampler or gcfg.sampler, sample_steps or gcfg.sample_steps,
           gcfg.guidance_scale if guidance_scale is None else guidance_scale)
    rows, synth_s = draw(synth_dir, how)
    top = _source_tiles(rows, labelled, backgrounds, cfg.resolution)
    bottom, _, grid_masks = tiles(rows)
    stem = f"{dataset}-{kind}" + ("" if n == 64 else f"-n{n}")  # the N = 64 keeps the plain name
    write_image(docs / "generators" / f"{stem}.png", grid_image(top, bottom))
    compared = []
    if compare:
        grid_rows = [top]
        for k, setting in enumerate(compare):
            same = tuple(setting) == how  # the grid's own setting: reuse its samples instead of drawing twice
            c_rows, secs = (rows, synth_s) if same else draw(work / f"{dataset}-{kind}-n{n}-compare-{k}", setting)
            row, imgs, msks = tiles(c_rows)
            grid_rows.append(row)
            compared.append({"sampler": setting[0], "steps": setting[1], "guidance_scale": setting[2],
                             "speckle": speckle(imgs, msks), "seconds": round(secs, 2),
                             **({"masks": mask_stats(msks)} if kind == "joint" else {})})
        write_image(docs / "generators" / f"{stem}-samplers.png", grid_rows_image(grid_rows))
    if (generator / "loss.png").is_file():
        shutil.copyfile(generator / "loss.png", docs / "generators" / f"{stem}-loss.png")
    state = json.loads(max(generator.glob("checkpoint-*/state.json"), key=lambda p: p.stat().st_mtime)
                       .read_text(encoding="utf-8")) if any(generator.glob("checkpoint-*/state.json")) else {}
    losses = state.get("losses", [])
    result = {
        "dataset": dataset, "kind": kind, "profile": "cpu", "resolution": cfg.resolution, "n_labelled": n,
        "unlabelled_used": unlabelled is not None, "n_unlabelled": 0 if unlabelled is None else len(unlabelled),
        "n_backgrounds": 0 if backgrounds is None else len(backgrounds),
        "steps": meta.get("steps"), "batch_size": meta.get("config", {}).get("batch_size", gcfg.batch_size),
        **_train_time(generator, meta),
        "loss_first_100": float(np.mean(losses[:100])) if losses else None,
        "loss_last_100": float(np.mean(losses[-100:])) if losses else None,
        "generator": str(generator), "generator_code_version": meta.get("code_version"),
        "sampler": rows[0].provenance.sampler, "sampling_steps": rows[0].provenance.steps,
        "guidance_scale": rows[0].provenance.guidance_scale, "n_samples": len(rows),
        "synthesis_seconds": round(synth_s, 2), "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
        "prompts": [s.provenance.prompt for s in rows], "grid": f"generators/{stem}.png",
        "generated_masks": {"samples": mask_stats(grid_masks), "real_labelled": mask_stats(labelled.masks)}
        if kind == "joint" else None,
        "sampler_comparison": {"real_speckle": speckle(labelled.images, labelled.masks), "settings": compared,
                               "grid": f"generators/{stem}-samplers.png"} if compared else None,
        "code_version": code_version(), "command": command,
    }
    write_json_atomic(results / f"generator-{stem}-cpu.json", result)
    write_gallery(results, docs)
    return result


def _train_time(generator: Path, meta: dict) -> dict:
    """Training wall time as the trainer recorded it; for generators trained before it did, the time between
    the trainer's first write (``config.yaml``) and its last (``lesionforge.json``), said so."""
    if meta.get("train_seconds") is not None:
        return {"train_seconds": meta["train_seconds"], "torch_threads": meta.get("torch_threads"),
                "train_time_source": "recorded by the trainer"}
    start, end = generator / "config.yaml", generator / "lesionforge.json"
    secs = end.stat().st_mtime - start.stat().st_mtime if start.is_file() and end.is_file() else None
    return {"train_seconds": secs, "torch_threads": None,
            "train_time_source": "file times (config.yaml to lesionforge.json); threads not recorded"}


def write_gallery(results: Path, docs: Path) -> Path:
    """``docs/generator-gallery.md`` from every ``generator-*-cpu.json`` in ``results``."""
    lines = ["# Generator gallery (cpu profile, 64 px)", "",
             "Written by `benchmarks/generator_gallery.py` from `benchmarks/results/generator-*-cpu.json`; every "
             "number below comes from those files. Top row of each grid: the real image (green: its mask) or "
             "the lesion-free background each sample was made from; bottom row: the sample, green = the label it "
             "comes with. 8 samples, seed 0, no cherry-picking. What each grid shows, in words: "
             "[results.md](results.md#generator-gallery-cpu-profile-64-px).", ""]
    for f in sorted(results.glob("generator-*-cpu.json")):
        r = json.loads(f.read_text(encoding="utf-8"))
        secs = r.get("train_seconds")
        threads = f"{r['torch_threads']} torch thread(s)" if r.get("torch_threads") else "threads not recorded"
        trained = f"{secs / 60:.0f} min ({threads}; {r['train_time_source']})" if secs else "time not recorded"
        data = f"{r['n_labelled']} labelled pairs"
        if r["unlabelled_used"]:
            data += f" + {r['n_unlabelled']} unlabelled images"
        if r["n_backgrounds"]:
            data += f" + {r['n_backgrounds']} lesion-free backgrounds"
        loss = (f"; loss (mean of 100 steps) {r['loss_first_100']:.3f} first, {r['loss_last_100']:.3f} last"
                if r.get("loss_last_100") is not None else "")
        lines += [f"## {r['dataset']} / {r['kind']} (N = {r['n_labelled']})", "",
                  f"![{r['dataset']} {r['kind']}]({r['grid']})", "",
                  f"- trained on {data}: {r['steps']} steps of batch {r['batch_size']}, {trained}{loss}",
                  f"- sampled with {r['sampler']}, {r['sampling_steps']} steps, guidance {r['guidance_scale']}"
                  f" ({r['synthesis_seconds']:.1f} s for {r['n_samples']} samples)",
                  f"- command: `{r['command']}` (code {r['code_version'][:7]})"]
        if gm := r.get("generated_masks"):
            g, real = gm["samples"], gm["real_labelled"]
            lines.append(f"- generated masks (after cleaning): {g['empty']} of {g['n']} empty; mean area "
                         f"{100 * g['area_frac_mean']:.1f} % of the image (real labelled "
                         f"{100 * real['area_frac_mean']:.1f} %); {g['components_mean']:.1f} components per "
                         f"non-empty mask (real {real['components_mean']:.1f})")
        lines.append("")
        comp = r.get("sampler_comparison")
        if comp:
            lines += [f"Samplers on the same conditions and seeds (rows under the sources, in this order); speckle ="
                      f" mean |Laplacian| inside the mask, real labelled lesions {comp['real_speckle']:.1f}:", "",
                      f"![{r['dataset']} {r['kind']} samplers]({comp['grid']})", "",
                      *_comparison_table(comp["settings"]), ""]
    return write_text_atomic(docs / "generator-gallery.md", "\n".join(lines))


def _comparison_table(settings: list[dict]) -> list[str]:
    """The sampler comparison as markdown rows; ``joint`` entries add their generated masks' shape."""
    joint = all("masks" in c for c in settings)
    head = "| sampler | steps | guidance | speckle | seconds for 8 |" + (" empty masks | mean area |" if joint else "")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in settings:
        row = f"| {c['sampler']} | {c['steps']} | {c['guidance_scale']:g} | {c['speckle']:.1f} | {c['seconds']:.1f} |"
        if joint:
            m = c["masks"]
            row += f" {m['empty']} of {m['n']} | {100 * m['area_frac_mean']:.1f} % |"
        rows.append(row)
    return rows


def parse_setting(text: str) -> tuple[str, int, float]:
    """'ddpm:100:1' -> ('ddpm', 100, 1.0)."""
    try:
        name, steps, scale = text.strip().split(":")
        return name, int(steps), float(scale)
    except ValueError as e:
        raise typer.BadParameter(f"{text!r}: expected sampler:steps:guidance, e.g. ddpm:100:1") from e


def main(
    dataset: str = typer.Option(..., help="kvasir-seg or busi."),
    kind: str = typer.Option(..., help="mask2image, joint, edge-text or inpaint."),
    n: int = typer.Option(64, help="Labelled pairs (a low-data subset of the split)."),
    steps: int | None = typer.Option(None, help="Training steps (default: the preset's)."),
    batch_size: int | None = typer.Option(None, help="Batch size (default: the preset's)."),
    generator: Path | None = typer.Option(None, help="An already trained generator folder to render instead."),
    work: Path = typer.Option(ROOT / "runs" / "gallery", help="Checkpoints (resumed if present)."),
    threads: int | None = typer.Option(None, help="torch threads."),
    sampler: str | None = typer.Option(None, help="Sampler of the grid: ddim, dpm++ or ddpm (default: preset's)."),
    sample_steps: int | None = typer.Option(None, help="Sampling steps of the grid (default: the preset's)."),
    guidance: float | None = typer.Option(None, help="Guidance scale of the grid (default: the preset's)."),
    compare: str | None = typer.Option(None, help="Also draw these samplers on the same conditions, e.g. "
                                       "'dpm++:25:2,ddim:25:1,ddpm:100:1' (sampler:steps:guidance)."),
) -> None:
    if dataset not in PRESET_NAME or kind not in KINDS:
        raise typer.BadParameter(f"dataset in {sorted(PRESET_NAME)}, kind in {KINDS}")
    if threads:
        torch.set_num_threads(threads)
    command = "python benchmarks/generator_gallery.py " + shlex.join(sys.argv[1:])
    settings = [parse_setting(c) for c in compare.split(",")] if compare else None
    r = run(dataset, kind, n, steps, batch_size, generator, work, command=command, sample_steps=sample_steps,
            sampler=sampler, guidance_scale=guidance, compare=settings)
    typer.echo(json.dumps({k: r[k] for k in ("train_seconds", "loss_last_100", "grid")}))


if __name__ == "__main__":
    typer.run(main)
