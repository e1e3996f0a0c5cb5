"""The carry bundle of the gpu-profile device run, and the run itself (called by prepare.sh and run.sh).

    python benchmarks/device/bundle.py pack [--dry-run]        # data + prompt encodings into ./bundle (-dry)
    python benchmarks/device/bundle.py check [--dry-run]       # bundle (wheels included) under the carry limit
    python benchmarks/device/bundle.py run OUT [--dry-run]     # the sweep; result JSON, report, timings into OUT

``--dry-run``: the same path on CPU at the tiny profile (32 px) with tiny models and one seed, so the scripts
are known to work before any device time is spent. The data are read through the experiment's own loader
(``LesionforgeStages.load_data``) and packed with :mod:`lesionforge.data.packed`; the prompt encodings are
every prompt the generator's library can give (:func:`lesionforge.conditioning.text.save_text_embeddings`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "kvasir-seg-n32-gpu.yaml"
BUNDLE = HERE / "bundle"
DRY_BUNDLE = HERE / "bundle-dry"  # the dry run's own: it never touches a prepared bundle
CARRY_LIMIT = 64 * 2**20  # what the device tool carries besides the working tree
SHARED = HERE.parents[2] / "shared"  # beside the checkout, as in benchmarks/configs/kvasir-seg-cpu.yaml
TEXT_FILE = "text-embeddings.safetensors"

# tiny models and budgets of the dry run (the flow is the same, the numbers mean nothing)
DRY = {
    "profile": "tiny", "seeds": [0],
    "segment": {"preset": "segment-tiny.yaml", "network": "BasicUNet",  # a packaged preset
                "features": [8, 8, 16, 16, 32, 8], "steps": 6, "batch_size": 4, "lr": 0.003, "warmup_steps": 0,
                "val_interval": 3},
    "generator": {"block_out_channels": [16, 32], "layers_per_block": 1, "norm_num_groups": 8, "sample_steps": 2,
                  "attention_levels": [False, True],
                  "attention_head_dim": 8, "cross_attention_dim": 32, "steps": 2, "batch_size": 2,
                  "checkpoint_every": 2, "sample_every": 0, "num_train_timesteps": 50, "mixed_precision": False},
    "n_per_real": 1, "sampling_steps": 2, "bootstrap_samples": 200,
}


def load_config(dry_run: bool, data_from_shared: bool = False, **over):
    """The device config; ``data_from_shared``: read the datasets from ../shared (to pack them) instead of the
    bundle; ``dry_run``: the tiny CPU version."""
    import yaml

    from lesionforge.experiment.config import load_experiment_config

    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    if data_from_shared:
        ds = SHARED / "datasets"
        raw["dataset"].update(root=str(ds / "kvasir-seg"), split=str(SHARED / "benchmark" / "splits" /
                                                                      "kvasir-seg.json"),
                              backgrounds_root=str(ds / "colon-normal"),
                              subsets={"flat": str(ds / "kvasir-seg" / "sessile_subset_names.txt")})
    if dry_run:
        raw.update(profile=DRY["profile"], seeds=DRY["seeds"], bootstrap_samples=DRY["bootstrap_samples"])
        raw["segment"] = DRY["segment"]
        gen = raw["generators"]["inpaint"]
        gen["overrides"] = {**gen["overrides"], **DRY["generator"]}
        gen.update(n_per_real=DRY["n_per_real"], sampling_steps=DRY["sampling_steps"])
        if not data_from_shared:
            ds = raw["dataset"]
            ds.update(root="bundle-dry/kvasir-seg-32.npz", backgrounds_root="bundle-dry/colon-normal-32.npz",
                      split="bundle-dry/kvasir-seg-split.json", subsets={"flat": "bundle-dry/sessile_subset_names.txt"})
    raw.update(over)
    tmp = HERE / f".config-{'dry' if dry_run else 'gpu'}.yaml"  # beside the original: its relative paths hold
    tmp.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        return load_experiment_config(tmp)
    finally:
        tmp.unlink()


def pack(dry_run: bool) -> None:
    """Data at the profile resolution, the split and subset files, and the prompt encodings, into the bundle."""
    from lesionforge.conditioning.text import save_text_embeddings
    from lesionforge.data.arrays import PairArrays
    from lesionforge.data.packed import save_packed
    from lesionforge.experiment.real_stages import LesionforgeStages

    bundle = DRY_BUNDLE if dry_run else BUNDLE
    cfg = load_config(dry_run, data_from_shared=True, output=str(bundle / ".load"))
    for path in (cfg.dataset.root, cfg.dataset.split, cfg.dataset.backgrounds_root):
        if not Path(path).exists():
            sys.exit(f"{path}: not found; prepare.sh reads the shared datasets beside the checkout")
    bundle.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    data = LesionforgeStages().load_data(cfg)
    res = cfg.resolution
    save_packed(bundle / f"kvasir-seg-{res}.npz", PairArrays.concat([data.pool, data.val, data.test]))
    save_packed(bundle / f"colon-normal-{res}.npz", data.backgrounds)
    shutil.copyfile(cfg.dataset.split, bundle / "kvasir-seg-split.json")
    shutil.copyfile(cfg.dataset.subsets["flat"], bundle / "sessile_subset_names.txt")
    classes = sorted({c for c in data.pool.classes if c is not None})
    save_text_embeddings(bundle / TEXT_FILE, library_prompts(cfg.dataset.name, classes))
    shutil.rmtree(bundle / ".load", ignore_errors=True)
    print(f"packed {len(data.pool) + len(data.val) + len(data.test)} pairs and {len(data.backgrounds)} backgrounds "
          f"at {res} px in {time.perf_counter() - t0:.1f} s")


def library_prompts(dataset: str, classes: list[str]) -> list[str]:
    """Every prompt the built-in library of ``dataset``'s domain gives: by id, by class and band, templates."""
    from lesionforge.conditioning.prompts import PromptLibrary, domain_for_dataset

    lib = PromptLibrary.load(domain_for_dataset(dataset))
    out = {p for sid in lib.spec.by_id for p in lib.prompts(sample_id=sid)}
    for cls in [None, *classes]:
        for band in lib.band_names:
            out.update(lib.prompts(label_class=cls, band=band))
    return sorted(out)


