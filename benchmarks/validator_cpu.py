"""Validator benchmark (issue 4) on Kvasir-SEG at the cpu profile.

    python benchmarks/validator_cpu.py            # the real measurement (64 px; run on an otherwise idle machine)
    python benchmarks/validator_cpu.py --quick    # smoke test: 32 px, a handful of images, a few steps
    python benchmarks/validator_cpu.py --manifest SYNTH/manifest.jsonl --name validator-kvasir-seg-cpu-inpaint
                                                  # score a generator's real samples with the same validators

Autoencoder on all ``train`` images, latent and pixel validators on the N=64 labelled subset, automatic
thresholds from ``val`` (the default ``contrast`` rule; the ``percentile`` rule is reported beside it for
the latent validator). The candidates are ``test`` images with their true mask, the mask shifted by a
quarter of the image, another image's mask, and a lesion-free colon-normal frame with a test mask ("blank":
an inpainting that painted nothing) as stand-ins for good and failed generations, or the synthetic samples
of ``--manifest``. Reports reconstruction PSNR/SSIM, acceptance rates, the pixel
validator's Dice of samples the latent filter kept vs rejected, agreement, and ms per sample.
Writes ``benchmarks/results/<name>.json`` and ``.md`` (default name ``validator-kvasir-seg-<profile>[-quick]``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import typer

from lesionforge.config import load_config
from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.io import write_image, write_mask
from lesionforge.data.manifest import Sample, read_manifest, write_manifest
from lesionforge.data.readers import read_dataset
from lesionforge.data.splits import load_benchmark_split
from lesionforge.generate.autoencoder import AutoencoderConfig, LatentCodec, train_autoencoder
from lesionforge.presets import PRESETS_DIR
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic
from lesionforge.validate.cost import agreement, timing
from lesionforge.validate.filter import filter_manifest
from lesionforge.validate.latent_segmenter import train_latent_segmenter
from lesionforge.validate.pixel_segmenter import train_pixel_segmenter
from lesionforge.validate.run import load_validator_config
from lesionforge.validate.validator import load_validator

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
QUICK = {"n_train": 16, "n_labelled": 8, "n_val": 8, "n_candidates": 6, "resolution": 32,
         "ae": {"steps": 4, "batch_size": 4, "checkpoint_every": 2}, "seg": {"steps": 6, "batch_size": 4}}


def _configs(quick: bool) -> tuple[AutoencoderConfig, object, object]:
    configs = PRESETS_DIR
    if quick:
        ae = load_config(configs / "autoencoder-tiny.yaml", AutoencoderConfig, QUICK["ae"])
        lat = load_validator_config(configs / "validator-tiny.yaml", QUICK["seg"])
        pix = load_validator_config(configs / "validator-pixel-cpu.yaml",
                                    {**QUICK["seg"], "resolution": 32, "features": [8, 8, 16, 16, 32, 8]})
        return ae, lat, pix
    return (load_config(configs / "autoencoder-cpu.yaml", AutoencoderConfig),
            load_validator_config(configs / "validator-cpu.yaml"),
            load_validator_config(configs / "validator-pixel-cpu.yaml"))


def _load(dataset: Path, split_name: str, quick: bool, resolution: int, backgrounds: Path | None = None
          ) -> dict[str, PairArrays]:
    split = load_benchmark_split(split_name)
    by_id = {s.id: s for s in read_dataset(dataset)}
    ids = {"train": split.train, "labelled": split.low_data(64), "val": split.val, "test": split.test}
    if quick:
        ids = {"train": split.train[: QUICK["n_train"]], "labelled": split.low_data(64)[: QUICK["n_labelled"]],
               "val": split.val[: QUICK["n_val"]], "test": split.test[: QUICK["n_candidates"]]}
    data = {k: load_arrays([by_id[i] for i in v], resolution, 3, progress=not quick) for k, v in ids.items()}
    if backgrounds is not None and backgrounds.is_dir():
        frames = read_dataset(backgrounds)[: QUICK["n_candidates"] if quick else None]
        data["blanks"] = load_arrays(frames, resolution, 3, progress=not quick)
    return data


def _candidates(test: PairArrays, folder: Path, blanks: PairArrays | None = None) -> Path:
    """Test images as synthetic stand-ins: true mask, mask shifted by a quarter image, another image's mask;
    and, given lesion-free ``blanks``, a blank frame with a test mask ("blank": an inpainting that painted
    nothing, the failure the filter must catch for lesions painted onto normal images)."""
    rows, n, side = [], len(test), test.masks.shape[1]
    for i in range(n):
        write_image(folder / "images" / f"{i}.png", test.images[i])
        variants = {"true": test.masks[i], "shifted": np.roll(test.masks[i], (side // 4, side // 4), axis=(0, 1)),
                    "swapped": test.masks[(i + n // 2) % n]}
        for name, mask in variants.items():
            write_mask(folder / "masks" / f"{i}_{name}.png", mask)
            rows.append(Sample(id=f"{name}_{test.ids[i]}", image=f"images/{i}.png",
                               masks=[f"masks/{i}_{name}.png"], origin="synthetic"))
        if blanks is not None and len(blanks):
            write_image(folder / "images" / f"{i}_blank.png", blanks.images[i % len(blanks)])
            rows.append(Sample(id=f"blank_{test.ids[i]}", image=f"images/{i}_blank.png",
                               masks=[f"masks/{i}_true.png"], origin="synthetic"))
    return write_manifest(folder / "candidates.jsonl", rows)


def _group_acceptance(report_manifest: Path, stand_ins: bool = True) -> dict[str, float]:
    """Keep rate per stand-in group (the id prefix before '_'), or of all samples of a generator manifest."""
    groups: dict[str, list[bool]] = {}
    for s in read_manifest(report_manifest):
        if s.origin == "synthetic":
            group = s.id.split("_", 1)[0] if stand_ins else "samples"
            groups.setdefault(group, []).append(s.provenance.validation["kept"])
    return {g: float(np.mean(k)) for g, k in groups.items()}


def _cross(latent_manifest: Path, pixel_manifest: Path) -> dict:
    """On the candidates: the pixel validator's Dice of the samples the latent filter kept vs rejected, and
    how often the two filters make the same call."""
    lat = {s.id: s.provenance.validation for s in read_manifest(latent_manifest) if s.origin == "synthetic"}
    pix = {s.id: s.provenance.validation for s in read_manifest(pixel_manifest) if s.origin == "synthetic"}
    ids = [i for i in lat if lat[i].get("dice") is not None]
    kept = np.array([lat[i]["kept"] for i in ids], bool)
    dice = np.array([pix[i]["dice"] for i in ids], float)
    return {"n": len(ids), "agreement": float(np.mean([lat[i]["kept"] == pix[i]["kept"] for i in ids])),
            "pixel_dice_of_latent_kept": float(dice[kept].mean()) if kept.any() else None,
            "pixel_dice_of_latent_rejected": float(dice[~kept].mean()) if (~kept).any() else None}


def run(quick: bool = False, work: Path = ROOT / "runs" / "validator-bench", results: Path = ROOT / "benchmarks"
        / "results", dataset: Path = DATASETS / "kvasir-seg", split: str = "kvasir-seg",
        manifest: Path | None = None, name: str | None = None,
        backgrounds: Path | None = DATASETS / "colon-normal") -> dict:
    """Run the benchmark (resuming any finished training in ``work``); return and write the result dict."""
    torch.manual_seed(0)
    ae_cfg, lat_cfg, pix_cfg = _configs(quick)
    data = _load(dataset, split, quick, ae_cfg.resolution, backgrounds)
    ae_dir = train_autoencoder(ae_cfg, data["train"], work / "autoencoder", val=data["val"], progress=not quick)
    codec = LatentCodec.from_pretrained(ae_dir)
    lat_dir = train_latent_segmenter(lat_cfg, data["labelled"], codec, work / "latent", val=data["val"],
                                     progress=not quick)
    pix_dir = train_pixel_segmenter(pix_cfg, data["labelled"], work / "pixel", val=data["val"], progress=not quick)
    cands = manifest or _candidates(data["test"], work / "candidates", data.get("blanks"))
    tag = "" if manifest is None else "-" + (name or "samples")
    out = {k: work / f"filtered{tag}-{k}.jsonl" for k in ("latent", "pixel", "latent-percentile")}
    reports = {k: filter_manifest(cands, d, out[k], overwrite=True, val=data["val"])
               for k, d in (("latent", lat_dir), ("pixel", pix_dir))}
    reports["latent-percentile"] = filter_manifest(cands, lat_dir, out["latent-percentile"], overwrite=True,
                                                   val=data["val"], auto_rule="percentile")
    latent, pixel = load_validator(lat_dir), load_validator(pix_dir)
    result = {
        "dataset": "kvasir-seg", "profile": "tiny" if quick else "cpu", "resolution": ae_cfg.resolution,
        "quick": quick, "code_version": code_version(), "seed": 0, "torch_threads": torch.get_num_threads(),
        "n_autoencoder_train": len(data["train"]), "n_labelled": len(data["labelled"]), "n_val": len(data["val"]),
        "candidates": str(cands) if manifest else "test images with true / shifted / swapped masks"
        + (", lesion-free colon-normal frames with a test mask (blank)" if "blanks" in data else ""),
        "reconstruction_val": _json(ae_dir / "metrics.json")["val"],
        "filter": {k: {**r.to_dict(), "acceptance_by_group": _group_acceptance(Path(r.manifest), manifest is None)}
                   for k, r in reports.items()},
        "candidates_cross": _cross(out["latent"], out["pixel"]),
        "agreement": agreement(latent, pixel, data["test"].images, data["test"].masks,
                               reports["latent"].threshold, reports["pixel"].threshold),
        "ms_per_sample": timing(latent, pixel, data["test"].images),
    }
    for r in result["filter"].values():
        r.pop("rejected_ids")
    name = name or f"validator-kvasir-seg-{result['profile']}{'-quick' if quick else ''}"
    write_json_atomic(results / f"{name}.json", result)
    write_text_atomic(results / f"{name}.md", _markdown(result))
    return result


def _json(path: Path) -> dict:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _markdown(r: dict) -> str:
    ms, c = r["ms_per_sample"], r["candidates_cross"]
    lines = [
        f"# Validator benchmark: Kvasir-SEG, {r['profile']} profile ({r['resolution']} px)",
        "", f"Code {r['code_version']}, {r['torch_threads']} torch threads, quick={r['quick']}. "
        f"Autoencoder on {r['n_autoencoder_train']} train images; validators on {r['n_labelled']} labelled; "
        f"thresholds from {r['n_val']} val images. Candidates: {r['candidates']}.", "",
        f"Reconstruction on val: PSNR {r['reconstruction_val']['psnr']:.2f} dB, "
        f"SSIM {r['reconstruction_val']['ssim']:.3f}.", "",
        "| validator | threshold (rule) | acceptance | by group |", "|---|---|---|---|",
    ]
    for k, f in r["filter"].items():
        groups = ", ".join(f"{g} {v:.0%}" for g, v in f["acceptance_by_group"].items())
        lines.append(f"| {k} | {f['threshold']:.3f} ({f['threshold_rule']}) | {f['acceptance_rate']:.1%} | {groups} |")
    a = r["agreement"]

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines += [
        "", f"On the candidates ({c['n']} lesion samples): latent and pixel filters agree on {c['agreement']:.1%}; "
        f"pixel-validator Dice of latent-kept {num(c['pixel_dice_of_latent_kept'])} vs latent-rejected "
        f"{num(c['pixel_dice_of_latent_rejected'])}.",
        "", f"On true-mask test pairs: agreement {a['agreement']:.1%}; pixel Dice of latent-kept "
        f"{num(a['pixel_dice_of_latent_kept'])} vs latent-rejected {num(a['pixel_dice_of_latent_rejected'])}.",
        "", "| ms per sample | |", "|---|---|",
        *(f"| {k} | {v:.3f} |" for k, v in ms.items()), "",
    ]
    return "\n".join(lines)


def main(
    quick: bool = typer.Option(False, help="Smoke test: 32 px, a few images and steps."),
    work: Path = typer.Option(ROOT / "runs" / "validator-bench", help="Checkpoints (resumed if present)."),
    results: Path = typer.Option(ROOT / "benchmarks" / "results", help="Where the JSON and Markdown go."),
    dataset: Path = typer.Option(DATASETS / "kvasir-seg", help="Kvasir-SEG folder."),
    split: str = typer.Option("kvasir-seg", help="Split name or JSON path."),
    manifest: Path | None = typer.Option(None, help="Score these synthetic samples instead of the stand-ins."),
    name: str | None = typer.Option(None, help="Result file name (default validator-kvasir-seg-<profile>)."),
    backgrounds: Path = typer.Option(DATASETS / "colon-normal", help="Lesion-free frames for the 'blank' group."),
) -> None:
    r = run(quick, work, results, dataset, split, manifest, name, backgrounds)
    typer.echo(_markdown(r))


if __name__ == "__main__":
    typer.run(main)
