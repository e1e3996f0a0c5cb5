"""The carry bundle of a device run, and the run itself (called by prepare.sh and run.sh).

    python benchmarks/device/bundle.py pack [--dry-run] [--config CONFIG]  # data, prompt encodings, config.yaml
    python benchmarks/device/bundle.py check [--dry-run]       # bundle (wheels included) under the carry limit
    python benchmarks/device/bundle.py run OUT [--dry-run] [--n N] [--arm A]  # the sweep into OUT
    python benchmarks/device/bundle.py summarize SWEEP_TAR --into DIR  # keep a stopped sweep's records

``--dry-run``: the same path on CPU at the tiny profile (32 px) with tiny models and one seed, so the scripts
are known to work before any device time is spent. The data are read through the experiment's own loader
(``LesionforgeStages.load_data``) and packed with :mod:`lesionforge.data.packed`; the prompt encodings are
every prompt the generator's library can give (:func:`lesionforge.conditioning.text.save_text_embeddings`).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "kvasir-seg-n32-gpu.yaml"  # the default sweep; --config names another (e.g. a cpu-profile headline)
BUNDLE = HERE / "bundle"
DRY_BUNDLE = HERE / "bundle-dry"  # the dry run's own: it never touches a prepared bundle
BUNDLE_CONFIG = "config.yaml"  # the sweep as the device runs it, its data paths inside the bundle (pack writes it)
CARRY_LIMIT = 64 * 2**20  # what the device tool carries besides the working tree
TEXT_FILE = "text-embeddings.safetensors"
LOSSLESS_MAX_PX = 128  # packed without JPEG up to this size: a cpu-profile sweep there reads the CPU sweep's pixels

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
    "pixel_validator": {"features": [8, 8, 16, 16, 32, 8], "steps": 2, "batch_size": 4, "checkpoint_every": 2},
    "latent_validator": {"block_out_channels": [16, 16], "head_channels": 8, "steps": 2, "batch_size": 4,
                         "checkpoint_every": 2},
    "autoencoder": {"block_out_channels": [16, 16], "norm_num_groups": 8, "latent_channels": 4, "steps": 2,
                    "batch_size": 4, "checkpoint_every": 2, "mid_block_attention": False},
}


def bundle_dir(dry_run: bool) -> Path:
    return DRY_BUNDLE if dry_run else BUNDLE


def _tiny(raw: dict) -> dict:
    """The dry run's version of a sweep: tiny profile, models and budgets, one seed."""
    raw.update(profile=DRY["profile"], seeds=DRY["seeds"], bootstrap_samples=DRY["bootstrap_samples"])
    raw["segment"] = DRY["segment"]
    for gen in raw.get("generators", {}).values():
        if "overrides" in gen or "config" in gen:  # a diffusion generator (paste and union entries have neither)
            gen["overrides"] = {**gen.get("overrides", {}), **DRY["generator"]}
            gen["sampling_steps"] = DRY["sampling_steps"]
        if "n_per_real" in gen:
            gen["n_per_real"] = DRY["n_per_real"]
        if gen.get("filter"):
            f = gen["filter"]
            if f.get("validator", "latent") == "pixel":
                f["validator_overrides"] = {**f.get("validator_overrides", {}), **DRY["pixel_validator"]}
            else:
                f["validator_overrides"] = {**f.get("validator_overrides", {}), **DRY["latent_validator"]}
                f["autoencoder_overrides"] = {**f.get("autoencoder_overrides", {}), **DRY["autoencoder"]}
            if f.get("keep_best"):  # one draw per labelled pair: keep it
                f["keep_best"] = 1
    return raw


def _load(raw: dict, beside: Path, keep_as: Path | None = None):
    """``raw`` validated as an experiment config read from a file beside ``beside`` (so its relative paths hold);
    ``keep_as``: leave it there under that name (the workers of :func:`run` read it)."""
    import os

    import yaml

    from lesionforge.experiment.config import load_experiment_config

    path = keep_as or beside.with_name(f".device-{os.getpid()}-{beside.name}")
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        return load_experiment_config(path)
    finally:
        if keep_as is None:
            path.unlink()