def check(dry_run: bool) -> int:
    """Total size of the bundle (data, encodings, wheels) against the carry limit; returns bytes."""
    bundle = DRY_BUNDLE if dry_run else BUNDLE
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    print(f"bundle {bundle}: {total / 2**20:.1f} MiB of {CARRY_LIMIT / 2**20:.0f} MiB")
    if total >= CARRY_LIMIT:
        sys.exit(f"{bundle}: {total / 2**20:.1f} MiB is over the {CARRY_LIMIT / 2**20:.0f} MiB the device carries")
    return total


def run(out: Path, dry_run: bool) -> Path:
    """The sweep with the bundle's data and prompt encodings; result JSON, report and a timing summary into
    ``out``. On CUDA: bf16 autocast (generator and segmenter), channels-last segmenter, TF32 matmuls. Every
    trainer holds its training data on the device and builds its batches there (also in the CPU dry run, which
    so runs that path end to end; :func:`lesionforge.devices.data_on_device`)."""
    import os

    import torch

    from lesionforge.conditioning.text import TEXT_EMBEDDINGS_ENV
    from lesionforge.devices import DATA_ON_DEVICE_ENV, data_on_device, resolve_device
    from lesionforge.experiment.report import write_report
    from lesionforge.experiment.runner import run_experiment

    os.environ[TEXT_EMBEDDINGS_ENV] = str((DRY_BUNDLE if dry_run else BUNDLE) / TEXT_FILE)
    os.environ[DATA_ON_DEVICE_ENV] = "1"
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(dry_run, output=str(out / "runs"), results_dir=str(out))
    t0 = time.perf_counter()
    [path] = run_experiment(cfg, progress=False)
    wall = time.perf_counter() - t0
    report = write_report(path)
    result = json.loads(path.read_text(encoding="utf-8"))
    summary = {"wall_s": round(wall, 1), "device": torch.cuda.get_device_name() if torch.cuda.is_available()
               else "cpu", "torch": torch.__version__, "result": path.name, "report": Path(report).name,
               "data_on_device": data_on_device(resolve_device()),
               "generators": {k: g.get("timings") for k, g in result.get("generators", {}).items()},
               "runs": _run_timings(cfg.output)}
    (out / "timings.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(cfg.output, ignore_errors=True)  # checkpoints: too many and too large to come back
    print(json.dumps(summary, indent=2))
    return path


def _run_timings(output: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(output)): json.loads(p.read_text(encoding="utf-8")).get("timings")
            for p in sorted(output.glob("n*/*/seed*/run.json"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["pack", "check", "run"])
    ap.add_argument("out", nargs="?", type=Path, help="run: folder for the result (the device's $OUT)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    a = ap.parse_args()
    if a.command == "pack":
        pack(a.dry_run)
    elif a.command == "check":
        check(a.dry_run)
    else:
        if a.out is None:
            sys.exit("run needs OUT (a folder for the result)")
        run(a.out, a.dry_run)


if __name__ == "__main__":
    main()
