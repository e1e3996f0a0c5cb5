"""The runner's stages implemented with lesionforge's own data, generator, filter and segmentation APIs.

Trained models are cached under ``<output>/cache`` by a hash of their settings and the ids they were trained
on, so a generator, autoencoder or validator is trained once and reused by every arm and seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from lesionforge.data.arrays import PairArrays, load_arrays
from lesionforge.data.manifest import Sample, read_set
from lesionforge.data.splits import BenchmarkSplit, load_benchmark_split
from lesionforge.data.volumes import position_subsets
from lesionforge.errors import CheckpointError, ConfigError, DataError
from lesionforge.experiment.config import (
    PASTE_METHOD,
    ArmSettings,
    ExperimentConfig,
    GeneratorSpec,
    JitterSettings,
    paste_config,
    resolved_generator_config,
)
from lesionforge.experiment.keys import cache_key, settings_dump
from lesionforge.experiment.records import BANDS
from lesionforge.experiment.stages import ExperimentData, SyntheticSet
from lesionforge.outputs import is_inside
from lesionforge.segment.config import PixelClass


def demo_split(samples: list[Sample], sizes: list[int]) -> BenchmarkSplit:
    """A fixed split of the demo data: lesion pairs 1/2 train, 1/4 val, 1/4 test (in id order);
    low-data subsets are the first N train ids (nested, as in the benchmark splits); lesion-free images
    are the inpainting backgrounds."""
    lesion = sorted(s.id for s in samples if s.has_mask)
    normal = sorted(s.id for s in samples if not s.has_mask)
    n_train, n_val = len(lesion) // 2, len(lesion) // 4
    train, val, test = lesion[:n_train], lesion[n_train:n_train + n_val], lesion[n_train + n_val:]
    too_big = [n for n in sizes if n > len(train)]
    if too_big:
        raise ConfigError(f"demo data has {len(train)} training pairs; N={too_big} is too large")
    return BenchmarkSplit(dataset="demo", train=train, val=val, test=test, normal_backgrounds=normal,
                          low_data_subsets={n: train[:n] for n in sizes})


def volume_split(split: BenchmarkSplit, samples: list[Sample], negative_share: float) -> BenchmarkSplit:
    """A split by case made a split by slice: train and the low-data subsets get each case's foreground slices
    plus ``negative_share`` negatives, val its foreground slices, test every slice (whole volumes, for the 3D
    Dice; a split listing slices, as ``lesionforge data split`` writes, gets the whole volumes of its test
    slices); the inpainting backgrounds are the foreground-free slices of the train cases (known empty from their
    labels, as a 2D set's normal images are), unless the split lists its own.

    The result is a slice view of a checked case split, built without the split-file checks: its subsets keep
    their case counts as keys (N volumes, more slices), and the backgrounds may be train cases' empty slices."""
    from lesionforge.data.splits import expand_cases
    from lesionforge.data.volumes import case_of

    def expand(ids: list[str], share: float) -> list[str]:
        return expand_cases(ids, samples, share)

    test_cases = list(dict.fromkeys(case_of(i) or i for i in split.test))
    train_all = expand(split.train, 1.0)
    positives = set(expand(split.train, 0.0))
    return BenchmarkSplit.model_construct(
        dataset=split.dataset, train=expand(split.train, negative_share), val=expand(split.val, 0.0),
        test=expand(test_cases, 1.0),
        low_data_subsets={n: expand(ids, negative_share) for n, ids in split.low_data_subsets.items()},
        normal_backgrounds=expand(split.normal_backgrounds, 1.0) or [i for i in train_all if i not in positives],
        near_duplicate_groups=split.near_duplicate_groups, seed=split.seed, unit="slice",
    )


def _volume_sources(root, samples: list[Sample], split: BenchmarkSplit) -> dict[str, Any]:
    """What the result file says about a volume dataset: dataset.json's labels and modality, slice counts."""
    from lesionforge.data.decathlon import read_decathlon_info
    from lesionforge.data.volumes import case_of

    info = read_decathlon_info(root)
    first = samples[0].slice if samples else None
    test = [i for i in split.test if case_of(i) is not None]
    return {
        "labels": None if info is None else {str(k): v for k, v in info.labels.items()},
        "modality": None if info is None else info.modality,
        "task": "binary union of every foreground label",
        "axis": None if first is None else first.axis,
        "normalisation": None if first is None else ("zscore" if first.zscore else "window"),
        "n_test_cases": len({case_of(i) for i in test}), "n_test_slices": len(test),
        "n_train_slices": len(split.train), "n_backgrounds": len(split.normal_backgrounds),
    }


def _packed(path: Path | None) -> bool:
    return path is not None and Path(path).suffix == ".npz"


def _read_packed(path: Path, res: int) -> PairArrays:
    from lesionforge.data.packed import load_packed

    arrays = load_packed(path)
    if arrays.images.shape[1:3] != (res, res):
        raise DataError(path, f"packed at {arrays.images.shape[2]} px, the profile needs {res} px")
    return arrays


def _select(samples: dict[str, Sample], ids: list[str], where: str) -> list[Sample]:
    missing = [i for i in ids if i not in samples]
    if missing:
        raise DataError(where, f"{len(missing)} split ids are not in the dataset, e.g. {missing[:3]}")
    return [samples[i] for i in ids]


class LesionforgeStages:
    """:class:`~lesionforge.experiment.stages.Stages` backed by the real lesionforge stages."""

    def load_data(self, cfg: ExperimentConfig) -> ExperimentData:
        """Read dataset + split (or write the demo data), preprocess to the profile resolution."""
        from lesionforge.data.readers import read_dataset
        from lesionforge.segment.data import read_id_list

        ds, res = cfg.dataset, cfg.resolution
        packed = None
        if ds.demo is not None:
            from lesionforge.data.demo import write_demo_dataset

            root = cfg.output / "data"
            if not (root / "manifest.jsonl").is_file():
                write_demo_dataset(root, ds.demo.n, ds.demo.size, ds.demo.normal_fraction, ds.demo.seed)
            samples = read_dataset(root / "manifest.jsonl")
            split, where = demo_split(samples, cfg.n_labelled), str(root)
        elif ds.volumes is not None:
            samples = read_dataset(ds.root, **ds.volumes.read_options())
            split = volume_split(load_benchmark_split(ds.split), samples, ds.volumes.negative_share)
            where = ds.split
        elif _packed(ds.root):  # a dataset packed at the profile resolution (benchmarks/device/bundle.py)
            packed, split, where = _read_packed(ds.root, res), load_benchmark_split(ds.split), ds.split
        else:
            samples = read_dataset(ds.root)
            split, where = load_benchmark_split(ds.split), ds.split
        by_id = {s.id: s for s in samples} if packed is None else {}

        def load(ids: list[str]) -> PairArrays:
            if packed is not None:
                missing = [i for i in ids if i not in set(packed.ids)]
                if missing:
                    raise DataError(ds.root, f"{len(missing)} split ids are not packed, e.g. {missing[:3]}")
                return packed.select_ids(ids)
            return load_arrays(_select(by_id, ids, where), res, ds.channels, progress=True)

        backgrounds = None
        if _packed(ds.backgrounds_root):
            backgrounds = _read_packed(ds.backgrounds_root, res)
        elif ds.backgrounds_root is not None:
            backgrounds = load_arrays(read_dataset(ds.backgrounds_root), res, ds.channels, progress=True)
        elif split.normal_backgrounds:
            backgrounds = load(split.normal_backgrounds)
        test = load(split.test)
        test_ids = set(test.ids)
        subsets = {k: [i for i in read_id_list(p) if i in test_ids] for k, p in ds.subsets.items()}
        if ds.volumes is not None:  # where along each test structure an arm gains or loses (slices with foreground)
            fg = [i for i, m in zip(test.ids, test.masks, strict=True) if m.any()]
            subsets = {**position_subsets(fg), **subsets}
        return ExperimentData(
            split=split, pool=load(split.train), val=load(split.val), test=test, backgrounds=backgrounds,
            transfer={t.name: self._transfer(t, res, ds.channels) for t in cfg.transfer}, subsets=subsets,
            sources={"root": str(ds.root or where), "split": str(ds.split or "demo"),
                     "backgrounds": None if backgrounds is None else len(backgrounds),
                     "subsets": {k: len(v) for k, v in subsets.items()},
                     **({"volumes": _volume_sources(ds.root, samples, split)} if ds.volumes is not None else {})},
        )

    @staticmethod
    def _transfer(t, res: int, channels: int) -> PairArrays:
        from lesionforge.segment.data import load_pairs, read_id_list

        ids = read_id_list(t.split, t.split_key) if t.split is not None else None
        return load_pairs(t.root, res, channels, ids)

    def prepare_synthetic(
        self, cfg: ExperimentConfig, name: str, spec: GeneratorSpec, n: int, data: ExperimentData, work_dir: Path
    ) -> SyntheticSet:
        """Train (cached) the generator on the N labelled pairs, synthesize ``n_per_real`` per pair, filter."""
        from lesionforge.generate.models import read_meta
        from lesionforge.generate.synthesize import synthesize

        t0 = time.perf_counter()
        synth_dir = work_dir / "synthetic"
        if spec.method == PASTE_METHOD:
            info = self._pasted(spec, n, data, synth_dir)
        else:
            gen_dir = self.generator_for(cfg, spec, n, data, synth_dir)
            t1, before = time.perf_counter(), _drawn_before(synth_dir)
            samples = synthesize(gen_dir, synth_dir, **self.synthesis_args(cfg, spec, n, data), resume=True)
            t2 = time.perf_counter()
            info = {
                "generator_dir": str(gen_dir), "generator_config": resolved_generator_config(cfg, spec).model_dump(
                    mode="json"),
                "n_generated": len(samples), "unlabelled_used": spec.use_unlabelled and data.unlabelled(n) is not None,
                "timings": {"train_generator_s": round(t1 - t0, 3),
                            # the trainer's own total over every resumed session (the wall time above is this call's)
                            "generator_train_s": read_meta(gen_dir).get("train_seconds"),
                            "synthesize_s": round(t2 - t1, 3),
                            "synthesis_images_per_s": _rate(len(samples) - before, t2 - t1)},
            }
        manifest = synth_dir / "manifest.jsonl"
        filtered = None
        if spec.filter is not None:
            # one file per filter: a set filtered two ways (two configs sharing its cache) keeps both verdicts
            filtered = work_dir / f"filtered-{cache_key(settings_dump(spec.filter))}.jsonl"
            info["filter"] = self._filter(cfg, spec, n, data, manifest, filtered)
            info["n_kept"] = info["filter"].get("n_kept")
        return SyntheticSet(manifest, filtered, info)

    @staticmethod
    def _pasted(spec: GeneratorSpec, n: int, data: ExperimentData, synth_dir: Path) -> dict[str, Any]:
        """A ``copy-paste-backgrounds`` set: ``n_per_real`` real lesions per labelled pair pasted onto the
        backgrounds (no generator); its info has the same fields as a generator's set where they apply."""
        from lesionforge.segment.pasted_set import write_pasted_set

        if data.backgrounds is None:
            raise ConfigError(f"method {PASTE_METHOD!r} needs lesion-free backgrounds in the dataset")
        labelled, cp = data.labelled(n), paste_config(spec)
        t0, before = time.perf_counter(), _drawn_before(synth_dir)
        samples = write_pasted_set(synth_dir, spec.n_per_real * len(labelled), labelled, data.backgrounds, cp,
                                   seed=spec.seed, resume=True)
        dt = time.perf_counter() - t0
        return {"generator_dir": None, "copy_paste": cp.model_dump(mode="json", exclude={"enabled", "prob"}),
                "n_generated": len(samples),
                "unlabelled_used": False,
                "timings": {"train_generator_s": 0.0, "generator_train_s": 0.0, "synthesize_s": round(dt, 3),
                            "synthesis_images_per_s": _rate(len(samples) - before, dt)}}

    # The three units of a synthetic set, also run on their own (as separate tasks) by the Ray executor: each
    # caches its output under <output>/cache, so prepare_synthetic then finds them made.

    def generator_for(self, cfg: ExperimentConfig, spec: GeneratorSpec, n: int, data: ExperimentData,
                      synth_dir: Path) -> Path:
        """The trained generator folder (cached by its settings and training ids)."""
        # samples already drawn here (a set re-filtered, or a synthesis resumed) continue with the generator that
        # drew them, even when the code's generator key has moved on since: synthesize refuses other weights
        drawn_with = _drawn_with(synth_dir, cfg.output)
        if drawn_with is not None:
            return drawn_with
        if spec.method == "inpaint-normal" and data.backgrounds is None:
            raise ConfigError("a generator of method inpaint-normal needs lesion-free backgrounds in the dataset")
        labelled, gcfg = data.labelled(n), resolved_generator_config(cfg, spec)
        unlabelled = data.unlabelled(n) if spec.use_unlabelled else None
        backgrounds = data.backgrounds if spec.method == "inpaint-normal" else None
        pretrain = None
        if gcfg.pretrain_steps is not None:  # every image without a mask here: train (all of it if allowed)
            pretrain = _images_only(data.pool if spec.use_unlabelled else labelled), data.backgrounds
        return self._generator(cfg, gcfg, labelled, unlabelled, backgrounds, pretrain)

    @staticmethod
    def synthesis_args(cfg: ExperimentConfig, spec: GeneratorSpec, n: int, data: ExperimentData) -> dict[str, Any]:
        """Keyword arguments of :func:`~lesionforge.generate.synthesize.synthesize` for this set (all but the
        generator and output folders): the same for one process and for every shard."""
        from lesionforge.generate.config import SamplingConfig
        from lesionforge.generate.trainbatch import make_mask_source

        labelled, gcfg = data.labelled(n), resolved_generator_config(cfg, spec)
        jitter = spec.jitter or JitterSettings()
        masks_from = make_mask_source(spec.mask_source, labelled, cfg.resolution, even=bool(jitter.even),
                                      ends_weight=jitter.ends_weight, small_boost=spec.small_boost,
                                      **jitter.kwargs()) if gcfg.kind in ("mask2image", "inpaint") else None
        return dict(
            n=spec.n_per_real * len(labelled), masks_from=masks_from, real=labelled,
            backgrounds=data.backgrounds if spec.method == "inpaint-normal" else None,
            repaint_share=spec.repaint_share or 0.0, paste_strength=spec.paste_strength or 0.0,
            seed=spec.seed, batch_size=spec.batch_size,
            # the entry's sampling settings where given, else the generator's own
            sampling=SamplingConfig(sampler=spec.sampler, steps=spec.sampling_steps,
                                    guidance_scale=spec.guidance_scale, eta=spec.eta,
                                    mask_guidance=spec.mask_guidance, guidance_region=spec.guidance_region),
        )

    @staticmethod
    def validator_for(cfg: ExperimentConfig, spec: GeneratorSpec, n: int, data: ExperimentData) -> Path | None:
        """The trained validator of the set's filter (cached), None without a filter."""
        if spec.filter is None:
            return None
        labelled, cache = data.labelled(n), cfg.output / "cache"
        if spec.filter.validator == "pixel":
            return _pixel_validator(cfg, spec, labelled, data, cache)
        return _latent_validator(cfg, spec, n, data, cache)

    @staticmethod
    def _generator(cfg, gcfg, labelled: PairArrays, unlabelled, backgrounds, pretrain=None) -> Path:
        """Train (cached) the generator; with ``pretrain`` = (images, lesion-free images), first its base on
        them, cached by its own settings and image ids alone, so every N and seed reuses it."""
        from lesionforge.generate.models import META_FILE
        from lesionforge.generate.trainer import pretrain_config, train_generator

        base = None
        if pretrain is not None:
            images, free = pretrain
            bcfg = pretrain_config(gcfg)
            bkey = cache_key(bcfg.model_dump(mode="json"), images.ids, None if free is None else free.ids)
            base = cfg.output / "cache" / "generators" / f"{gcfg.kind}-base-{bkey}"
            if not (base / META_FILE).is_file():  # finished bases are reused as they are, never re-finished
                base = Path(train_generator(bcfg, images, base, backgrounds=free, resume=True))
        key = cache_key(gcfg.model_dump(mode="json"), labelled.ids, None if unlabelled is None else unlabelled.ids,
                        None if backgrounds is None else backgrounds.ids)
        out = cfg.output / "cache" / "generators" / f"{gcfg.kind}-{key}"
        return Path(train_generator(gcfg, labelled, out, unlabelled=unlabelled, backgrounds=backgrounds, resume=True,
                                    init_from=base))

    @staticmethod
    def _filter(cfg, spec: GeneratorSpec, n: int, data: ExperimentData, manifest: Path,
                out_path: Path) -> dict[str, Any]:
        from lesionforge.validate.filter import filter_manifest

        # n is the low-data subset's key (images, or cases of a volume set), not the number of labelled pairs
        validator = LesionforgeStages.validator_for(cfg, spec, n, data)
        # out_path is this cache's own intermediate file: a rerun after a crash rewrites it identically
        report = filter_manifest(manifest, validator, out_path, threshold=spec.filter.threshold, val=data.val,
                                 overwrite=True, auto_rule=spec.filter.auto_rule,
                                 keep_best=spec.filter.keep_best, keep_bands=bool(spec.filter.keep_bands),
                                 keep_share=spec.filter.keep_share).to_dict()
        report["n_rejected"] = len(report.pop("rejected_ids"))  # the ids stay listed in the filtered manifest
        return report

    def run_arm(
        self, cfg: ExperimentConfig, arm: ArmSettings, segment_config: dict[str, Any], n: int,
        data: ExperimentData, synthetic: SyntheticSet | None, run_dir: Path,
    ) -> dict[str, Any]:
        """Train one segmenter (resuming from ``run_dir``), pick the best-val checkpoint, score test once."""
        from lesionforge.config import validate_config
        from lesionforge.segment.config import SegmentConfig
        from lesionforge.segment.metrics import evaluate
        from lesionforge.segment.train import train_segmenter

        scfg = validate_config(SegmentConfig, segment_config, "segment")
        t0 = time.perf_counter()
        loop = None
        if arm.kind == "closed-loop":  # rounds of train / diagnose / synthesize, then the final segmenter
            from lesionforge.experiment.loop_arm import train_closed_loop

            run, loop = train_closed_loop(self, cfg, arm, segment_config, n, data, synthetic, run_dir)
        else:
            synth, twins, left_out = None, None, None
            if synthetic is not None:
                synth, twins, rows = _synthetic_arrays(cfg, synthetic, arm.filtered)
                if scfg.mixing.synthetic_pixel_filter is not None:
                    left_out = _left_out(rows, synth, data.val, scfg.mixing.synthetic_pixel_filter, run_dir,
                                         scfg.mixing.synthetic_pixel_filter_class)
            run = train_segmenter(scfg, data.labelled(n), data.val, run_dir / "segmenter", synthetic=synth,
                                  twins=twins, resume=True, progress=True, left_out=left_out,
                                  paste_donors=None if synthetic is None else drawn_pairs(rows))
        t1 = time.perf_counter()
        ev = evaluate(run.best_checkpoint, data.test, subsets=data.subsets or None, miss_fraction=cfg.miss_fraction)
        out = _eval_fields(ev)
        out["transfer"] = {
            name: _summary(evaluate(run.best_checkpoint, arrays, miss_fraction=cfg.miss_fraction).to_dict())
            for name, arrays in data.transfer.items()
        }
        out["best_val_mdice"] = float(run.best_val_mdice)
        if loop is not None:
            out["loop"] = loop
        out["timings"] = {"train_s": round(t1 - t0, 3), "eval_s": round(time.perf_counter() - t1, 3),
                          "train_images_per_s": round(float(run.images_per_s), 3)}
        return out


def _images_only(arrays: PairArrays) -> PairArrays:
    """The images of ``arrays`` without their masks (for pretraining a generator)."""
    return PairArrays(arrays.images, np.zeros_like(arrays.masks), np.zeros(len(arrays), bool), list(arrays.ids),
                      [None] * len(arrays))


def _drawn_with(synth_dir: Path, output: Path) -> Path | None:
    """The generator folder the samples in ``synth_dir`` were drawn with (synthesize's run record), if any;
    it must be one of the sweep's own (under ``output``): a record naming another folder is refused."""
    from lesionforge.generate.synthesize import RUN_FILE

    run = synth_dir / RUN_FILE
    if not run.is_file():
        return None
    gen = json.loads(run.read_text(encoding="utf-8")).get("checkpoint")
    if gen and not is_inside(Path(gen).resolve(), Path(output).resolve()):
        raise CheckpointError(f"{run}: names the generator {gen}, which is not inside the sweep folder {output}; "
                              "the file is damaged or was edited: use a new output folder")
    return Path(gen) if gen and (Path(gen) / "lesionforge.json").is_file() else None


def _latent_validator(cfg: ExperimentConfig, spec: GeneratorSpec, n: int, data: ExperimentData, cache: Path) -> Path:
    """Train (cached) the autoencoder and the latent segmenter of the latent filter of the low-data subset ``n``;
    returns the validator."""
    from lesionforge.generate.autoencoder import LatentCodec, train_autoencoder
    from lesionforge.validate.latent_segmenter import train_latent_segmenter

    ae_cfg, val_cfg = _validator_configs(cfg, spec)
    # the autoencoder learns from every image it may see (labelled, lesion-free, unlabelled if allowed)
    labelled = data.labelled(n)
    images = PairArrays.concat([labelled, data.backgrounds, data.unlabelled(n) if spec.use_unlabelled else None])
    ae_dir = cache / "autoencoders" / cache_key(ae_cfg.model_dump(mode="json"), images.ids)
    ae_path = Path(train_autoencoder(ae_cfg, images, ae_dir, val=data.val, resume=True))
    codec = LatentCodec.from_pretrained(ae_path)
    seg_dir = cache / "validators" / cache_key(val_cfg.model_dump(mode="json"), labelled.ids, str(ae_dir))
    return Path(train_latent_segmenter(val_cfg, labelled, codec, seg_dir, val=data.val))


def _drawn_before(synth_dir: Path) -> int:
    """Samples a resumed synthesis finds already in its manifest (drawn by an earlier call)."""
    from lesionforge.data.manifest import read_manifest

    path = synth_dir / "manifest.jsonl"
    return len(read_manifest(path, resolve=False)) if path.is_file() else 0


def _rate(drawn: int, seconds: float) -> float | None:
    """Images per second of the samples this call drew; None when it drew none (a finished set is not a speed:
    dividing the whole set by a few seconds of checking reported 3606 images/s for a set drawn the day before)."""
    return round(drawn / max(seconds, 1e-9), 3) if drawn > 0 else None


def _pixel_validator(cfg: ExperimentConfig, spec: GeneratorSpec, labelled: PairArrays, data: ExperimentData,
                     cache: Path) -> Path:
    """Train (cached) the pixel segmenter of the pixel filter on the labelled pairs; returns the validator."""
    from lesionforge.config import resolve_preset
    from lesionforge.validate.pixel_segmenter import PixelSegmenterConfig, train_pixel_segmenter

    f = spec.filter
    over = {"resolution": cfg.resolution, "image_channels": cfg.dataset.channels, **f.validator_overrides}
    val_cfg = resolve_preset(f.validator_config, over, PixelSegmenterConfig, "filter.validator_overrides")
    seg_dir = cache / "validators" / f"pixel-{cache_key(val_cfg.model_dump(mode='json'), labelled.ids)}"
    return Path(train_pixel_segmenter(val_cfg, labelled, seg_dir, val=data.val, resume=True))


def _validator_configs(cfg: ExperimentConfig, spec: GeneratorSpec):
    """Autoencoder and latent-segmenter settings: preset (or defaults) + overrides, at the profile's size."""
    from lesionforge.config import resolve_preset
    from lesionforge.generate.autoencoder import AutoencoderConfig
    from lesionforge.validate.latent_segmenter import LatentSegmenterConfig

    f = spec.filter
    size = {"resolution": cfg.resolution, "image_channels": cfg.dataset.channels}
    ae = resolve_preset(f.autoencoder_config, {**size, **f.autoencoder_overrides}, AutoencoderConfig,
                        "filter.autoencoder_overrides")
    val = resolve_preset(f.validator_config, {**size, **f.validator_overrides}, LatentSegmenterConfig,
                         "filter.validator_overrides")
    return ae, val


def _synthetic_arrays(
    cfg: ExperimentConfig, s: SyntheticSet, filtered: bool
) -> tuple[PairArrays, dict[str, list[int]], list[Sample]]:
    """The synthetic pairs an arm trains on (those the filter kept when ``filtered``), real id -> twins, and
    their manifest rows."""
    from lesionforge.segment.data import twins_of

    manifest = s.filtered_manifest if filtered and s.filtered_manifest is not None else s.manifest
    samples = read_set(manifest, origin="synthetic", kept_only=filtered)
    return load_arrays(samples, cfg.resolution, cfg.dataset.channels), twins_of(samples), samples


def drawn_pairs(rows: list[Sample]) -> np.ndarray:
    """Indices of the rows a generator drew: copy-paste's lesion donors among a set's pairs (real lesions pasted
    onto backgrounds, in a union set beside the drawn ones, are the real donors again)."""
    from lesionforge.segment.pasted_set import GENERATOR as PASTED

    return np.array([i for i, r in enumerate(rows) if r.provenance.generator != PASTED], dtype=int)


PIXEL_FILTER_FILE = "pixel-filter.json"


def _left_out(rows: list[Sample], synth: PairArrays, val: PairArrays, margin: float, run_dir: Path,
              only: PixelClass | None = None) -> np.ndarray:
    """The synthetic pixels the arm's loss leaves out (``mixing.synthetic_pixel_filter``), judged by each pair's
    validator against its mean loss on real ``val``; how many is recorded in ``run_dir/pixel-filter.json``."""
    from lesionforge.utils import write_json_atomic
    from lesionforge.validate.pixel_trust import untrusted_in_set

    left_out, summary = untrusted_in_set(rows, synth, val, margin, only)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / PIXEL_FILTER_FILE, summary)
    return left_out


