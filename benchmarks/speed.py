"""Speed benchmark (protocol "Speed"): images per second for synthesis, validation and segmentation training.

    python benchmarks/speed.py --profile cpu            # the real measurement (run on an otherwise idle machine)
    python benchmarks/speed.py --profile tiny --quick   # smoke test: tiny networks, a few steps

Writes ``benchmarks/results/speed-<profile>[-quick].json`` and ``.md``. Networks come from the project's own
builders (generator, autoencoder, latent segmenter, MONAI segmenter), so the numbers measure the real thing.
FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls,
forward and, for training, backward); the share of peak compares them with a timed large fp32 matmul.
The 1000-step DDPM figure is extrapolated: a k-step DDPM run with the same network is timed and scaled by 1000/k
(every DDPM step costs one network forward, so the cost is linear in the step count).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import typer
from torch.utils.flop_counter import FlopCounterMode

from lesionforge.config import PROFILE_RESOLUTION
from lesionforge.devices import machine_facts
from lesionforge.errors import OverwriteError
from lesionforge.generate.autoencoder import AutoencoderConfig, build_autoencoder
from lesionforge.generate.build import build_generator
from lesionforge.generate.config import GeneratorConfig
from lesionforge.generate.models import Conditions
from lesionforge.generate.sampler import sample
from lesionforge.segment.networks import build_network
from lesionforge.utils import code_version, write_json_atomic, write_text_atomic
from lesionforge.validate.latent_segmenter import LatentSegmenter
from lesionforge.validate.pixel_segmenter import PixelSegmenter

RESULTS = Path(__file__).resolve().parent / "results"
#: The usefulness screen whose sampler rows give the speed "at equal screen score" (benchmarks/screen.py).
SCREEN = RESULTS / "screen-kvasir-seg-n32-s800-cpu.json"
#: Synthesis fields a sampler variant of the screen may change (anything else is another recipe, not a sampler).
SAMPLER_FIELDS = {"sampler", "sampling_steps", "eta"}
#: The screen's base sampler (screen.BASE): ancestral DDPM with this many steps is every reference row's.
REFERENCE_DDPM_STEPS = 100
# network sizes of the cpu presets (configs/*-cpu.yaml), used at the profile's resolution
FULL = {
    "generator": (32, 64, 128, 128), "autoencoder": (32, 64, 64), "ae_groups": 16, "latent_seg": (32, 64, 128),
    "pixel_validator": (16, 16, 32, 64, 128, 16), "segmenter": (16, 32, 64, 128, 256, 16),
    "sample_batch": 8, "val_batch": 16, "train_batch": 16, "few_steps": 25, "ddpm_subset": 50, "train_steps": 10,
    "matmul_n": 2048, "repeats": 3, "warmup": True,
}
QUICK = {
    "generator": (16, 32), "autoencoder": (16, 32), "ae_groups": 8, "latent_seg": (16, 32),
    "pixel_validator": (8, 8, 16, 16, 32, 8), "segmenter": (8, 8, 16, 16, 32, 8),
    "sample_batch": 2, "val_batch": 2, "train_batch": 2, "few_steps": 2, "ddpm_subset": 2, "train_steps": 2,
    "matmul_n": 256, "repeats": 1, "warmup": False,
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: bool = True) -> float:
    """Median wall time (s) of ``fn`` over ``repeats`` runs, after one warm-up run if ``warmup``."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (FlopCounterMode: 2 per multiply-add of convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_matmul(n: int, device: torch.device, repeats: int) -> dict:
    """Measured fp32 matmul rate of an (n, n) @ (n, n) product: the machine's practical peak (FLOP/s)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = timed(lambda: a @ b, device, max(repeats, 3))
    return {"n": n, "seconds": seconds, "flops_per_s": 2 * n**3 / seconds}


def _workload(images_per_s: float, flops_per_image: float, peak: float, **extra) -> dict:
    achieved = images_per_s * flops_per_image
    return {"images_per_s": images_per_s, "flops_per_image": flops_per_image, "achieved_flops_per_s": achieved,
            "share_of_peak": achieved / peak, **extra}


@torch.no_grad()
def bench_synthesis(res: int, s: dict, device: torch.device, peak: float) -> dict:
    """Mask-conditioned pixel generator: DDIM and DPM-Solver++ at few steps, 1000-step DDPM extrapolated."""
    cfg = GeneratorConfig(kind="mask2image", resolution=res, block_out_channels=list(s["generator"]),
                          norm_num_groups=8)
    gen = build_generator(cfg).to(device).eval()
    b = s["sample_batch"]
    cond = Conditions(spatial=torch.zeros(b, 1, res, res, device=device))
    seeds = list(range(b))
    t = torch.zeros(b, dtype=torch.long, device=device)
    x = torch.randn(b, gen.layout.x, res, res, device=device)
    flops_step = count_flops(lambda: gen(x, t, cond)) / b
    out = {"network": {"block_out_channels": list(s["generator"]), "layers_per_block": cfg.layers_per_block,
                       "kind": cfg.kind, "parameters": sum(p.numel() for p in gen.parameters())},
           "batch": b, "flops_per_step_per_image": flops_step}
    for name in ("ddim", "dpm++"):
        sec = timed(lambda n=name: sample(gen, cond, seeds, sampler=n, steps=s["few_steps"]), device, s["repeats"],
                    s["warmup"])
        out[name] = _workload(b / sec, flops_step * s["few_steps"], peak, steps=s["few_steps"])
    k = s["ddpm_subset"]
    sec = timed(lambda: sample(gen, cond, seeds, sampler="ddpm", steps=k), device, 1, s["warmup"]) * 1000 / k
    out["ddpm_1000"] = _workload(b / sec, flops_step * 1000, peak, steps=1000, extrapolated_from_steps=k)
    out["speedup_few_step_vs_ddpm"] = out["dpm++"]["images_per_s"] / out["ddpm_1000"]["images_per_s"]
    return out


@torch.no_grad()
def bench_validation(res: int, s: dict, device: torch.device, peak: float) -> dict:
    """One forward of the latent segmenter vs decoding the latent and running the pixel validator."""
    ae_cfg = AutoencoderConfig(resolution=res, block_out_channels=tuple(s["autoencoder"]),
                               norm_num_groups=s["ae_groups"])
    vae = build_autoencoder(ae_cfg).to(device).eval()
    f = 2 ** (len(s["autoencoder"]) - 1)
    latent_seg = LatentSegmenter(latent_channels=ae_cfg.latent_channels, downsample_factor=f,
                                 block_out_channels=tuple(s["latent_seg"])).to(device).eval()
    pixel_seg = PixelSegmenter(image_channels=3, features=tuple(s["pixel_validator"])).to(device).eval()
    b = s["val_batch"]
    z = torch.randn(b, ae_cfg.latent_channels, res // f, res // f, device=device)

    def latent() -> torch.Tensor:
        return latent_seg(z, 0)

    def decode_then_segment() -> torch.Tensor:
        return pixel_seg(vae.decode(z).sample)

    out = {"batch": b, "latent_grid": res // f, "autoencoder": list(s["autoencoder"]),
           "latent_segmenter": list(s["latent_seg"]), "pixel_validator": list(s["pixel_validator"])}
    for name, fn in (("latent_single_step", latent), ("decode_plus_pixel_segmenter", decode_then_segment)):
        sec = timed(fn, device, s["repeats"], s["warmup"])
        out[name] = _workload(b / sec, count_flops(fn) / b, peak)
    out["speedup_latent_vs_decode"] = (out["latent_single_step"]["images_per_s"]
                                       / out["decode_plus_pixel_segmenter"]["images_per_s"])
    return out


def bench_segmentation(res: int, s: dict, device: torch.device, peak: float) -> dict:
    """MONAI BasicUNet training steps (forward, Dice+CE backward, AdamW update) at batch ``train_batch``."""
    from monai.losses import DiceCELoss

    net = build_network("BasicUNet", 3, tuple(s["segmenter"]), res).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(sigmoid=True)
    b = s["train_batch"]
    x = torch.randn(b, 3, res, res, device=device)
    y = (torch.rand(b, 1, res, res, device=device) > 0.8).float()

    def step() -> None:
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    flops = count_flops(step) / b
    steps = s["train_steps"]
    sec = timed(lambda: [step() for _ in range(steps)], device, s["repeats"], s["warmup"]) / steps
    return {"features": list(s["segmenter"]), "batch": b, "steps_timed": steps,
            "training": _workload(b / sec, flops, peak, seconds_per_step=sec)}


def machine_info(device: torch.device) -> dict:
    """Core count, torch threads and device: every speed number depends on them (devices.machine_facts)."""
    return {**machine_facts(), "device": str(device),
            **({"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})}


def at_equal_screen_score(screen_path: Path = SCREEN, reference_steps: int = 1000) -> dict:
    """Samplers of one generator compared at their usefulness-screen score, not only per network evaluation.

    From the screen's JSON: each variant that changes only the sampler of a reference variant drawing with
    ancestral DDPM (same generator, same pairs per image, no filter, same arm). For each, its images/s as the
    screen drew its set (same machine and session conditions as the reference), its screen score (real +
    synthetic val mDice, its pairs alone, speckle) and the paired difference over val images from the
    reference's score with its 95 % bootstrap interval. The ``reference_steps``-step DDPM rate is the reference's
    measured rate scaled by its step count (one network evaluation per step, so the cost is linear in steps).
    """
    from lesionforge.experiment.stats import bootstrap_paired

    if not screen_path.is_file():
        return {"status": f"not computed: no screen result {screen_path.name}"}
    screen = json.loads(screen_path.read_text(encoding="utf-8"))
    variants = screen["variants"]

    def synthesis(e: dict) -> dict:
        return e.get("synthesis") or {}

    def row(e: dict, arm: str) -> dict | None:
        return e.get("arms", {}).get(arm)

    refs = {v: e for v, e in variants.items() if not synthesis(e) and not e.get("filter") and not e.get("arm")
            and row(e, "synthetic") and e.get("synthesize_s")}
    out: dict = {"screen_file": screen_path.name, "segment_steps": screen["segment"]["steps"],
                 "machine": screen["machine"], "reference_steps": reference_steps, "comparisons": []}
    for ref_name, ref in refs.items():
        ref_rate = ref["n_synthetic"] / ref["synthesize_s"]
        ddpm_rate = ref_rate * REFERENCE_DDPM_STEPS / reference_steps
        for name, e in variants.items():
            syn = synthesis(e)
            if (not syn or set(syn) - SAMPLER_FIELDS or e.get("overrides") != ref.get("overrides")
                    or e.get("filter") or e.get("arm") or e.get("n_synthetic") != ref["n_synthetic"]
                    or not row(e, "synthetic") or not e.get("synthesize_s")):
                continue
            rate = e["n_synthetic"] / e["synthesize_s"]
            mine, theirs = row(e, "synthetic"), row(ref, "synthetic")
            diff = bootstrap_paired(mine["per_image"], theirs["per_image"])
            q, rq = e.get("quality", {}), ref.get("quality", {})
            out["comparisons"].append({
                "variant": name, "reference": ref_name, "sampler": syn.get("sampler"),
                "sampling_steps": syn.get("sampling_steps"), "images_per_s": rate,
                "reference_images_per_s": ref_rate, "reference_sampler": f"ddpm {REFERENCE_DDPM_STEPS}",
                f"ddpm_{reference_steps}_images_per_s": ddpm_rate,
                f"speedup_vs_ddpm_{reference_steps}": rate / ddpm_rate,
                "speedup_vs_reference": rate / ref_rate,
                "screen_val_mdice": mine["val_mdice"], "screen_seeds": mine["seeds"],
                "reference_val_mdice": theirs["val_mdice"], "reference_seeds": theirs["seeds"],
                "synthetic_only_val_mdice": (row(e, "synthetic-only") or {}).get("val_mdice"),
                "reference_synthetic_only_val_mdice": (row(ref, "synthetic-only") or {}).get("val_mdice"),
                "speckle": (q.get("speckle") or {}).get("synthetic"),
                "reference_speckle": (rq.get("speckle") or {}).get("synthetic"),
                "real_speckle": (q.get("speckle") or {}).get("real_train"),
                "paired_diff_val": diff, "equal_within_ci": diff["ci95"][0] <= 0 <= diff["ci95"][1],
            })
    out["notes"] = (f"images/s as each screen set was drawn (inpainting generator, torch threads 1, the machine "
                    f"shared with other jobs); ddpm_{reference_steps} scales the reference's measured rate by "
                    f"{REFERENCE_DDPM_STEPS}/{reference_steps}. Scores: real + synthetic segmenter at the "
                    "screen's budget, val mDice; paired_diff_val over val images (Dice averaged over each row's "
                    "seeds), 2000 bootstrap samples.")
    return out


def run_speed_benchmark(profile: str = "cpu", quick: bool = False, device: str = "cpu",
                        out_dir: str | Path = RESULTS, overwrite: bool = False, seed: int = 0,
                        threads: int | None = None) -> Path:
    """Run every workload and write ``speed-<profile>[-quick].json`` and ``.md`` to ``out_dir``; returns the JSON.

    ``threads`` sets torch's CPU thread count for the run (restored afterwards); ``None`` keeps the current one.
    """
    stem = f"speed-{profile}{'-quick' if quick else ''}"
    out_json = Path(out_dir) / f"{stem}.json"
    if out_json.exists() and not overwrite:
        raise OverwriteError(f"{out_json} exists; pass --overwrite to replace it")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        result = _measure(profile, quick, torch.device(device), seed)
    finally:
        torch.set_num_threads(previous)
    write_json_atomic(out_json, result)
    write_text_atomic(out_json.with_suffix(".md"), speed_markdown(result))
    return out_json


def _measure(profile: str, quick: bool, dev: torch.device, seed: int) -> dict:
    res = PROFILE_RESOLUTION[profile]
    torch.manual_seed(seed)
    s = QUICK if quick else FULL
    peak = peak_matmul(s["matmul_n"], dev, s["repeats"])
    return {
        "profile": profile, "resolution": res, "quick": quick, "precision": "fp32", "seed": seed,
        "code_version": code_version(), "machine": machine_info(dev), "peak_matmul": peak,
        "synthesis": bench_synthesis(res, s, dev, peak["flops_per_s"]),
        "validation": bench_validation(res, s, dev, peak["flops_per_s"]),
        "segmentation": bench_segmentation(res, s, dev, peak["flops_per_s"]),
        "at_equal_screen_score": at_equal_screen_score() if profile == "cpu" and not quick else {
            "status": "not computed: the screen ran at the cpu profile"},
        "notes": "ddpm_1000 is extrapolated from a timed k-step DDPM run (k = extrapolated_from_steps) x 1000/k.",
    }


def speed_markdown(r: dict) -> str:
    """Human-readable table of a speed result."""
    m, peak = r["machine"], r["peak_matmul"]
    rows = [("synthesis, DDIM", r["synthesis"]["ddim"]), ("synthesis, DPM-Solver++", r["synthesis"]["dpm++"]),
            ("synthesis, DDPM 1000 steps (extrapolated)", r["synthesis"]["ddpm_1000"]),
            ("validation, latent single step", r["validation"]["latent_single_step"]),
            ("validation, decode + pixel segmenter", r["validation"]["decode_plus_pixel_segmenter"]),
            ("segmentation training", r["segmentation"]["training"])]
    lines = [
        f"# Speed, profile `{r['profile']}` ({r['resolution']} px){' — QUICK smoke run' if r['quick'] else ''}", "",
        f"Machine: {m['processor']}, {m['cpus_usable']} usable cores ({m['cpu_count']} total), torch threads "
        f"{m['torch_threads']}, device {m['device']}, torch {m['torch']}, fp32. Code `{r['code_version']}`.", "",
        f"Measured peak fp32 matmul ({peak['n']}x{peak['n']}): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s.", "",
        "| workload | images/s | GFLOP/image | achieved GFLOP/s | share of peak |", "|---|---|---|---|---|",
    ]
    for name, w in rows:
        lines.append(f"| {name} | {w['images_per_s']:.3g} | {w['flops_per_image'] / 1e9:.3g} | "
                     f"{w['achieved_flops_per_s'] / 1e9:.3g} | {100 * w['share_of_peak']:.1f} % |")
    lines += ["", f"Few-step (DPM-Solver++, {r['synthesis']['dpm++']['steps']} steps) vs 1000-step DDPM: "
              f"{r['synthesis']['speedup_few_step_vs_ddpm']:.1f}x faster. Latent validation vs decode + segment: "
              f"{r['validation']['speedup_latent_vs_decode']:.1f}x faster.", "", r["notes"], ""]
    eq = r.get("at_equal_screen_score") or {}
    lines += ["## At equal screen score", ""]
    if eq.get("comparisons"):
        k = eq["reference_steps"]
        lines += [f"From `{eq['screen_file']}` (segmenter {eq['segment_steps']} steps, {eq['machine']}).", "",
                  f"| sampler | images/s | vs DDPM {k} | screen val mDice (seeds) | reference DDPM 100 (seeds) | "
                  "paired diff [95 % CI] | pairs alone (ref) | speckle (ref; real) |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in eq["comparisons"]:
            d = c["paired_diff_val"]
            alone = c["synthetic_only_val_mdice"]
            ref_alone = c["reference_synthetic_only_val_mdice"]
            lines.append(
                f"| {c['sampler']} {c['sampling_steps']} | {c['images_per_s']:.3f} | "
                f"{c[f'speedup_vs_ddpm_{k}']:.0f}x | {c['screen_val_mdice']:.3f} ({len(c['screen_seeds'])}) | "
                f"{c['reference_val_mdice']:.3f} ({len(c['reference_seeds'])}) | {d['mean']:+.3f} "
                f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                f"{'—' if alone is None else f'{alone:.3f}'} ({'—' if ref_alone is None else f'{ref_alone:.3f}'}) | "
                f"{c['speckle'] or float('nan'):.1f} ({c['reference_speckle'] or float('nan'):.1f}; "
                f"{c['real_speckle'] or float('nan'):.1f}) |")
        lines += ["", eq["notes"], ""]
    else:
        lines += [eq.get("status", "not computed"), ""]
    return "\n".join(lines)


def main(
    profile: str = typer.Option("cpu", help="Resolution profile: tiny, cpu, cpu128 or gpu."),
    quick: bool = typer.Option(False, help="Tiny networks and few steps: a smoke test, not a measurement."),
    device: str = typer.Option("cpu", help="torch device, e.g. cpu or cuda."),
    out_dir: Path = typer.Option(RESULTS, help="Folder for speed-<profile>.json and .md."),
    overwrite: bool = typer.Option(False, help="Replace an existing result file."),
    threads: int = typer.Option(0, help="torch CPU threads for the run (0: torch's default, usually the cores)."),
) -> None:
    """Measure images/s, FLOPs per image and share of peak for synthesis, validation and segmentation training."""
    if profile not in PROFILE_RESOLUTION:
        raise typer.BadParameter(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_RESOLUTION)}")
    path = run_speed_benchmark(profile, quick, device, out_dir, overwrite, threads=threads or None)
    typer.echo(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    typer.run(main)
