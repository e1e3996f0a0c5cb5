"""The carry bundle of the gpu-profile device run, and the run itself (called by prepare.sh and run.sh).

    python benchmarks/device/bundle.py pack [--dry-run]        # data + prompt encodings into ./bundle (-dry)
    python benchmarks/device/bundle.py check [--dry-run]       # bundle (wheels included) under the carry limit
    python benchmarks/device/bundle.py run OUT [--dry-run]     # the sweep; result JSON, report, timings into OUT
    python benchmarks/device/bundle.py summarize SWEEP_TAR --into DIR  # keep a stopped sweep's records

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
                  "checkpoint_every": 2, "sample_every": 0, "num_train_timesteps": 50, "mixed_precision": False,
                  "pretrain_steps": 2},
    "n_per_real": 1, "sampling_steps": 2, "bootstrap_samples": 200,
}


def load_config(dry_run: bool, data_from_shared: bool = False, keep: bool = False, **over):
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
    tmp = _kept_config(dry_run)  # beside the original: its relative paths hold
    tmp.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        return load_experiment_config(tmp)
    finally:
        if not keep:  # keep: the workers of run() read it
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
    for cls in [None, *classes, *lib.classes]:  # the library's own classes too (e.g. the lesion-free frames')
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


def run(out: Path, dry_run: bool, workers: int = 4, deadline_s: float = 540.0) -> Path | None:
    """The sweep with the bundle's data and prompt encodings, in ``workers`` processes sharing the GPU (each run
    and synthetic set claimed by one of them, as on the CPU: real-data runs fill the time the generator trains).
    On CUDA: bf16 autocast (generator and segmenter), channels-last segmenter, TF32 matmuls. Every trainer holds
    its training data on the device and builds its batches there (also in the CPU dry run, which so runs that
    path end to end; :func:`lesionforge.devices.data_on_device`).

    A device call has a hard limit, so the sweep has ``deadline_s``: past it, or as soon as one worker fails,
    the workers are stopped. Whatever exists then comes back in ``out``: ``timings.json`` (wall time, per-run
    timings and test mDice of every finished run, the generators' steps and seconds) and ``sweep.tar.gz``
    (result JSON and report when the sweep finished, every ``run.json``, the workers' logs, the generators'
    records, loss curves and sample grids; no weights). At most 8 files come back from a call: these two and
    the log."""
    import os
    import subprocess

    import torch

    from lesionforge.conditioning.text import TEXT_EMBEDDINGS_ENV
    from lesionforge.devices import DATA_ON_DEVICE_ENV

    os.environ[TEXT_EMBEDDINGS_ENV] = str((DRY_BUNDLE if dry_run else BUNDLE) / TEXT_FILE)
    os.environ[DATA_ON_DEVICE_ENV] = "1"
    out.mkdir(parents=True, exist_ok=True)
    work = out / "sweep"
    # checked here, written beside the original for the workers to read
    load_config(dry_run, keep=True, output=str(work / "runs"), results_dir=str(work / "results"))
    threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    procs = []
    for i in range(workers):
        log = open(work.parent / f"worker{i}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, __file__, "worker", str(_kept_config(dry_run)),
                                        "--threads", str(threads)], stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(2.0)  # staggered, so the first claims the generator and the others the real-data runs
    failed = _wait(procs, t0, deadline_s)
    wall = time.perf_counter() - t0
    results = sorted((work / "results").glob("*.json"))
    report = None
    if results and not failed:
        from lesionforge.experiment.report import write_report

        report = write_report(results[0])
    summary = {"wall_s": round(wall, 1), "workers": workers, "threads_per_worker": threads,
               "stopped": failed, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "result": results[0].name if results else None,
               "report": Path(report).name if report else None, "data_on_device": True,
               "generators": _generator_records(work / "runs"), "runs": _run_timings(work / "runs")}
    (out / "timings.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _pack_sweep(out, work)
    print(json.dumps(summary, indent=2))
    return results[0] if results else None


def worker(config: Path, threads: int) -> None:
    """One worker of :func:`run`: the sweep of ``config`` with TF32 matmuls on CUDA."""
    import torch

    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.runner import run_experiment

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = load_experiment_config(config)
    run_experiment(cfg.model_copy(update={"threads": threads}), progress=False, poll_s=2.0)


def _kept_config(dry_run: bool) -> Path:
    return HERE / f".config-{'dry' if dry_run else 'gpu'}.yaml"


def _wait(procs: list, t0: float, deadline_s: float) -> str | None:
    """Wait for the workers; stop them all at the deadline or when one fails. Returns why they were stopped."""
    why = None
    while any(p.poll() is None for p, _ in procs):
        bad = [p.returncode for p, _ in procs if p.poll() not in (None, 0)]
        if bad:
            why = f"a worker failed (exit {bad[0]})"
        elif time.perf_counter() - t0 > deadline_s:
            why = f"deadline of {deadline_s:.0f} s"
        if why:
            for p, _ in procs:
                if p.poll() is None:
                    p.kill()
            break
        time.sleep(1.0)
    for p, log in procs:
        p.wait()
        log.close()
    bad = [p.returncode for p, _ in procs if p.returncode not in (0, -9)]
    if why is None and bad:
        why = f"a worker failed (exit {bad[0]})"
    if why:
        print(f"workers stopped: {why}", flush=True)
    return why


def _generator_records(runs: Path) -> dict[str, dict]:
    """Steps and training seconds of every generator the sweep trained (its ``lesionforge.json``)."""
    found = {}
    for meta in sorted(runs.glob("cache/generators/*/lesionforge.json")):
        m = json.loads(meta.read_text(encoding="utf-8"))
        found[meta.parent.name] = {k: m.get(k) for k in ("steps", "train_seconds", "torch_threads")}
    return found


def _pack_sweep(out: Path, work: Path) -> None:
    """Everything but weights and arrays, with the workers' logs, into ``out/sweep.tar.gz``."""
    import tarfile

    skip = {".safetensors", ".npz", ".npy", ".pt", ".bin"}
    with tarfile.open(out / "sweep.tar.gz", "w:gz") as tar:
        for p in sorted(work.rglob("*")):
            if p.is_file() and p.suffix not in skip and p.stat().st_size < 8 * 2**20:
                tar.add(p, arcname=str(p.relative_to(out)))
        for log in sorted(out.glob("worker*.log")):
            tar.add(log, arcname=log.name)
            log.unlink()
    shutil.rmtree(work, ignore_errors=True)  # checkpoints and sets: too many and too large to come back


def summarize(sweep_tar: Path, out_dir: Path) -> dict:
    """Keep what a device call sent back (``run`` 's ``sweep.tar.gz``) in ``out_dir``: every run record, the
    generators' records, loss curves and last sample grids, the synthetic sets' manifests, the workers' logs; and
    ``summary.json``: per arm its seeds and test mDice, and paired differences (over test images, and over seeds
    with >= 3) against the baseline and every copy-paste arm, each over the seeds both arms finished. The result
    JSON of a sweep is written only once every run finished; this summary is for a sweep stopped at its
    deadline, from the records alone, with the result's own statistics (``experiment.results.paired_diff``)."""
    import tarfile

    from lesionforge.experiment.records import read_record
    from lesionforge.experiment.results import paired_diff

    keep = ("run.json", "lesionforge.json", "loss.png", "final.png", "synthetic.json", ".log")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "summary.json").is_file():
        sys.exit(f"{out_dir}: not empty and not a summary folder; give a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    by_arm: dict[str, list] = {}
    with tarfile.open(sweep_tar) as tar:
        for m in tar.getmembers():
            name = Path(m.name)
            if not m.isfile() or not name.name.endswith(keep) or name.parent.name == "segmenter":
                continue
            if any(part.startswith("checkpoint-") for part in name.parts):
                continue
            # flat names: <arm>__seed<S>__run.json, <generator>__final.png, ... (no path from the archive is used)
            parts = [p for p in name.parts if p not in ("sweep", "runs", "n32", "cache", "generators", "samples")]
            dest = out_dir / "__".join(parts)
            dest.write_bytes(tar.extractfile(m).read())
            if name.name == "run.json":
                rec = read_record(dest)
                by_arm.setdefault(rec.arm, []).append(rec)
    # the references first (baseline, then the copy-paste arms), each arm compared with those before it
    order = sorted(by_arm, key=lambda a: (a != "baseline", not a.startswith("copy-paste"), a))
    arms = {a: sorted(by_arm[a], key=lambda r: r.seed) for a in order}
    refs = [a for a in order if a == "baseline" or a.startswith("copy-paste")]
    paired = {}
    for ref in refs:
        for arm, recs in arms.items():
            if order.index(arm) <= order.index(ref):
                continue
            seeds = sorted({r.seed for r in recs} & {r.seed for r in arms[ref]})
            d = paired_diff([r for r in recs if r.seed in seeds], [r for r in arms[ref] if r.seed in seeds])
            paired[f"{arm} - {ref}"] = {"seeds": seeds, "mdice": d["mdice"], "miss_rate": d.get("miss_rate")}
    summary = {"source": sweep_tar.name, "note": "records of a device sweep; see docs/scale.md",
               "arms": {a: {"seeds": [r.seed for r in rs], "mdice": [round(r.mdice, 4) for r in rs],
                            "mean": round(sum(r.mdice for r in rs) / len(rs), 4)} for a, rs in arms.items()},
               "paired": paired}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _run_timings(output: Path) -> dict[str, dict]:
    found = {}
    for p in sorted(output.glob("n*/*/seed*/run.json")):
        rec = json.loads(p.read_text(encoding="utf-8"))
        found[str(p.parent.relative_to(output))] = {"timings": rec.get("timings"),
                                                    "test_mdice": rec.get("mdice"),
                                                    "best_val_mdice": rec.get("best_val_mdice")}
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["pack", "check", "run", "worker", "summarize"])
    ap.add_argument("out", nargs="?", type=Path, help="run: folder for the result (the device's $OUT); "
                    "worker: the sweep's config")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU")
    ap.add_argument("--workers", type=int, default=4, help="run: processes sharing the GPU")
    ap.add_argument("--deadline", type=float, default=540.0, help="run: stop the workers after this many seconds")
    ap.add_argument("--threads", type=int, default=1, help="worker: torch threads")
    ap.add_argument("--into", type=Path, help="summarize: folder for the records and summary.json")
    a = ap.parse_args()
    if a.command == "pack":
        pack(a.dry_run)
    elif a.command == "check":
        check(a.dry_run)
    else:
        if a.out is None:
            sys.exit(f"{a.command} needs OUT (a folder for the result) or the config")
        if a.command == "worker":
            worker(a.out, a.threads)
        elif a.command == "summarize":
            if a.into is None:
                sys.exit("summarize needs --into DIR (where the records and summary.json go)")
            print(json.dumps(summarize(a.out, a.into)["arms"], indent=2))
        else:
            run(a.out, a.dry_run, a.workers, a.deadline)


if __name__ == "__main__":
    main()