def _summary(summary: dict[str, Any]) -> dict[str, Any]:
    """Flat numeric metrics of an :class:`EvalResult` summary (bands as ``miss_rate_<band>``)."""
    out = {k: v for k, v in summary.items() if isinstance(v, int | float) or v is None}
    out.update({f"miss_rate_{b}": v for b, v in summary.get("miss_rate_by_band", {}).items()})
    return out


def _eval_fields(ev) -> dict[str, Any]:
    """Run-record fields of a test :class:`EvalResult`: per-image scores and lesion counts, aggregates."""
    d = ev.to_dict()
    n = len(ev.ids)
    image = np.asarray(ev.lesions["image"], dtype=int)
    missed = np.asarray(ev.lesions["missed"], dtype=float)
    band = np.asarray(ev.lesions["band"], dtype=object)

    def count(sel: np.ndarray, weights: np.ndarray | None = None) -> list[int]:
        w = None if weights is None else weights[sel]
        return np.bincount(image[sel], weights=w, minlength=n).astype(int).tolist()

    everything = np.ones(len(image), bool)
    return {
        "ids": list(ev.ids), "dice": [float(x) for x in ev.dice], "iou": [float(x) for x in ev.iou],
        "missed": count(everything, missed), "lesions": count(everything),
        "band_missed": {b: count(band == b, missed) for b in BANDS},
        "band_lesions": {b: count(band == b) for b in BANDS},
        "mdice": float(ev.mdice), "miou": float(ev.miou), "miss_rate": d["miss_rate"],
        "miss_rate_by_band": d["miss_rate_by_band"],
        "subsets": {k: _summary(v) for k, v in d["subsets"].items()},
        **({"cases": list(ev.cases), "dice3d": [float(x) for x in ev.dice3d], "mdice3d": float(ev.mdice3d)}
           if ev.cases else {}),
    }