def pack(dry_run: bool, config: Path = CONFIG) -> Path:
    """``config``'s dataset (read through the experiment's own loader, at the profile resolution), its split,
    backgrounds and subset files, the prompt encodings, and the sweep's config with its data paths inside the
    bundle (``config.yaml``), into the bundle. A volume dataset's folder is copied as it is (its slices keep
    their case ids only through the volume reader)."""
    import yaml

    from lesionforge.conditioning.text import save_text_embeddings
    from lesionforge.data.arrays import PairArrays
    from lesionforge.data.packed import save_packed
    from lesionforge.experiment.real_stages import LesionforgeStages

    bundle = bundle_dir(dry_run)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw = _tiny(raw) if dry_run else raw
    cfg = _load({**raw, "output": str(bundle / ".load")}, config)
    ds = cfg.dataset
    if ds.root is None or cfg.transfer:
        sys.exit(f"{config}: the device run packs one dataset folder (`dataset.root`, no `transfer` sets)")
    for path in (ds.root, ds.split, ds.backgrounds_root, *ds.subsets.values()):
        if path is not None and not Path(path).exists():
            sys.exit(f"{path}: not found; prepare.sh reads the shared datasets beside the checkout")
    data_dir = bundle / "data"
    shutil.rmtree(data_dir, ignore_errors=True)  # generated files only: rebuilt whole
    data_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    data = LesionforgeStages().load_data(cfg)
    res, name, lossless = cfg.resolution, ds.name, cfg.resolution <= LOSSLESS_MAX_PX
    where = dict(raw["dataset"])
    if ds.volumes is not None:
        shutil.copytree(ds.root, data_dir / name)
        where["root"] = f"data/{name}"
    else:  # every image the split names, once (BUSI's lesion-free frames are split ids, not a folder)
        parts = [data.pool, data.val, data.test]
        parts += [data.backgrounds] if ds.backgrounds_root is None and data.backgrounds is not None else []
        every = PairArrays.concat(parts)
        first = {i: k for k, i in reversed(list(enumerate(every.ids)))}
        every = every.subset(sorted(first.values()))
        where["root"] = save_packed(data_dir / f"{name}-{res}.npz", every, lossless).relative_to(bundle).as_posix()
    where["split"] = shutil.copyfile(ds.split, data_dir / f"{name}-split.json").relative_to(bundle).as_posix()
    if ds.backgrounds_root is not None:
        where["backgrounds_root"] = save_packed(data_dir / f"backgrounds-{res}.npz", data.backgrounds,
                                                lossless).relative_to(bundle).as_posix()
    where["subsets"] = {k: shutil.copyfile(p, data_dir / f"subset-{k}.txt").relative_to(bundle).as_posix()
                        for k, p in ds.subsets.items()}
    raw = {k: v for k, v in raw.items() if k not in ("output", "results_dir")}  # set by run
    raw["dataset"] = where
    out = bundle / BUNDLE_CONFIG
    out.write_text(f"# {config.name} as the device runs it, data inside this bundle (bundle.py pack)\n"
                   + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    _load({**raw, "output": str(bundle / ".load")}, out)  # it reads back (presets found, paths inside)
    classes = sorted({c for c in data.pool.classes if c is not None})
    save_text_embeddings(bundle / TEXT_FILE, library_prompts(name, classes))
    shutil.rmtree(bundle / ".load", ignore_errors=True)
    n_pairs = len(data.pool) + len(data.val) + len(data.test)
    print(f"packed {config.name}: {n_pairs} pairs, {0 if data.backgrounds is None else len(data.backgrounds)} "
          f"backgrounds at {res} px ({'lossless' if lossless else 'JPEG'}) in {time.perf_counter() - t0:.1f} s")
    return out


def library_prompts(dataset: str, classes: list[str]) -> list[str]:
    """Every prompt the built-in library of ``dataset``'s domain gives: by id, by class and band, templates.
    All of them: synthesis asks for class-free prompts too (a dry run of BUSI without them failed), which is why
    BUSI's library (2054 prompts, 101 MiB of encodings) does not fit a device call; Kvasir-SEG's 178 and MSD
    hippocampus' 194 (~9 MiB) do."""
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


def run(out: Path, dry_run: bool, workers: int = 4, deadline_s: float = 540.0, only_n: list[int] | None = None,
        arms: list[str] | None = None) -> Path | None:
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
    the log. ``only_n`` / ``arms``: just these N and arms of the sweep (as ``experiment run --n/--arm``)."""
    import os
    import subprocess

    import torch
    import yaml

    from lesionforge.conditioning.text import TEXT_EMBEDDINGS_ENV
    from lesionforge.devices import DATA_ON_DEVICE_ENV

    bundle = bundle_dir(dry_run)
    config = bundle / BUNDLE_CONFIG
    if not config.is_file():
        sys.exit(f"{config}: no packed sweep; run prepare.sh first")
    os.environ[TEXT_EMBEDDINGS_ENV] = str(bundle / TEXT_FILE)
    os.environ[DATA_ON_DEVICE_ENV] = "1"
    out.mkdir(parents=True, exist_ok=True)
    work = out / "sweep"
    # checked here, written into the bundle (its data paths hold there) for the workers to read
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    kept = _load({**raw, "output": str(work / "runs"), "results_dir": str(work / "results")}, config,
                 keep_as=bundle / ".run.yaml")
    select = [f"--n={n}" for n in only_n or []] + [f"--arm={a}" for a in arms or []]
    threads = max(1, (os.cpu_count() or 1) // workers)
    t0 = time.perf_counter()
    procs = []
    for i in range(workers):
        log = open(work.parent / f"worker{i}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen([sys.executable, __file__, "worker", str(bundle / ".run.yaml"),
                                        "--threads", str(threads), *select], stdout=log, stderr=subprocess.STDOUT),
                      log))
        time.sleep(2.0)  # staggered, so the first claims the generator and the others the real-data runs
    failed = _wait(procs, t0, deadline_s)
    wall = time.perf_counter() - t0
    results = sorted((work / "results").glob("*.json"))
    reports = []
    if results and not failed:
        from lesionforge.experiment.report import write_report

        reports = [Path(write_report(r)).name for r in results]
    summary = {"wall_s": round(wall, 1), "workers": workers, "threads_per_worker": threads,
               "stopped": failed, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "dataset": kept.dataset.name, "profile": kept.profile,
               "only_n": only_n, "arms": arms,
               "result": results[0].name if results else None, "results": [r.name for r in results],
               "report": reports[0] if reports else None, "data_on_device": True,
               "generators": _generator_records(work / "runs"), "runs": _run_timings(work / "runs")}
    (out / "timings.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    _pack_sweep(out, work)
    print(json.dumps(summary, indent=2))
    return results[0] if results else None


def worker(config: Path, threads: int, only_n: list[int] | None = None, arms: list[str] | None = None) -> None:
    """One worker of :func:`run`: the sweep of ``config`` with TF32 matmuls on CUDA."""
    import torch

    from lesionforge.experiment.config import load_experiment_config
    from lesionforge.experiment.runner import run_experiment

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    cfg = load_experiment_config(config)
    run_experiment(cfg.model_copy(update={"threads": threads}), progress=False, poll_s=2.0, only_n=only_n or None,
                   only_arms=arms or None)


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
        members = [m for m in tar.getmembers() if m.isfile()]
        regimes = {part for m in members for part in Path(m.name).parts if re.fullmatch(r"n\d+", part)}
        for m in members:
            name = Path(m.name)
            if not name.name.endswith(keep) or name.parent.name == "segmenter":
                continue
            if any(part.startswith("checkpoint-") for part in name.parts):
                continue
            # flat names: <arm>__seed<S>__run.json, <generator>__final.png, ... (no path from the archive is used);
            # a sweep of several N keeps its n<N> prefix, and its arms are summarised per N ("n16/baseline")
            drop = {"sweep", "runs", "cache", "generators", "samples"} | (regimes if len(regimes) == 1 else set())
            parts = [p for p in name.parts if p not in drop]
            dest = out_dir / "__".join(parts)
            dest.write_bytes(tar.extractfile(m).read())
            if name.name == "run.json":
                rec = read_record(dest)
                key = rec.arm if len(regimes) == 1 else f"n{rec.n_labelled}/{rec.arm}"
                by_arm.setdefault(key, []).append(rec)
    # the references first (baseline, then the copy-paste arms), each arm compared with those before it
    def regime_and_arm(key: str) -> tuple[str, str]:
        return tuple(key.split("/", 1)) if "/" in key else ("", key)

    def rank(key: str) -> tuple:  # per regime: the baseline, then the copy-paste arms, then the rest
        regime, arm = regime_and_arm(key)
        return regime, arm != "baseline", not arm.startswith("copy-paste"), arm

    order = sorted(by_arm, key=rank)
    arms = {a: sorted(by_arm[a], key=lambda r: r.seed) for a in order}
    refs = [a for a in order if regime_and_arm(a)[1] == "baseline" or regime_and_arm(a)[1].startswith("copy-paste")]
    paired = {}
    for ref in refs:
        for arm, recs in arms.items():
            if order.index(arm) <= order.index(ref) or regime_and_arm(arm)[0] != regime_and_arm(ref)[0]:
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
    ap.add_argument("--config", type=Path, default=CONFIG, help="pack: the sweep to pack (default: the gpu one)")
    ap.add_argument("--n", type=int, action="append", help="run, worker: only this N (repeatable)")
    ap.add_argument("--arm", action="append", help="run, worker: only this arm (repeatable)")
    a = ap.parse_args()
    if a.command == "pack":
        pack(a.dry_run, a.config.resolve())
    elif a.command == "check":
        check(a.dry_run)
    else:
        if a.out is None:
            sys.exit(f"{a.command} needs OUT (a folder for the result) or the config")
        if a.command == "worker":
            worker(a.out, a.threads, a.n, a.arm)
        elif a.command == "summarize":
            if a.into is None:
                sys.exit("summarize needs --into DIR (where the records and summary.json go)")
            print(json.dumps(summarize(a.out, a.into)["arms"], indent=2))
        else:
            run(a.out, a.dry_run, a.workers, a.deadline, a.n, a.arm)


if __name__ == "__main__":
    main()
